"""Early rejection ("Fast Best-of-N Decoding via Speculative Rejection", Sun et al. 2024).

All N candidates of a prompt are generated for ``chunk_tokens``; the judge scores the partial
answers; the best ``keep_fraction`` of the unfinished ones go on for another chunk, the rest stop.
Rounds repeat until every survivor has finished. A stopped candidate is kept in the run as a
record (``finish_reason: "rejected"``, with its partial score in the flag) and is never selected:
its judgement is a failed one (`rejected_judgements`).
"""

from __future__ import annotations

import math
from typing import Sequence

from bon.core.config import EarlyRejectionConfig
from bon.engines.base import SamplingSettings, derive_seed
from bon.pipeline.policy import EnginePolicy, prompt_seed
from bon.core.records import Candidate, Judgement, Prompt

REJECTED = "rejected"


class EarlyRejectionPolicy:
    """An `EnginePolicy` that consults a judge between chunks and stops the worst partial candidates."""

    def __init__(self, policy: EnginePolicy, judge, cfg: EarlyRejectionConfig):
        self.policy, self.judge, self.cfg = policy, judge, cfg
        self.name = policy.name
        self.generated_tokens = 0  # every token sampled, the stopped candidates' included

    def generate(self, prompts: Sequence[Prompt], n: int, seed: int) -> list[Candidate]:
        fitted = self.policy.fit(prompts)
        settings = self.policy.settings
        state = {}  # (prompt index, candidate index) -> [token ids, finish reason, flag]
        live = [(k, i) for k in range(len(prompts)) for i in range(n)]
        for (k, i) in live:
            state[(k, i)] = [[], None, None]
        round_ = 0
        while live:
            budget = min(self.cfg.chunk_tokens, settings.max_tokens - len(state[live[0]][0]))
            chunk = SamplingSettings(settings.temperature, settings.top_p, budget)
            if round_ == 0:  # one prefill per prompt, N rows: the first chunk of full best-of-N, token for token
                seeds = [prompt_seed(seed, p.id) for p in prompts]
                groups = self.policy.engine.sample([ids for ids, _ in fitted], n, seeds, chunk)
                samples = [(groups[k][i],) for k, i in live]
            else:  # each survivor continues with a stream of its own: (prompt seed, index, round)
                seeds = [derive_seed(prompt_seed(seed, prompts[k].id), i, round_) for k, i in live]
                samples = self.policy.engine.sample([fitted[k][0] + state[(k, i)][0] for k, i in live], 1, seeds, chunk)
            for (k, i), (sample,) in zip(live, samples):
                st = state[(k, i)]
                st[0] += list(sample.token_ids)
                self.generated_tokens += len(sample.token_ids) + (sample.finish_reason == "stop")
                if sample.finish_reason == "stop" or len(st[0]) >= settings.max_tokens:
                    st[1] = sample.finish_reason
            live = [key for key in live if state[key][1] is None]
            if live:
                live = self._cut(prompts, live, state, round_, self._candidates(prompts, fitted, state, live, seed))
            round_ += 1
        return self._candidates(prompts, fitted, state, list(state), seed)

    def _cut(self, prompts, live, state, round_, partial: list[Candidate]) -> list[tuple[int, int]]:
        """Keep the best ``keep_fraction`` of each prompt's unfinished candidates; flag the others rejected."""
        scores = {(c.prompt_id, c.index): j.score for c, j in zip(partial, self.judge.score(prompts, partial))}
        kept = []
        for k, p in enumerate(prompts):
            mine = [key for key in live if key[0] == k]
            if not mine:
                continue
            ranked = sorted(mine, key=lambda key: (-(scores[(p.id, key[1])] if scores[(p.id, key[1])] is not None else -math.inf), key[1]))
            keep = max(1, math.ceil(self.cfg.keep_fraction * len(mine)))
            kept += ranked[:keep]
            for key in ranked[keep:]:
                state[key][1] = REJECTED
                state[key][2] = (
                    f"rejected early after {len(state[key][0])} tokens (round {round_}, partial score "
                    f"{scores[(p.id, key[1])]}, kept {keep} of {len(mine)})"
                )
        return sorted(kept)

    def _candidates(self, prompts, fitted, state, keys, seed) -> list[Candidate]:
        tok = self.policy.engine.tokenizer
        return [
            Candidate(
                prompt_id=prompts[k].id,
                index=i,
                text=tok.decode(state[(k, i)][0], skip_special_tokens=True),
                seed=derive_seed(prompt_seed(seed, prompts[k].id), i),
                prompt_tokens=len(fitted[k][0]),
                completion_tokens=len(state[(k, i)][0]) + (state[(k, i)][1] == "stop"),
                finish_reason=state[(k, i)][1] or "length",
                policy=self.name,
                flag="; ".join(f for f in (fitted[k][1], state[(k, i)][2]) if f) or None,
            )
            for k, i in sorted(keys)
        ]


def rejected_judgements(candidates: Sequence[Candidate], judge_name: str) -> tuple[list[Candidate], dict[tuple[str, int], Judgement]]:
    """(the candidates a judge should score, failed judgements of the early-rejected ones keyed by candidate)."""
    scoreable = [c for c in candidates if c.finish_reason != REJECTED]
    failed = {
        (c.prompt_id, c.index): Judgement(c.prompt_id, c.index, judge_name, None, flag=c.flag or "rejected early")
        for c in candidates
        if c.finish_reason == REJECTED
    }
    return scoreable, failed


def in_order(candidates: Sequence[Candidate], verdicts: Sequence[Judgement], failed: dict[tuple[str, int], Judgement]) -> list[Judgement]:
    """The judge's verdicts and the rejected candidates' failed judgements, in the candidates' order."""
    by_key = {(j.prompt_id, j.candidate_index): j for j in verdicts} | failed
    return [by_key[(c.prompt_id, c.index)] for c in candidates]
