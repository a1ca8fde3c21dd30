"""Generate once, judge many: score an existing run with another judge, and re-select with any judge."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bon.core.config import RunConfig, SelectionConfig, validate_options
from bon.core.errors import did_you_mean
from bon.core.io import write_records_atomic
from bon.core.judging import JUDGES, build_judge, check_conversations, policy_defaults, same_judge
from bon.core.names import check_name
from bon.core.records import Candidate, Judgement, Key, Prompt, Selection, by_key, by_prompt
from bon.core.rundir import FILES, RunDir, RunDirError, load_run, open_run
from bon.pipeline.executors import LocalExecutor
from bon.pipeline.runner import Progress, Silent, alpaca_eval_outputs
from bon.pipeline.scoring import score_missing
from bon.pipeline.selection import (
    AGAIN,
    TIED_BY_PENALTY,
    char_lengths,
    check_judged,
    cover,
    coverage_threshold,
    secondary_judge,
    select_prompt,
)
from bon.pipeline.turns import every_turn


def run_prompts(rd: RunDir, config: RunConfig) -> tuple[list[Prompt], list[Selection], dict[str, dict[int, Candidate]]]:
    """Every turn's prompt the run has built (a conversation's later turns hold the run judge's kept answers),
    with the run's selections and candidates; refused when a prompt changed since it was sampled."""
    loaded = rd.prompts(config)
    rd.check_prompts(loaded)
    selections = rd.read(Selection)
    cands = by_prompt(rd.read(Candidate))
    mine = {s.prompt_id: s for s in selections if s.judge == config.judge.name}
    turns = every_turn(loaded, mine, cands, config.selection.decline_message)
    rd.check_prompts(turns[len(loaded) :])
    return turns, selections, cands


def run_candidates(rd: RunDir, config: RunConfig, built: tuple | None = None):
    """(every turn's sampled prompts, their candidates by prompt id and index, the skip selections of the others).

    ``built`` is what `run_prompts` returned, when the caller has it."""
    loaded, selections, cands = built or run_prompts(rd, config)
    skipped = {s.prompt_id: s for s in selections if s.skipped}
    prompts = [p for p in loaded if p.id not in skipped]
    incomplete = [p.id for p in prompts if len(cands[p.id]) < config.n]
    if incomplete:
        raise RunDirError(
            f"{rd.path}: {len(incomplete)} prompts lack candidates (e.g. "
            f"{incomplete[0]!r}); finish the run with `bon run` first"
        )
    return prompts, cands, skipped


def judgements_of(
    rd: RunDir, all_judgements: list[Judgement], label: str, prompts: list[Prompt], n: int
) -> dict[Key, Judgement]:
    """The ``label`` judgements of every candidate, keyed (prompt id, index); refused when any is missing."""
    judged = by_key(all_judgements, label)
    missing = sum((p.id, i) not in judged for p in prompts for i in range(n))
    have = sorted({j.judge for j in all_judgements})
    if missing and label not in have and label not in JUDGES:  # a typo: no command would make it
        hint = (
            did_you_mean(label, dict.fromkeys([*have, *JUDGES.names()])) or f"judges here: {', '.join(have) or 'none'}"
        )
        raise RunDirError(f"{rd.path}: {label!r} is neither a judge of this run nor a registered judge; {hint}")
    if missing:
        raise RunDirError(
            f"{rd.path}: {missing} candidates have no {label!r} judgement (judges here: {', '.join(have) or 'none'}); "
            f"run `bon judge {rd.path} --judge {label}` first"
        )
    return judged


