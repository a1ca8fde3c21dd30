"""Judge what is missing, in batches: the one mechanism behind `bon run`, `bon judge`, `bon compare`
and `bon eval select-pool`.

A batch that lacks any judgement is rescored whole, so padding and batch layout (hence every
float) are those of an uninterrupted run; only the judgements that were missing are kept.
Early-rejected candidates are never shown to the judge: they get a failed judgement.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from bon.core.records import Candidate, Judgement, Key, Prompt
from bon.pipeline.early_rejection import in_order, rejected_judgements
from bon.pipeline.executors import Done, Executor, Pending


class InFlight:
    """Submitted batches (numbered), finished strictly in submission order, with a bounded number outstanding."""

    def __init__(self, finish: Callable[[int, Any], None]):
        self._finish = finish
        self._queue: deque[tuple[int, Pending | None]] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def submit(self, batch: int, pending: Pending | None) -> None:
        """Queue ``batch``; ``pending`` None means nothing to wait for (its finish still runs in order)."""
        self._queue.append((batch, pending))

    def collect(self, keep: int = 0) -> None:
        """Finish the oldest batches until at most ``keep`` are outstanding."""
        while len(self._queue) > keep:
            batch, pending = self._queue.popleft()
            self._finish(batch, None if pending is None else pending.result())


def needs_judging(candidates: Sequence[Candidate], judged: dict[Key, Judgement]) -> bool:
    """Whether any of ``candidates`` lacks a judgement."""
    return any(c.key not in judged for c in candidates)


class ScoreMissing:
    """Submits batches to an executor's judge and records the judgements that were missing.

    ``judged`` (keyed by candidate) is updated in place; ``on_batch(k, fresh)`` runs once per
    submitted batch ``k``, in submission order, also for a batch that needed nothing. Judgements
    carry ``label`` (a judge run under another name is relabelled; the judge is never mutated).
    """

    def __init__(
        self,
        executor: Executor,
        judged: dict[Key, Judgement],
        label: str,
        on_batch: Callable[[int, list[Judgement]], None],
    ):
        self.executor, self.judged, self.label = executor, judged, label
        self._on_batch = on_batch
        self._pending: dict[int, tuple[Sequence[Candidate], dict[Key, Judgement]]] = {}
        self._flight = InFlight(self._finish)

    def __len__(self) -> int:
        return len(self._flight)

    def submit(self, key: int, prompts: Sequence[Prompt], candidates: Sequence[Candidate]) -> None:
        if not needs_judging(candidates, self.judged):
            self._flight.submit(key, None)
            return
        scoreable, failed = rejected_judgements(candidates, self.label)
        self._pending[key] = (candidates, failed)
        self._flight.submit(key, self.executor.score(prompts, scoreable) if scoreable else Done([]))

    def collect(self, keep: int = 0) -> None:
        self._flight.collect(keep)

    def _finish(self, key: int, verdicts: list[Judgement] | None) -> None:
        fresh: list[Judgement] = []
        if verdicts is not None:
            candidates, failed = self._pending.pop(key)
            for j in in_order(candidates, verdicts, failed):
                if j.key not in self.judged:
                    j = j if j.judge == self.label else dataclasses.replace(j, judge=self.label)
                    self.judged[j.key] = j
                    fresh.append(j)
        self._on_batch(key, fresh)


def score_missing(
    executor: Executor,
    batches: Sequence[Sequence[Prompt]],
    candidates: Callable[[Prompt], Sequence[Candidate]],
    judged: dict[Key, Judgement],
    label: str,
    on_batch: Callable[[Sequence[Prompt], list[Judgement]], None],
) -> int:
    """Judge every batch that lacks a judgement, keeping the executor's judge window in flight.

    ``candidates(prompt)`` gives a prompt's candidates; ``on_batch(batch, fresh)`` runs in batch
    order (write to disk, advance progress). Returns the number of judgements made.
    """
    made = 0

    def finish(k: int, fresh: list[Judgement]) -> None:
        nonlocal made
        made += len(fresh)
        on_batch(batches[k], fresh)

    scorer = ScoreMissing(executor, judged, label, finish)
    window = max(1, executor.judge_window)
    for k, batch in enumerate(batches):
        scorer.submit(k, batch, [c for p in batch for c in candidates(p)])
        scorer.collect(keep=window)
    scorer.collect()
    return made
