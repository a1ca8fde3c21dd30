"""Conversations, turn by turn: the next turn's prompt holds the answer kept for the turn before.

A run directory stores no prompt of a later turn: it is rebuilt from the source's conversation and
the run judge's selections, so every reader (resume, `bon judge`, exports, evaluations) sees the
conversation exactly as the policy saw it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bon.core.records import TURN_SEP, Candidate, Prompt, Selection, next_turn
from bon.core.rundir import RunDirError


def kept_text(selection: Selection, candidates: Mapping[int, Candidate], decline_message: str) -> str | None:
    """What the assistant said at a selected turn: the kept candidate, the decline message, None when skipped."""
    if selection.skipped:
        return None
    if selection.declined or selection.chosen_index is None:
        return decline_message  # what the user was shown, so the conversation goes on from it
    if selection.chosen_index not in candidates:  # an edited or cut record file: the next turn has no history
        raise RunDirError(
            f"the selection of {selection.prompt_id!r} keeps candidate {selection.chosen_index}, "
            "which candidates.jsonl does not hold; restore the run's files or start another output_dir"
        )
    return candidates[selection.chosen_index].text


def following(
    prompts: Sequence[Prompt],
    selected: Mapping[str, Selection],
    candidates: Mapping[str, Mapping[int, Candidate]],
    decline_message: str,
) -> list[Prompt]:
    """The next turn's prompt of each of ``prompts`` that has one and whose kept answer is known."""
    out = []
    for p in prompts:
        if p.later_turns and p.id in selected:
            kept = kept_text(selected[p.id], candidates.get(p.id, {}), decline_message)
            if kept is not None:
                out.append(next_turn(p, kept))
    return out


def every_turn(
    prompts: Sequence[Prompt],
    selected: Mapping[str, Selection],
    candidates: Mapping[str, Mapping[int, Candidate]],
    decline_message: str,
) -> list[Prompt]:
    """``prompts`` and every later turn the run has built so far, turn by turn."""
    out: list[Prompt] = []
    turn = list(prompts)
    while turn:
        out += turn
        turn = following(turn, selected, candidates, decline_message)
    return out


def turn_ids(prompt: Prompt) -> list[str]:
    """The prompt ids of ``prompt`` and of its conversation's later turns (known before any answer is)."""
    return [prompt.id] + [
        f"{prompt.conversation_id}{TURN_SEP}{k}" for k in range(prompt.turn + 1, len(prompt.turns) + 1)
    ]


def last_turn_bound(prompt: Prompt) -> Prompt:
    """The conversation's last turn with every kept answer empty: a lower bound on its length, for preflight."""
    last = prompt
    while last.later_turns:
        last = next_turn(last, "")
    return last
