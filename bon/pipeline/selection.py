"""Best-of-N selection: argmax (optionally length-penalised) with a tie-break, then a decline below a threshold
given, or one chosen so that a target share of the prompts is answered (coverage)."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import replace

from bon.core.config import SelectionConfig
from bon.core.errors import BonError
from bon.core.records import Candidate, Judgement, Selection


class TieBreakError(BonError, ValueError):
    """A tie-break cannot be computed from what the run directory holds."""


_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def flag_counts(judgements: Sequence[Judgement]) -> list[tuple[int, str]]:
    """(count, an example) per kind of flag, most frequent first; flags that differ only in their numbers
    ("digit mass 0.047 below 0.05" and "digit mass 0.008 below 0.05") are one kind."""
    kinds: dict[str, list] = {}
    for j in judgements:
        for flag in (j.flag or "").split("; "):
            if flag:
                kinds.setdefault(_NUMBER.sub("#", flag), [0, flag])[0] += 1
    return sorted(((count, example) for count, example in kinds.values()), key=lambda r: -r[0])


AGAIN = "the failed judgements are kept under {label!r} and judged again when this command is rerun"


class UnjudgedError(BonError, RuntimeError):
    """The judge could score none of some prompt's candidates; everything made is already written."""


def check_judged(
    judge: str,
    by_prompt: Mapping[str, Sequence[Judgement]],
    kept: str = "everything is written",
    allow: str = "bon judge: --allow-unjudged",
) -> None:
    """Refuse loudly when a prompt's candidates all failed to be judged (its pick would be a blind fallback).

    ``kept`` says what stays on disk and what a rerun does with it; ``allow`` how this command accepts fallbacks.
    """
    blind = {pid: js for pid, js in by_prompt.items() if js and not any(j.ok for j in js)}
    if blind:
        pid, js = next(iter(blind.items()))
        reason = next((j.flag for j in js if j.flag), "no reason recorded")
        raise UnjudgedError(
            f"judge {judge!r} could score none of the candidates of {len(blind)} of {len(by_prompt)} prompts "
            f"(e.g. {pid!r}: {reason}); {kept}. Fix the judge or its inputs (e.g. references), "
            f"or accept the fallback picks with allow_unjudged: true ({allow})"
        )


def tiebreak_values(
    rule: str, judgements: Sequence[Judgement], secondary: Mapping[tuple[str, int], Judgement] | None = None
) -> dict[int, float]:
    """Per candidate index, the value that orders equal scores (higher first) under ``rule``.

    ``lowest_index``: none (the index decides). ``details:KEY``: a number the judge recorded, e.g.
    Auto-J's ``rating_logprob``. ``judge:NAME``: another judge's score of the same candidate.
    """
    kind, _, arg = rule.partition(":")
    judged = [j for j in judgements if j.ok]
    if kind == "details" and judged and not any(arg in j.details for j in judged):  # a judge records its keys always
        recorded = sorted({k for j in judged for k, v in j.details.items() if isinstance(v, (int, float))})
        raise TieBreakError(
            f"tie_break {rule!r}: judge {judged[0].judge!r} records no {arg!r} (prompt {judged[0].prompt_id!r}); "
            f"it records {', '.join(recorded) or 'no numbers'}"
        )
    out: dict[int, float] = {}
    for j in judgements:
        if kind == "details":
            value = j.details.get(arg)
        elif kind == "judge":
            other = (secondary or {}).get((j.prompt_id, j.candidate_index))
            if other is None:
                raise TieBreakError(
                    f"tie_break {rule!r}: candidate {j.candidate_index} of prompt {j.prompt_id!r} has no {arg!r} "
                    f"judgement; score the run with it first (bon judge RUN_DIR --judge {arg})"
                )
            value = other.score
        else:
            return {}
        if isinstance(value, (int, float)) and not math.isnan(value):
            out[j.candidate_index] = float(value)
    return out


def char_lengths(candidates: Mapping[int, Candidate]) -> dict[int, int]:
    """A prompt's candidates' lengths in characters, by index: what a length penalty and length reports measure."""
    return {i: len(c.text) for i, c in candidates.items()}


def zscores(values: Sequence[float]) -> list[float]:
    """Standard scores; all-equal values (or a single one) map to 0. The length penalty's and the ensemble judge's."""
    if len(values) < 2:
        return [0.0] * len(values)
    mean, sd = statistics.fmean(values), statistics.pstdev(values)
    return [0.0 if sd == 0 else (v - mean) / sd for v in values]


def pick_values(
    judgements: Sequence[Judgement], lengths: Mapping[int, int] | None = None, length_penalty: float = 0.0
) -> dict[int, float]:
    """Per scored candidate, the value its prompt's pick maximises: its score; with a length penalty λ, its score
    z-scored among the prompt's scored candidates minus λ times its length (characters) z-scored among them, so λ
    means the same on every judge's scale."""
    scored = [j for j in judgements if j.score is not None]
    if not length_penalty or len(scored) < 2:
        return {j.candidate_index: float(j.score) for j in scored if j.score is not None}
    if lengths is None:
        raise ValueError("a length penalty needs the candidates' lengths")
    scores = zscores([float(j.score) for j in scored if j.score is not None])
    chars = zscores([float(lengths[j.candidate_index]) for j in scored])
    return {j.candidate_index: s - length_penalty * c for j, s, c in zip(scored, scores, chars)}


TIED_BY_PENALTY = "the length penalty made every candidate tie; the tie-break kept this one"


