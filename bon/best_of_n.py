"""Best-of-N in memory: a list of prompts in, the kept candidate of each out, no run directory.

For a training loop: the policy and the judge load on the first call and stay loaded until `BestOfN.close` (or the
end of a ``with`` block). Sampling, judging and selection are the run pipeline's own (`bon.pipeline`): the same
engine (local or Ray), the same per-prompt seeds, the same selection rules, so ``BestOfN(cfg)(prompts)`` keeps what
``bon.run(cfg, prompts)`` keeps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bon.api import load_config, prompt_rows
from bon.core.config import RunConfig
from bon.core.errors import ConfigError
from bon.core.judging import Judge, build_judge, check_conversations
from bon.core.prompts import prompt_from_row
from bon.core.records import Candidate, Judgement, Key, Prompt, Selection
from bon.pipeline.preflight import lengths
from bon.pipeline.runner import batches
from bon.pipeline.scoring import score_missing
from bon.pipeline.selection import char_lengths, select_all

if TYPE_CHECKING:
    from bon.pipeline.executors import Executor
    from bon.pipeline.policy import Policy


@dataclass(frozen=True)
class Outcome:
    """One prompt's best-of-N: its candidates, their judgements (index-aligned) and the selection."""

    prompt: Prompt
    candidates: tuple[Candidate, ...]
    judgements: tuple[Judgement, ...]
    selection: Selection

    @property
    def chosen(self) -> Candidate | None:
        """The kept candidate; None when the prompt was declined (or skipped: it did not fit the context)."""
        i = self.selection.chosen_index
        return None if i is None or self.selection.declined else self.candidates[i]

    def ranked(self) -> list[tuple[Candidate, Judgement]]:
        """Candidates by score, best first (equal scores by index); failed judgements last."""
        pairs = list(zip(self.candidates, self.judgements))
        return sorted(pairs, key=lambda cj: (cj[1].score is None, -(cj[1].score or 0.0), cj[0].index))

    def pair(self) -> tuple[Candidate, Candidate] | None:
        """(chosen, rejected) for preference training: the kept candidate and the lowest-scored one; None when the
        prompt was declined or every judged candidate scores the same."""
        chosen = self.chosen
        scored = [(c, j) for c, j in self.ranked() if j.score is not None]
        if chosen is None or len(scored) < 2 or scored[-1][1].score == self.selection.score:
            return None
        return chosen, scored[-1][0]