def judge_run(
    run_dir: Path,
    name: str,
    options: dict[str, Any] | None = None,
    label: str | None = None,
    progress: Progress | None = None,
    allow_unjudged: bool = False,
) -> int:
    """Score every candidate of a finished run with judge ``name``; returns the judgements made.

    Judgements are appended under ``label`` (default: the judge's name); candidates are never
    touched. Rerunning continues where it stopped. A label already used with other options is
    refused, so two settings never mix under one name.
    """
    progress = progress or Silent()
    if label is not None:
        check_name(label, "--label")  # before the run directory is opened: a refusal changes nothing
    with open_run(run_dir) as (rd, manifest, config):
        JUDGES.check(name)
        options = policy_defaults(name, options or {}, config.policy.model_dump(mode="json"))
        judge = build_judge(name, options)
        label = label or name
        prompts, cands, _ = run_candidates(rd, config)  # every input is read before anything is written
        check_conversations(judge, prompts, config.policy.prompt_format)
        n = config.n
        existing = rd.read(Judgement)  # a bad judgements line, too, is refused before the manifest changes
        rd.register(
            manifest,
            "judges",
            {label: {"name": name, "options": options, "description": judge.describe()}},
            same_judge,
            lambda key, before, _: (
                f"judgements named {key!r} were made by {before['name']} "
                f"with options {before['options']}; pass another --label"
            ),
            stored={config.judge.name: {"name": config.judge.name, "options": config.judge.options}},
        )
        rd.write_manifest(manifest)
        # prompts this judge scored none of (refused before) are judged again
        judged = by_key(rd.forget_blind(label, n, existing), label)
        progress.start("judgements", len(prompts) * n, len(judged))

        def write(batch: Sequence[Prompt], fresh: list[Judgement]) -> None:
            rd.append(fresh)
            progress.advance("judgements", len(fresh))

        batches = [prompts[i : i + config.batch_size] for i in range(0, len(prompts), config.batch_size)]
        made = score_missing(
            LocalExecutor(judge), batches, lambda p: [cands[p.id][i] for i in range(n)], judged, label, write
        )
    if not allow_unjudged:
        check_judged(
            label,
            {p.id: [judged[(p.id, i)] for i in range(n)] for p in prompts},
            kept=AGAIN.format(label=label),
        )
    return made


@dataclass(frozen=True)
class LengthEffect:
    """What a length penalty λ changed against the plain pick (λ = 0), over the prompts both answered."""

    penalty: float
    changed: int  # prompts whose pick differs
    mean_length: float | None  # mean characters of the picks with λ
    plain_mean_length: float | None  # and without
    tied: int  # prompts where λ made every candidate tie (the tie-break decided)


def _mean_length(picks: Sequence[Selection], cands: dict[str, dict[int, Candidate]]) -> float | None:
    chars = [len(cands[s.prompt_id][s.chosen_index].text) for s in picks if s.chosen_index is not None]
    return sum(chars) / len(chars) if chars else None


@dataclass(frozen=True)
class Reselection:
    """What `select_run` did: the selections (prompt order), the outputs file, and the threshold it applied."""

    selections: list[Selection]
    outputs: Path
    threshold: float | None  # decline_below, coverage's τ, or the τ calibrated on another run
    calibrated_on: Path | None = None  # the run τ was taken from
    length: LengthEffect | None = None  # with a length penalty: what it changed

    @property
    def answered(self) -> float:
        """The share of the sampled prompts answered."""
        live = [s for s in self.selections if not s.skipped]
        return sum(not s.declined for s in live) / len(live) if live else 0.0


@dataclass(frozen=True)
class _Judged:
    """A finished run read for selecting with one judge label: what any number of selections is made from."""

    label: str
    n: int
    prompts: list[Prompt]  # every prompt row, skipped ones included
    cands: dict[str, dict[int, Candidate]]
    skipped: dict[str, Selection]
    judged: dict[Key, Judgement]  # the label's judgements
    all_judgements: list[Judgement]

    def pick(self, selection: SelectionConfig) -> list[Selection]:
        """Every prompt's pick under ``selection`` (its decline_below applied, no coverage); skipped prompts keep
        their declined selection, under this judge."""
        other = secondary_judge(selection.tie_break)
        secondary = by_key(self.all_judgements, other) if other else None
        return [
            replace(self.skipped[p.id], judge=self.label)
            if p.id in self.skipped
            else select_prompt(
                p.id,
                [self.judged[(p.id, i)] for i in range(self.n)],
                selection,
                secondary,
                char_lengths(self.cands[p.id]),
            )
            for p in self.prompts
        ]


def _judged(rd: RunDir, config: RunConfig, label: str, allow_unjudged: bool, kept: str) -> _Judged:
    """The run's prompts, candidates and ``label``'s judgements, read once; refused when the judge scored none of
    some prompt's candidates, unless ``allow_unjudged``."""
    built = run_prompts(rd, config)
    sampled, cands, skipped = run_candidates(rd, config, built)
    all_judgements = rd.read(Judgement)
    judged = judgements_of(rd, all_judgements, label, sampled, config.n)
    if not allow_unjudged:
        blind = {p.id: [judged[(p.id, i)] for i in range(config.n)] for p in sampled}
        check_judged(label, blind, kept=kept, allow="bon select: --allow-unjudged")
    return _Judged(label, config.n, built[0], cands, skipped, judged, all_judgements)