def select(
    prompt_id: str,
    judgements: Sequence[Judgement],
    decline_below: float | None = None,
    tiebreak: Mapping[int, float] | None = None,
    lengths: Mapping[int, int] | None = None,
    length_penalty: float = 0.0,
) -> Selection:
    """Pick the best candidate of one prompt.

    The pick maximises `pick_values` (the score, or the length-penalised score); equal values are ordered by
    ``tiebreak`` (higher first; a candidate without a value comes last), then by the lowest candidate index.
    Failed judgements (score None) never win. A prompt whose pick scores below ``decline_below`` (its own score:
    the judge's confidence), or none of whose candidates could be judged while a threshold is set, is declined;
    with no threshold an all-failed prompt falls back to candidate 0.
    """
    tiebreak = tiebreak or {}
    if not judgements:
        raise ValueError(f"prompt {prompt_id!r}: no judgements to select from")
    judge = judgements[0].judge
    values = pick_values(judgements, lengths, length_penalty)
    scored = [j for j in judgements if j.candidate_index in values]
    if not scored:
        if decline_below is not None:
            return Selection(
                prompt_id, None, True, None, judge, reason="no candidate could be judged", threshold=decline_below
            )
        first = min(j.candidate_index for j in judgements)
        return Selection(prompt_id, first, False, None, judge, reason="no candidate could be judged; kept the first")
    best = min(
        scored,
        key=lambda j: (-values[j.candidate_index], -tiebreak.get(j.candidate_index, -math.inf), j.candidate_index),
    )
    assert best.score is not None
    spread = max(values.values()) - min(values.values())
    # e.g. the length judge at λ = 1, where z(score) - z(length) is 0 for every candidate: say so, never silently
    tied = bool(length_penalty) and len({j.score for j in scored}) > 1 and spread <= 1e-9
    reason = TIED_BY_PENALTY if tied else None
    if decline_below is not None and best.score < decline_below:
        return Selection(
            prompt_id,
            None,
            True,
            best.score,
            judge,
            reason=f"best score {best.score:.4g} < decline_below {decline_below:g}",
            threshold=decline_below,
        )
    return Selection(prompt_id, best.candidate_index, False, best.score, judge, reason=reason, threshold=decline_below)


def select_prompt(
    prompt_id: str,
    judgements: Sequence[Judgement],
    selection: SelectionConfig,
    secondary: Mapping[tuple[str, int], Judgement] | None = None,
    lengths: Mapping[int, int] | None = None,
) -> Selection:
    """`select` under a selection config: its tie-break (see `tiebreak_values`), length penalty and
    ``decline_below`` (a coverage is applied over all prompts afterwards, by `cover`)."""
    return select(
        prompt_id,
        judgements,
        selection.decline_below,
        tiebreak_values(selection.tie_break, judgements, secondary),
        lengths,
        selection.length_penalty,
    )


def select_all(
    prompts: Sequence[tuple[str, Sequence[Judgement], Mapping[int, int] | None]],
    selection: SelectionConfig,
    secondary: Mapping[tuple[str, int], Judgement] | None = None,
) -> list[Selection]:
    """Every prompt's pick under ``selection``, its coverage applied over them all; ``prompts`` are (prompt id,
    its judgements, its candidates' lengths in characters) in prompt order."""
    picks = [select_prompt(pid, js, selection, secondary, lengths) for pid, js, lengths in prompts]
    return picks if selection.coverage is None else cover(picks, selection.coverage)[0]


def answered_count(coverage: float, prompts: int) -> int:
    """How many of ``prompts`` a coverage answers: the share rounded half up, at least one."""
    return min(prompts, max(1, math.floor(coverage * prompts + 0.5))) if prompts else 0


def coverage_threshold(scores: Sequence[float | None], coverage: float) -> float | None:
    """τ: the lowest best score among the ``coverage`` share of prompts answered (None when nothing is scored)."""
    ranked = sorted((s for s in scores if s is not None), reverse=True)
    k = answered_count(coverage, len(scores))
    return ranked[min(k, len(ranked)) - 1] if ranked and k else None


def cover(selections: Sequence[Selection], coverage: float) -> tuple[list[Selection], float | None]:
    """Decline the least confident prompts so that ``coverage`` of those sampled is answered; returns them and τ.

    ``selections`` are picks made without a threshold, in prompt order. Prompts are answered by their pick's score,
    highest first; a prompt none of whose candidates could be judged comes last; equal scores are answered in prompt
    order (so a coverage declines exactly its share). Skipped prompts (never sampled) stay declined and uncounted.
    """
    live = [i for i, s in enumerate(selections) if not s.skipped]
    order = sorted(live, key=lambda i: (selections[i].score is None, -(selections[i].score or 0.0), i))
    answered = set(order[: answered_count(coverage, len(live))])
    tau = coverage_threshold([selections[i].score for i in live], coverage)
    out = []
    for i, s in enumerate(selections):
        if s.skipped or i in answered:
            out.append(s if s.skipped else replace(s, threshold=tau))
            continue
        if s.score is None or tau is None:
            reason = "no candidate could be judged"
        elif s.score < tau:
            reason = f"best score {s.score:.4g} < {tau:.4g}, the threshold of coverage {coverage:g}"
        else:
            reason = (
                f"best score {s.score:.4g} ties the threshold of coverage {coverage:g}; ties answered in prompt order"
            )
        out.append(replace(s, chosen_index=None, declined=True, reason=reason, threshold=tau))
    return out, tau


def secondary_judge(tie_break: str) -> str | None:
    """The judge whose scores break ties under ``tie_break``, if it names one."""
    kind, _, name = tie_break.partition(":")
    return name if kind == "judge" else None