class BestOfN:
    """Best-of-N for prompts given in Python, with models loaded once and kept for every call.

    ``BestOfN(config)`` takes a `RunConfig` or what `bon.load_config` takes (a YAML path, a mapping);
    ``policy`` and ``judge`` are objects of your own in place of the config's. Call it with prompts (instructions,
    prompt-file rows, or a `datasets.Dataset`) to get one `Outcome` per prompt, in order. ``seed`` (default: the
    config's) seeds every prompt's samples as `bon run` does: pass a new one per training step for fresh candidates.
    ``model``/``tokenizer``: a transformers model in memory (the one being trained) as the policy, sampled with the
    config's sampling settings; each call samples its current weights, in eval mode, and restores its mode after.
    `close` (or leaving a ``with`` block) releases the models.
    """

    def __init__(
        self,
        config: RunConfig | str | Path | Mapping[str, Any] | None = None,
        *,
        policy: Policy | None = None,
        judge: Judge | None = None,
        model: Any = None,
        tokenizer: Any = None,
    ):
        self.config = config if isinstance(config, RunConfig) else load_config(config)
        if (model is None) != (tokenizer is None):
            raise ConfigError("BestOfN: a model in memory needs its tokenizer too (model=..., tokenizer=...)")
        if model is not None and policy is not None:
            raise ConfigError("BestOfN: give a policy or a model, not both")
        self._model = model
        if self.config.selection.tie_break.startswith("judge:"):
            raise ConfigError(
                f"selection.tie_break {self.config.selection.tie_break!r}: reads another judge's judgements from a run "
                "directory, which BestOfN does not keep; use lowest_index or details:KEY"
            )
        self.judge = judge or build_judge(self.config.judge.name, self.config.judge.options)
        self._policy = policy
        if model is not None:
            training = model.training
            self._policy = _policy_of(model, tokenizer, self.config)  # the engine puts it in eval mode
            model.train(training)
        self._executor: Executor | None = None
        self._closed = False

    def __enter__(self) -> BestOfN:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the policy (and the Ray actors, on the Ray engine); a closed BestOfN refuses further calls."""
        if self._executor is not None:
            self._executor.__exit__(None, None, None)
            self._executor = None
        self._closed = True

    def __call__(self, prompts: Iterable[Any], *, seed: int | None = None) -> list[Outcome]:
        """Sample ``config.n`` candidates for each prompt, judge them, and keep the best (or decline)."""
        if self._closed:
            raise RuntimeError("this BestOfN is closed; make a new one")
        if self._model is None:
            return self._best(prompts, seed)
        training = self._model.training
        try:
            self._model.eval()
            return self._best(prompts, seed)
        finally:
            self._model.train(training)

    def _best(self, prompts: Iterable[Any], seed: int | None) -> list[Outcome]:
        cfg = self.config
        records = _prompts(prompts, cfg)
        check_conversations(self.judge, records, cfg.policy.prompt_format)
        plan = lengths(cfg, records, self.judge, check_policy=self._policy is None)
        sampled = [p for p in records if p.id not in plan.skipped]
        parts = batches(sampled, cfg.batch_size)
        ex = self._open()
        run_seed = cfg.seed if seed is None else seed
        pending = [ex.sample(batch, cfg.n, run_seed) for batch in parts]  # all at once: a streaming policy fills rows
        candidates: dict[str, tuple[Candidate, ...]] = {}
        for job in pending:
            for c in sorted(job.result(), key=lambda c: c.index):
                candidates[c.prompt_id] = (*candidates.get(c.prompt_id, ()), c)
        judged: dict[Key, Judgement] = {}
        score_missing(ex, parts, lambda p: candidates[p.id], judged, self.judge.name, lambda *_: None)
        judgements = {p.id: tuple(judged[c.key] for c in candidates[p.id]) for p in sampled}
        picks = iter(
            select_all(
                [(p.id, judgements[p.id], char_lengths({c.index: c for c in candidates[p.id]})) for p in sampled],
                cfg.selection,
            )
        )
        return [
            Outcome(p, (), (), Selection(p.id, None, True, None, self.judge.name, plan.skipped[p.id], skipped=True))
            if p.id in plan.skipped
            else Outcome(p, candidates[p.id], judgements[p.id], next(picks))
            for p in records
        ]

    def _open(self) -> Executor:
        from bon.pipeline.executors import make_executor

        if self._executor is None:
            self._executor = make_executor(self.config, self.judge, self._policy, note=lambda _: None).__enter__()
        return self._executor


def _policy_of(model: Any, tokenizer: Any, config: RunConfig) -> Policy:
    """A policy sampling ``model`` (a transformers causal LM) by bon's transformers engine."""
    from bon.engines.hf import HFModel
    from bon.pipeline.policy import EnginePolicy

    name = str(model.name_or_path or "in-memory model")  # a transformers PreTrainedModel's own field
    return EnginePolicy(config.policy, engine=HFModel.from_loaded(model, tokenizer, name))


def _prompts(prompts: Iterable[Any], cfg: RunConfig) -> list[Prompt]:
    """`Prompt` records from a call's prompts, named by their position; one turn each (a conversation's later turns
    are built from kept answers, which needs `bon.run`)."""
    records: list[Prompt] = []
    seen: dict[str, int] = {}
    for i, row in enumerate(prompt_rows(prompts)):
        try:
            p = prompt_from_row(row, cfg.prompts, "bon")
        except ValueError as e:
            raise ConfigError(f"prompts[{i}]: {e}") from None
        if p.later_turns:
            raise ConfigError(
                f"prompts[{i}]: a conversation of {len(p.turns)} user turns; BestOfN answers one turn (give the "
                "earlier turns as 'messages'), bon.run answers them all"
            )
        if p.id in seen:
            raise ConfigError(
                f"prompts[{i}]: the same prompt as prompts[{seen[p.id]}] (id {p.id!r}); its candidates would be the "
                "same: give it once, or give each an 'id'"
            )
        seen[p.id] = i
        records.append(p)
    return records
