"""The lines `bon select` prints about a selection: counts that add up, and what a length penalty changed."""

from __future__ import annotations

from bon.pipeline.rejudge import Reselection


def selected_lines(done: Reselection, judge: str, coverage: float | None) -> list[str]:
    """What `bon select` says: "6 prompts selected with cosine: 3 answered, 3 declined", the threshold a coverage
    chose (a warning when a calibrated one answers far from the target), and what a length penalty changed."""
    selections = done.selections
    declined = sum(s.declined for s in selections)
    blind = sum(s.score is None and not s.skipped for s in selections)
    fallbacks = f", {blind} of them without any score (first candidate kept or declined)" if blind else ""
    lines = [
        f"{len(selections)} prompts selected with {judge}: {len(selections) - declined} answered, {declined} declined"
        f"{fallbacks}; outputs: {done.outputs}"
    ]
    if coverage is not None and done.threshold is not None:
        source = f"calibrated on {done.calibrated_on} at coverage {coverage:g}" if done.calibrated_on else "this run's"
        lines.append(f"threshold {done.threshold:.6g} ({source}): {done.answered:.1%} of this run's prompts answered")
        if done.calibrated_on and not coverage / 2 <= done.answered <= coverage * 2:
            lines.append(
                f"warning: the threshold from {done.calibrated_on} answers {done.answered:.1%} here against the "
                f"{coverage:.0%} asked: its scores may sit on another scale (another judge or judge setting)"
            )
    if done.length is not None:
        e = done.length
        size = lambda x: "—" if x is None else f"{x:.0f}"  # noqa: E731
        lines.append(
            f"length penalty λ={e.penalty:g}: {e.changed} of {len(selections)} picks changed; mean pick length "
            f"{size(e.plain_mean_length)} -> {size(e.mean_length)} characters"
        )
        if e.tied:
            lines.append(
                f"warning: at λ={e.penalty:g} every candidate ties on {e.tied} prompts (the penalty cancels the "
                "judge's scores): the tie-break picked there, not the judge"
            )
    return lines
