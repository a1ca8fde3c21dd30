"""Early rejection ("Fast Best-of-N Decoding via Speculative Rejection", Sun et al. 2024).

All N candidates of a prompt are generated for ``chunk_tokens``; the judge scores the partial
answers; the best ``keep_fraction`` of the unfinished ones go on for another chunk, the rest stop.
Rounds repeat until every survivor has finished. A stopped candidate is kept in the run as a
record (``finish_reason: "rejected"``, with its partial score in the flag) and is never selected:
its judgement is a failed one (`rejected_judgements`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass, replace

from bon.core.config import EarlyRejectionConfig
from bon.core.judging import Judge
from bon.core.records import Candidate, Judgement, Key, Prompt, by_key
from bon.engines.base import EngineError, LanguageModel, PausableLoop, Sample, SamplingSettings, derive_seed
from bon.pipeline.policy import EnginePolicy, prompt_seed

REJECTED = "rejected"


class EarlyRejectionPolicy:
    """An `EnginePolicy` that consults a judge between chunks and stops the worst partial candidates.

    On the transformers engine the prompts run in its continuous decode loop: a prompt's rows pause
    after each chunk with their KV cache kept, survivors go on without a new prefill (each with the
    uniforms of its own seed, so a survivor's tokens are those full best-of-N gives it) and the rows of
    rejected candidates go to the next prompts. Engines without that loop (vLLM, a server) continue
    each survivor as a new request of its prompt and partial answer (`Resubmit`).
    """

    def __init__(self, policy: EnginePolicy, judge: Judge, cfg: EarlyRejectionConfig):
        self.policy, self.judge, self.cfg = policy, judge, cfg
        self.name = policy.name
        self.generated_tokens = 0  # every token sampled, the stopped candidates' included
        self._loop: PausableLoop | None = None
        self._open: dict[str, tuple[Prompt, int]] = {}  # prompt id -> (prompt, round), while it is in the loop
        self._flags: dict[Key, str] = {}

    def streams(self) -> bool:
        return True  # its own loop, whichever engine runs under it

    def rows(self) -> int:
        return self.policy.rows()

    def _session(self) -> PausableLoop:
        """The policy's own loop where it can pause (the transformers engine), else `Resubmit` over its engine."""
        if self._loop is None:
            loop = self.policy.loop
            self._loop = loop if isinstance(loop, PausableLoop) else Resubmit(self.policy.engine, self.policy.settings)
        return self._loop

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
        self.policy.close()

    def generate(self, prompts: Sequence[Prompt], n: int, seed: int) -> list[Candidate]:
        return self.finish(self.start(prompts, n, seed))

    def start(self, prompts: Sequence[Prompt], n: int, seed: int) -> tuple[Sequence[Prompt], list, int]:
        fitted = self.policy.fit(prompts)
        loop = self._session()
        for p, (ids, _) in zip(prompts, fitted):
            loop.add(p.id, ids, n, prompt_seed(seed, p.id), pause_every=self.cfg.chunk_tokens)
            self._open[p.id] = (p, 0)
        return prompts, fitted, seed

    def finish(self, started: tuple[Sequence[Prompt], list, int]) -> list[Candidate]:
        prompts, fitted, seed = started
        loop, keys = self._session(), [p.id for p in prompts]
        while True:
            loop.advance(keys)
            paused = loop.paused()
            if not paused:
                break
            self._cut([str(k) for k in paused])  # every paused prompt, this batch's or a later one's
        samples = [loop.result(p.id) for p in prompts]
        for p in prompts:
            del self._open[p.id]
        self.generated_tokens += sum(s.completion_tokens for group in samples for s in group)
        return [
            replace(c, flag="; ".join(f for f in (c.flag, why) if f)) if (why := self._flags.pop(c.key, None)) else c
            for c in self.policy.candidates(prompts, fitted, samples)
        ]

    def _cut(self, keys: list[str]) -> None:
        """Judge the paused prompts' partial answers; keep the best ``keep_fraction`` of each, reject the others."""
        loop, tok = self._session(), self.policy.engine.tokenizer
        partial = {k: loop.partial(k) for k in keys}
        shown = [
            Candidate(k, i, tok.decode(t, skip_special_tokens=True), None, 0, len(t), "length", self.name)
            for k in keys
            for i, t in partial[k].items()
        ]
        verdicts = self.judge.score([self._open[k][0] for k in keys], shown)
        scores = {c.key: j.score for c, j in zip(shown, verdicts)}
        for k in keys:
            prompt, round_ = self._open[k]
            self._open[k] = (prompt, round_ + 1)

            def rank(i: int, k: str = k) -> tuple[float, int]:
                score = scores[(k, i)]
                return (-(score if score is not None else -math.inf), i)

            mine = sorted(partial[k], key=rank)
            keep = max(1, math.ceil(self.cfg.keep_fraction * len(mine)))
            for i in mine[keep:]:
                self._flags[(k, i)] = (
                    f"rejected early after {len(partial[k][i])} tokens (round {round_}, partial score "
                    f"{_three(scores[(k, i)])}, kept {keep} of {len(mine)})"
                )
            loop.resume(k, mine[:keep])


@dataclass
class _Open:
    """One prompt in `Resubmit`: its candidates' tokens so far and how each ended (None: still going)."""

    ids: list[int]
    seed: int
    every: int
    tokens: list[list[int]]
    finish: list[str | None]
    flags: list[str | None]  # why a candidate ended other than by itself
    round: int = 0


class Resubmit:
    """The pause/resume loop of `bon.engines.stream.DecodeSession` over any engine's `sample` (a `PausableLoop`).

    Each round samples one chunk for every live candidate of every prompt not paused, in one call:
    the first from the prompt (N samples, the first tokens of full best-of-N), later ones from the
    prompt and the partial answer, with a stream of their own (prompt seed, index, round). A chunk that
    brings no token and no end (a server at its context) ends its candidate, flagged: never resubmitted.
    """

    def __init__(self, engine: LanguageModel, settings: SamplingSettings):
        self.engine, self.settings = engine, settings
        self.open: dict[Hashable, _Open] = {}
        self._paused: dict[Hashable, _Open] = {}
        self.done: dict[Hashable, list[Sample]] = {}

    @property
    def max_rows(self) -> int:
        return max(1, sum(len(p.tokens) for p in self.open.values()))

    def add(self, key: Hashable, ids: list[int], n: int, seed: int, pause_every: int | None = None) -> None:
        if key in self.open or key in self.done:
            raise EngineError(f"prompt {key!r} is already in this loop")
        every = pause_every or self.settings.max_tokens
        self.open[key] = _Open(list(ids), seed, every, [[] for _ in range(n)], [None] * n, [None] * n)

    def paused(self) -> list[Hashable]:
        return list(self._paused)

    def partial(self, key: Hashable) -> dict[int, list[int]]:
        p = self._paused[key]
        return {i: list(p.tokens[i]) for i in self.partial_indices(p)}

    def resume(self, key: Hashable, keep: Sequence[int]) -> None:
        p = self._paused.pop(key)
        for i in self.partial_indices(p):
            if i not in keep:
                p.finish[i] = "rejected"
        p.round += 1
        self._settle(key, p)

    @staticmethod
    def partial_indices(p: _Open) -> list[int]:
        return [i for i, f in enumerate(p.finish) if f is None]

    def advance(self, keys: Collection[Hashable]) -> None:
        """One chunk for every prompt that is neither paused nor done, unless one is paused or ``keys`` are done."""
        if self._paused or all(k in self.done for k in keys):
            return
        if not self.open:
            raise KeyError(f"prompts {list(keys)} are not all in this loop")
        s = self.settings
        chunk = SamplingSettings(s.temperature, s.top_p, min(p.every for p in self.open.values()))
        fresh = [k for k, p in self.open.items() if p.round == 0]
        later = [(k, i) for k, p in self.open.items() if p.round > 0 for i in self.partial_indices(p)]
        made: list[tuple[Hashable, int, Sample]] = []
        if fresh:
            n = len(self.open[fresh[0]].tokens)
            groups = self.engine.sample([self.open[k].ids for k in fresh], n, [self.open[k].seed for k in fresh], chunk)
            made += [(k, i, sample) for k, group in zip(fresh, groups) for i, sample in enumerate(group)]
        if later:
            ids = [self.open[k].ids + self.open[k].tokens[i] for k, i in later]
            seeds = [derive_seed(self.open[k].seed, i, self.open[k].round) for k, i in later]
            made += [(k, i, group[0]) for (k, i), group in zip(later, self.engine.sample(ids, 1, seeds, chunk))]
        for k, i, sample in made:
            p = self.open[k]
            room = s.max_tokens - len(p.tokens[i])
            p.tokens[i] += list(sample.token_ids[:room])
            if sample.finish_reason == "stop" and len(sample.token_ids) <= room:
                p.finish[i] = "stop"
            elif len(p.tokens[i]) >= s.max_tokens:
                p.finish[i] = "length"
            elif not sample.token_ids:  # no progress: resubmitting the same tokens would loop forever
                p.finish[i] = "length"
                p.flags[i] = (
                    f"ended after {len(p.tokens[i])} tokens: the engine returned no token for a chunk "
                    f"(finish reason {sample.finish_reason!r}; a full context?)"
                )
        for k in dict.fromkeys(fresh + [k for k, _ in later]):
            p = self.open[k]
            if self.partial_indices(p):
                self._paused[k] = p
            else:
                self._settle(k, p)

    def _settle(self, key: Hashable, p: _Open) -> None:
        """A prompt with no candidate left going is done: its samples, rejected ones included."""
        if self.partial_indices(p):
            return
        del self.open[key]
        tok = self.engine.tokenizer
        self.done[key] = [
            Sample(
                text=tok.decode(t, skip_special_tokens=True),
                prompt_tokens=len(p.ids),
                completion_tokens=len(t) + (f == "stop"),
                finish_reason=f or "length",
                seed=derive_seed(p.seed, i),
                token_ids=tuple(t),
                flag=p.flags[i],
            )
            for i, (t, f) in enumerate(zip(p.tokens, p.finish))
        ]

    def result(self, key: Hashable) -> list[Sample]:
        if key not in self.done:
            self.advance([key])
            while key not in self.done:
                if self._paused:
                    raise KeyError(f"prompt {key!r} cannot finish while prompts are paused (resume them)")
                self.advance([key])
        return self.done.pop(key)

    def close(self) -> None:
        self.open.clear()
        self._paused.clear()
        self.done.clear()


def rejected_judgements(
    candidates: Sequence[Candidate], judge_name: str
) -> tuple[list[Candidate], dict[Key, Judgement]]:
    """(the candidates a judge should score, failed judgements of the early-rejected ones keyed by candidate)."""
    scoreable = [c for c in candidates if c.finish_reason != REJECTED]
    failed = {
        c.key: Judgement(c.prompt_id, c.index, judge_name, None, flag=c.flag or "rejected early")
        for c in candidates
        if c.finish_reason == REJECTED
    }
    return scoreable, failed


def in_order(
    candidates: Sequence[Candidate], verdicts: Sequence[Judgement], failed: dict[Key, Judgement]
) -> list[Judgement]:
    """The judge's verdicts and the rejected candidates' failed judgements, in the candidates' order."""
    table = by_key(verdicts) | failed
    return [table[c.key] for c in candidates]


def _three(score: float | None) -> str:
    """A partial score as a flag shows it: 3 decimals (or "none" for a failed partial judgement)."""
    return "none" if score is None else f"{score:.3f}"
