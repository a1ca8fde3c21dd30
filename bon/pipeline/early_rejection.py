"""Early rejection ("Fast Best-of-N Decoding via Speculative Rejection", Sun et al. 2024).

All N candidates of a prompt are generated for ``chunk_tokens``; the judge scores the partial
answers; the best ``keep_fraction`` of the unfinished ones go on for another chunk, the rest stop.
Rounds repeat until every survivor has finished. A stopped candidate is kept in the run as a
record (``finish_reason: "rejected"``, with its partial score in the flag) and is never selected:
its judgement is a failed one (`rejected_judgements`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from bon.core.config import EarlyRejectionConfig
from bon.core.judging import Judge
from bon.core.records import Candidate, Judgement, Key, Prompt, by_key
from bon.engines.base import SamplingSettings, derive_seed
from bon.pipeline.policy import EnginePolicy, prompt_seed

REJECTED = "rejected"


@dataclass
class Partial:
    """One candidate while rounds go on: its tokens so far, and why it ended (None while it goes on)."""

    tokens: list[int] = field(default_factory=list)
    finish: str | None = None  # stop | length | rejected
    flag: str | None = None  # why it was rejected


Slot = tuple[int, int]  # (prompt position in the batch, candidate index)


class EarlyRejectionPolicy:
    """An `EnginePolicy` that consults a judge between chunks and stops the worst partial candidates."""

    def __init__(self, policy: EnginePolicy, judge: Judge, cfg: EarlyRejectionConfig):
        self.policy, self.judge, self.cfg = policy, judge, cfg
        self.name = policy.name
        self.generated_tokens = 0  # every token sampled, the stopped candidates' included

    def generate(self, prompts: Sequence[Prompt], n: int, seed: int) -> list[Candidate]:
        fitted = self.policy.fit(prompts)
        settings = self.policy.settings
        state = {(k, i): Partial() for k in range(len(prompts)) for i in range(n)}
        live = sorted(state)
        round_ = 0
        while live:
            budget = min(self.cfg.chunk_tokens, settings.max_tokens - len(state[live[0]].tokens))
            chunk = SamplingSettings(settings.temperature, settings.top_p, budget)
            if round_ == 0:  # one prefill per prompt, N rows: the first chunk of full best-of-N, token for token
                seeds = [prompt_seed(seed, p.id) for p in prompts]
                groups = self.policy.engine.sample([ids for ids, _ in fitted], n, seeds, chunk)
                samples = [groups[k][i] for k, i in live]
            else:  # each survivor continues with a stream of its own: (prompt seed, index, round)
                seeds = [derive_seed(prompt_seed(seed, prompts[k].id), i, round_) for k, i in live]
                continuing = self.policy.engine.sample(
                    [fitted[k][0] + state[(k, i)].tokens for k, i in live], 1, seeds, chunk
                )
                samples = [group[0] for group in continuing]
            for slot, sample in zip(live, samples):
                partial = state[slot]
                partial.tokens += list(sample.token_ids)
                self.generated_tokens += len(sample.token_ids) + (sample.finish_reason == "stop")
                if sample.finish_reason == "stop" or len(partial.tokens) >= settings.max_tokens:
                    partial.finish = sample.finish_reason
            live = [slot for slot in live if state[slot].finish is None]
            if live:
                live = self._cut(prompts, live, state, round_, self._candidates(prompts, fitted, state, live, seed))
            round_ += 1
        return self._candidates(prompts, fitted, state, list(state), seed)

    def _cut(
        self,
        prompts: Sequence[Prompt],
        live: list[Slot],
        state: dict[Slot, Partial],
        round_: int,
        partial: list[Candidate],
    ) -> list[Slot]:
        """Keep the best ``keep_fraction`` of each prompt's unfinished candidates; flag the others rejected."""
        scores = {c.key: j.score for c, j in zip(partial, self.judge.score(prompts, partial))}

        def rank(slot: Slot) -> tuple[float, int]:
            score = scores[(prompts[slot[0]].id, slot[1])]
            return (-(score if score is not None else -math.inf), slot[1])

        kept: list[Slot] = []
        for k, p in enumerate(prompts):
            mine = sorted((slot for slot in live if slot[0] == k), key=rank)
            if not mine:
                continue
            keep = max(1, math.ceil(self.cfg.keep_fraction * len(mine)))
            kept += mine[:keep]
            for slot in mine[keep:]:
                state[slot].finish = REJECTED
                state[slot].flag = (
                    f"rejected early after {len(state[slot].tokens)} tokens (round {round_}, partial score "
                    f"{scores[(p.id, slot[1])]}, kept {keep} of {len(mine)})"
                )
        return sorted(kept)

    def _candidates(
        self,
        prompts: Sequence[Prompt],
        fitted: list[tuple[list[int], str | None]],
        state: dict[Slot, Partial],
        slots: list[Slot],
        seed: int,
    ) -> list[Candidate]:
        tok = self.policy.engine.tokenizer
        return [
            Candidate(
                prompt_id=prompts[k].id,
                index=i,
                text=tok.decode(state[(k, i)].tokens, skip_special_tokens=True),
                seed=derive_seed(prompt_seed(seed, prompts[k].id), i),
                prompt_tokens=len(fitted[k][0]),
                completion_tokens=len(state[(k, i)].tokens) + (state[(k, i)].finish == "stop"),
                finish_reason=state[(k, i)].finish or "length",
                policy=self.name,
                flag="; ".join(f for f in (fitted[k][1], state[(k, i)].flag) if f) or None,
            )
            for k, i in sorted(slots)
        ]


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
