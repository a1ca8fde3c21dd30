"""Early rejection ("Fast Best-of-N Decoding via Speculative Rejection", Sun et al. 2024).

All N candidates of a prompt are generated for ``chunk_tokens``; the judge scores the partial
answers; the best ``keep_fraction`` of the unfinished ones go on for another chunk, the rest stop.
Rounds repeat until every survivor has finished. A stopped candidate is kept in the run as a
record (``finish_reason: "rejected"``, with its partial score in the flag) and is never selected:
its judgement is a failed one (`rejected_judgements`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from bon.core.config import EarlyRejectionConfig
from bon.core.records import Candidate, Judgement, Key, Prompt, by_key
from bon.engines.contract import (
    ChatIds,
    EngineError,
    LanguageModel,
    PausableLoop,
    Sample,
    SamplingSettings,
    derive_seed,
)
from bon.pipeline.policy import EnginePolicy, prompt_seed

REJECTED = "rejected"


class PartialScorer(Protocol):
    """What early rejection asks of the run's judge: scores of partial answers (a `bon.core.judging.Judge` is one;
    under Ray, the judge actors are, `bon.pipeline.ray_executor.ActorScorer`)."""

    def score(self, prompts: Sequence[Prompt], candidates: Sequence[Candidate]) -> list[Judgement]: ...


class EarlyRejectionPolicy:
    """An `EnginePolicy` that consults a judge between chunks and stops the worst partial candidates.

    On the transformers engine the prompts run in its continuous decode loop: a prompt's rows pause
    after each chunk with their KV cache kept, survivors go on without a new prefill (each with the
    uniforms of its own seed, so a survivor's tokens are those full best-of-N gives it) and the rows of
    rejected candidates go to the next prompts. Engines without that loop (vLLM, a server) continue
    each survivor as a new request of its prompt and partial answer (`Resubmit`).
    """

    def __init__(self, policy: EnginePolicy, judge: PartialScorer, cfg: EarlyRejectionConfig):
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
        """Judge the paused prompts' partial answers (every paused prompt in one call); keep the best
        ``keep_fraction`` of each, reject the others. A prompt with nothing to cut is not judged, and a prompt
        whose survivors could not be cut again (one left) runs to its end without pausing."""
        loop, tok = self._session(), self.policy.engine.tokenizer
        partial = {k: loop.partial(k) for k in keys}
        kept = {k: kept_after_cut(len(partial[k]), self.cfg.keep_fraction) for k in keys}
        cutting = [k for k in keys if kept[k] < len(partial[k])]
        shown = [
            Candidate(k, i, tok.decode(t, skip_special_tokens=True), None, 0, len(t), "length", self.name)
            for k in cutting
            for i, t in partial[k].items()
        ]
        verdicts = self.judge.score([self._open[k][0] for k in cutting], shown) if shown else []
        scores = {c.key: j.score for c, j in zip(shown, verdicts)}
        for k in keys:
            prompt, round_ = self._open[k]
            self._open[k] = (prompt, round_ + 1)

            def rank(i: int, k: str = k) -> tuple[float, int]:
                score = scores.get((k, i))
                return (-(score if score is not None else -math.inf), i)

            mine, keep = sorted(partial[k], key=rank), kept[k]
            for i in mine[keep:]:
                self._flags[(k, i)] = (
                    f"rejected early after {len(partial[k][i])} tokens (round {round_}, partial score "
                    f"{_three(scores[(k, i)])}, kept {keep} of {len(mine)})"
                )
            loop.resume(k, mine[:keep], pause=kept_after_cut(keep, self.cfg.keep_fraction) < keep)


def kept_after_cut(live: int, keep_fraction: float) -> int:
    """Candidates a round keeps of a prompt's ``live`` unfinished ones: the best ``keep_fraction``, at least one."""
    return max(1, math.ceil(keep_fraction * live))


@dataclass(frozen=True)
class Speeds:
    """What work costs on a device, in units of the marginal cost of one decoded row-token of the policy.

    A decode step costs ``step`` however few rows it holds (the weights are read and every layer launched
    once), so cutting rows saves little while every prompt fits in one batch: it pays once the rows are full
    and a cut row takes the next prompt's candidate. Judging reads a prompt at ``position`` per token.
    """

    step: float  # fixed cost of one decode step
    position: float  # one token of a judge's forward pass (a model the policy's size)


# SmolLM2-135M on 2 CPU cores: a decode step of R rows took ~60 + 2·R ms, a judge prompt 1.55 ms per token.
CPU_SPEEDS = Speeds(step=30.0, position=0.75)
# A GPU decodes memory-bound (a step reads every weight) and prefills at its matmul rate: not measured here.
GPU_SPEEDS = Speeds(step=200.0, position=0.05)


@dataclass(frozen=True)
class Plan:
    """Early rejection's rounds for one prompt, as if no candidate ended before ``max_tokens`` (the bound both
    runs are sized by)."""

    n: int
    max_tokens: int
    rounds: tuple[tuple[int, int], ...]  # (candidates judged, their tokens so far) of each round that cuts
    survivors: int  # candidates that reach the end and are judged in full

    @property
    def tokens(self) -> int:
        """Tokens generated per prompt with early rejection (the rejected candidates' included)."""
        done = total = 0
        for judged, at in self.rounds:
            total, done = total + judged * (at - done), at
        return total + self.survivors * (self.max_tokens - done)

    @property
    def partial_judgements(self) -> int:
        return sum(judged for judged, _ in self.rounds)


def plan_rounds(n: int, max_tokens: int, cfg: EarlyRejectionConfig) -> Plan:
    """The rounds `EarlyRejectionPolicy` makes for one prompt when no candidate ends before ``max_tokens``."""
    rounds: list[tuple[int, int]] = []
    live, at = n, 0
    while at + cfg.chunk_tokens < max_tokens:
        at += cfg.chunk_tokens
        keep = kept_after_cut(live, cfg.keep_fraction)
        if keep == live:  # nothing to cut: the prompt does not pause again
            break
        rounds.append((live, at))
        live = keep
    return Plan(n, max_tokens, tuple(rounds), live)


@dataclass(frozen=True)
class Workload:
    """A run as the estimate sees it: prompts, the decode loop's rows, the judge's cost, the device's speeds."""

    prompts: int
    rows: int  # sequences the policy decodes at once
    judge_tokens: Callable[[int], float]  # tokens a judge forward pass reads for an answer of t tokens (0: free)
    judge_generates: int  # tokens the judge writes per judgement (a critique), 0 for a scoring judge
    speeds: Speeds

    def decode(self, row_tokens: float, longest: int) -> float:
        steps = max(longest, row_tokens / self.rows)  # a step holds at most `rows` rows
        return steps * self.speeds.step + row_tokens

    def judging(self, answers: Sequence[tuple[int, int]]) -> float:
        """Cost of judging (count, tokens) answers."""
        per_written = 1 + self.speeds.step / self.rows
        return sum(
            k * (self.judge_tokens(t) * self.speeds.position + self.judge_generates * per_written) for k, t in answers
        )

    def ratio(self, plan: Plan) -> float:
        """Early rejection's cost over full best-of-N's: below 1 it should save time."""
        p, t = self.prompts, plan.max_tokens
        full = self.decode(p * plan.n * t, t) + self.judging([(p * plan.n, t)])
        judged = [(p * k, at) for k, at in plan.rounds] + [(p * plan.survivors, t)]  # partial answers, then survivors
        return (self.decode(p * plan.tokens, t) + self.judging(judged)) / full


def advice(work: Workload, n: int, max_tokens: int, cfg: EarlyRejectionConfig) -> tuple[bool, str]:
    """(whether early rejection should save time here, one line saying how much, or why not and what would pay)."""
    plan = plan_rounds(n, max_tokens, cfg)
    ratio = work.ratio(plan)
    counts = (
        f"{plan.partial_judgements} partial judgements per prompt, {plan.tokens} of {n * max_tokens} tokens "
        "generated at most"
    )
    if ratio < 1:
        return True, f"est. {ratio:.2f}x the work of full best-of-{n} ({counts})"
    tries = (
        [(f"n={k}", plan_rounds(k, max_tokens, cfg)) for k in (2 * n, 4 * n, 8 * n)]
        + [
            (f"keep_fraction={f}", plan_rounds(n, max_tokens, cfg.model_copy(update={"keep_fraction": f})))
            for f in (0.25, 0.125)
            if f < cfg.keep_fraction
        ]
        + [
            (f"chunk_tokens={c}", plan_rounds(n, max_tokens, cfg.model_copy(update={"chunk_tokens": c})))
            for c in (2 * cfg.chunk_tokens, 4 * cfg.chunk_tokens)
            if c < max_tokens
        ]
    )
    seen = {plan}
    pays = []
    for name, other in tries:  # each a change of one setting; one that makes the same rounds says nothing new
        if other not in seen and (r := work.ratio(other)) < 1:
            pays.append(f"{name} ({r:.2f}x)")
        seen.add(other)
    what = f"it would with {' or '.join(pays[:3])}" if pays else "no nearby setting would: drop early_rejection"
    return False, f"early rejection will not save time here: est. {ratio:.2f}x the work of full best-of-{n} " + (
        f"({counts}); {what}"
    )


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
    pauses: bool = True  # False once nothing is left to choose among: it runs to its end

    def live(self) -> list[int]:
        """Its candidates still going."""
        return [i for i, f in enumerate(self.finish) if f is None]


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
        self.open[key] = _Open(ids, seed, every, [[] for _ in range(n)], [None] * n, [None] * n)

    def paused(self) -> list[Hashable]:
        return list(self._paused)

    def partial(self, key: Hashable) -> dict[int, list[int]]:
        p = self._paused[key]
        return {i: list(p.tokens[i]) for i in p.live()}

    def resume(self, key: Hashable, keep: Sequence[int], pause: bool = True) -> None:
        p = self._paused.pop(key)
        for i in p.live():
            if i not in keep:
                p.finish[i] = "rejected"
        p.round += 1
        if not pause:  # the rest in one request, not a resubmission per chunk
            p.pauses, p.every = False, self.settings.max_tokens
        self._settle(key, p)

    def advance(self, keys: Collection[Hashable]) -> None:
        """One chunk for every prompt that is neither paused nor done, unless one is paused or ``keys`` are done."""
        if self._paused or all(k in self.done for k in keys):
            return
        if not self.open:
            raise KeyError(f"prompts {list(keys)} are not all in this loop")
        s = self.settings
        fresh = [k for k, p in self.open.items() if p.round == 0]
        made: list[tuple[Hashable, int, Sample]] = []
        if fresh:
            n = len(self.open[fresh[0]].tokens)
            chunk = SamplingSettings(s.temperature, s.top_p, min(self.open[k].every for k in fresh))
            groups = self.engine.sample([self.open[k].ids for k in fresh], n, [self.open[k].seed for k in fresh], chunk)
            made += [(k, i, sample) for k, group in zip(fresh, groups) for i, sample in enumerate(group)]
        for every in sorted({p.every for p in self.open.values() if p.round > 0}):  # one call per chunk length
            later = [(k, i) for k, p in self.open.items() if p.round > 0 and p.every == every for i in p.live()]
            ids = [self._continued(self.open[k].ids, self.open[k].tokens[i]) for k, i in later]
            seeds = [derive_seed(self.open[k].seed, i, self.open[k].round) for k, i in later]
            chunk = SamplingSettings(s.temperature, s.top_p, every)
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
        for k in dict.fromkeys(k for k, _, _ in made):
            p = self.open[k]
            if p.live() and p.pauses:
                self._paused[k] = p
            else:
                self._settle(k, p)

    def _continued(self, ids: list[int], tokens: list[int]) -> list[int]:
        """A prompt and a partial answer as the next chunk's prompt; a conversation's keeps its messages, the answer
        begun (a chat endpoint goes on from it)."""
        if isinstance(ids, ChatIds):
            return ids.continued(tokens, self.engine.tokenizer.decode(tokens, skip_special_tokens=True))
        return ids + tokens

    def _settle(self, key: Hashable, p: _Open) -> None:
        """A prompt with no candidate left going is done: its samples, rejected ones included."""
        if p.live():
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