def _keeps_conversations(rd: RunDir, config: RunConfig, label: str, prompts: Sequence[Prompt]) -> None:
    """Refuse re-selecting a conversation run with its own judge: its later turns were sampled after its picks."""
    if label == config.judge.name and any(p.conversation for p in prompts):
        raise RunDirError(
            f"{rd.path}: the run judge {label!r} kept the answers its later turns were sampled after; "
            "re-selecting with it would change those conversations (select with another judge's label)"
        )


def selections_for(rd: RunDir, config: RunConfig, label: str, selection: SelectionConfig) -> list[Selection]:
    """``label``'s picks under ``selection`` (its coverage applied), computed and not written: what an export given
    its own selection options uses, leaving the run's stored selections as they are."""
    run = _judged(rd, config, label, True, "")
    _keeps_conversations(rd, config, label, run.prompts)
    picks = run.pick(selection)
    return picks if selection.coverage is None else cover(picks, selection.coverage)[0]


def calibrated_threshold(run_dir: Path, label: str, selection: SelectionConfig, coverage: float) -> float:
    """τ that answers ``coverage`` of another run's prompts with ``label``'s picks (a threshold chosen on held-out
    prompts, to apply to this run)."""
    rd, _, config = load_run(run_dir)
    picks = _judged(rd, config, label, True, "nothing was changed").pick(selection)
    tau = coverage_threshold([s.score for s in picks if not s.skipped], coverage)
    if tau is None:
        raise RunDirError(f"{rd.path}: judge {label!r} scored none of its prompts; no threshold to calibrate on")
    return tau


def select_run(
    run_dir: Path,
    label: str,
    decline_below: float | None = None,
    tie_break: str = "lowest_index",
    allow_unjudged: bool = False,
    coverage: float | None = None,
    length_penalty: float = 0.0,
    calibrate_on: Path | None = None,
) -> Reselection:
    """Re-select every prompt with the judgements under ``label`` and rewrite the outputs.

    That judge's lines in selections.jsonl are replaced; model_outputs.json holds its picks. A prompt none of
    whose candidates the judge scored is refused before anything is written, unless ``allow_unjudged``.
    ``coverage`` declines the least confident prompts (`cover`); with ``calibrate_on``, the threshold that gives
    that coverage on another run is applied here instead (this run's own coverage is reported, not forced).
    """
    options = {"decline_below": decline_below, "tie_break": tie_break, "coverage": coverage}
    selection = validate_options(SelectionConfig, {**options, "length_penalty": length_penalty})
    if calibrate_on is not None and coverage is None:
        raise RunDirError("--calibrate-on takes the threshold of a coverage: give --coverage too")
    tau = None
    if calibrate_on is not None and coverage is not None:
        tau = calibrated_threshold(calibrate_on, label, selection.model_copy(update={"coverage": None}), coverage)
        selection = selection.model_copy(update={"coverage": None, "decline_below": tau})
    with open_run(run_dir) as (rd, manifest, config):
        run = _judged(rd, config, label, allow_unjudged, "nothing was changed")
        prompts, cands = run.prompts, run.cands
        _keeps_conversations(rd, config, label, prompts)
        selections = run.pick(selection)
        effect = None
        if selection.length_penalty:  # the plain pick from the same judgements, for what λ changed
            plain = run.pick(selection.model_copy(update={"length_penalty": 0.0}))
            effect = LengthEffect(
                selection.length_penalty,
                sum(a.chosen_index != b.chosen_index for a, b in zip(selections, plain)),
                _mean_length(selections, cands),
                _mean_length(plain, cands),
                sum(s.reason == TIED_BY_PENALTY for s in selections),
            )
        if selection.coverage is not None:
            selections, tau = cover(selections, selection.coverage)
        kept = [s for s in rd.read(Selection) if s.judge != label]
        write_records_atomic(rd.path / FILES[Selection], kept + selections)
        updated = config.model_copy(update={"selection": selection})
        generator = f"{config.generator_name().rsplit('-', 1)[0]}-{label}" if not config.name else config.name
        source = [(p, s) for p, s in zip(prompts, selections) if not p.conversation]  # AlpacaEval: first turns
        outputs = alpaca_eval_outputs(updated, [p for p, _ in source], cands, [s for _, s in source], generator)
        done = Reselection(selections, rd.write_outputs(outputs), tau or selection.decline_below, calibrate_on, effect)
        manifest["selected_with"] = {
            "judge": label,
            "decline_below": decline_below,
            "tie_break": tie_break,
            "coverage": coverage,
            "length_penalty": length_penalty,
            "threshold": done.threshold,
            "answered": round(done.answered, 6),
            **({"calibrated_on": str(calibrate_on)} if calibrate_on else {}),
        }
        rd.write_manifest(manifest)
        return done
