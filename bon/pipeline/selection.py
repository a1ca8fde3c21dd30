"""Best-of-N selection: argmax with a lowest-index tie-break, or a decline below a threshold."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from bon.core.errors import BonError
from bon.core.records import Judgement, Selection


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


def select(
    prompt_id: str,
    judgements: Sequence[Judgement],
    decline_below: float | None = None,
    tiebreak: Mapping[int, float] | None = None,
) -> Selection:
    """Pick the best-scored candidate of one prompt.

    Equal scores are ordered by ``tiebreak`` (higher first; a candidate without a value comes
    last), then by the lowest candidate index. Failed judgements (score None) never win. A prompt
    whose best score is below ``decline_below``, or none of whose candidates could be judged while
    a threshold is set, is declined; with no threshold an all-failed prompt falls back to candidate 0.
    """
    tiebreak = tiebreak or {}
    if not judgements:
        raise ValueError(f"prompt {prompt_id!r}: no judgements to select from")
    judge = judgements[0].judge
    scored = [(j.score, j) for j in judgements if j.score is not None]
    if not scored:
        if decline_below is not None:
            return Selection(prompt_id, None, True, None, judge, reason="no candidate could be judged")
        first = min(j.candidate_index for j in judgements)
        return Selection(prompt_id, first, False, None, judge, reason="no candidate could be judged; kept the first")
    score, best = min(
        scored, key=lambda sj: (-sj[0], -tiebreak.get(sj[1].candidate_index, -math.inf), sj[1].candidate_index)
    )
    if decline_below is not None and score < decline_below:
        return Selection(
            prompt_id,
            None,
            True,
            best.score,
            judge,
            reason=f"best score {best.score:.4g} < decline_below {decline_below:g}",
        )
    return Selection(prompt_id, best.candidate_index, False, best.score, judge)


def select_prompt(
    prompt_id: str,
    judgements: Sequence[Judgement],
    decline_below: float | None,
    tie_break: str = "lowest_index",
    secondary: Mapping[tuple[str, int], Judgement] | None = None,
) -> Selection:
    """`select` with the tie-break values of ``tie_break`` (see `tiebreak_values`)."""
    return select(prompt_id, judgements, decline_below, tiebreak_values(tie_break, judgements, secondary))


def secondary_judge(tie_break: str) -> str | None:
    """The judge whose scores break ties under ``tie_break``, if it names one."""
    kind, _, name = tie_break.partition(":")
    return name if kind == "judge" else None
