"""The best-of-N pipeline: sample, judge, select or decline, write AlpacaEval outputs.

Prompts go through in fixed batches (``batch_size`` prompts, in source order). Each stage appends
what is missing to the run directory, so rerunning the same config continues where it stopped.
`run` prepares a `RunState` (what the directory holds) and hands it to a `Scheduler`, which
decides what is in flight; the executor decides where it runs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bon.core.config import RunConfig, SelectionConfig
from bon.core.errors import ConfigError
from bon.core.io import lock_dir, write_records_atomic
from bon.core.judging import Judge, build_judge, check_conversations
from bon.core.prompts import load_prompts
from bon.core.records import Candidate, Judgement, Key, Prompt, Selection, by_key, by_prompt
from bon.core.rundir import FILES, RunDir
from bon.pipeline.executors import Executor, Pending, make_executor
from bon.pipeline.policy import Policy
from bon.pipeline.preflight import LengthPlan, lengths, require_run_weights
from bon.pipeline.scoring import ScoreMissing
from bon.pipeline.selection import AGAIN, char_lengths, check_judged, cover, flag_counts, secondary_judge, select_prompt
from bon.pipeline.turns import following, last_turn_bound, turn_ids


class Progress(Protocol):
    def start(self, stage: str, total: int, done: int) -> None: ...

    def advance(self, stage: str, amount: int) -> None: ...

    def note(self, message: str) -> None: ...

    def status(self, line: str) -> None: ...


class Silent:
    """A `Progress` that shows nothing (library callers, tests)."""

    def start(self, stage: str, total: int, done: int) -> None:
        pass

    def advance(self, stage: str, amount: int) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def status(self, line: str) -> None:
        pass


@dataclass
class RunResult:
    run_dir: RunDir
    prompts: list[Prompt]
    selections: list[Selection]
    judge_description: str
    scale: str = ""  # what the judge's scores mean ("expected rating 0-9")
    flags: list[tuple[int, str]] = field(default_factory=list)  # (count, example) per kind, over the whole run
    judgements: int = 0  # the judge's judgements of this run's candidates, over the whole run
    flagged: int = 0  # how many of them carry a flag
    generated: int = 0  # candidates sampled by this invocation
    judged: int = 0  # judgements made by this invocation
    seconds: dict[str, float] = field(default_factory=dict)  # "sample"/"judge" compute, "wall"
    outputs_path: Path | None = None
    threshold: float | None = None  # τ of selection.coverage


@dataclass
class RunState:
    """What the run directory holds for one judge, kept in step with it as records are appended."""

    rd: RunDir
    n: int
    judge: str
    candidates: dict[str, dict[int, Candidate]]
    judged: dict[Key, Judgement]
    selected: dict[str, Selection]
    secondary: dict[Key, Judgement] | None  # the tie-break judge's judgements, when it names one

    @classmethod
    def read(cls, rd: RunDir, config: RunConfig, judge: str) -> RunState:
        """The run directory's records for ``judge``, after `RunDir.forget_blind` (the one write it makes)."""
        judgements = rd.forget_blind(judge, config.n)  # prompts it scored none of (refused before) are judged again
        other = secondary_judge(config.selection.tie_break)
        return cls(
            rd,
            config.n,
            judge,
            by_prompt(rd.read(Candidate)),
            by_key(judgements, judge),
            {s.prompt_id: s for s in rd.read(Selection) if s.judge == judge},
            by_key(judgements, other) if other else None,
        )

    def complete(self, prompt: Prompt) -> bool:
        return len(self.candidates[prompt.id]) >= self.n

    def add_candidates(self, candidates: Sequence[Candidate]) -> int:
        """Append the candidates not held yet; returns how many were new."""
        fresh = [c for c in candidates if c.index not in self.candidates[c.prompt_id]]
        self.rd.append(fresh)
        for c in fresh:
            self.candidates[c.prompt_id][c.index] = c
        return len(fresh)

    def add_selections(self, selections: Sequence[Selection]) -> None:
        self.rd.append(list(selections))
        self.selected.update((s.prompt_id, s) for s in selections)

    def select(self, prompt: Prompt, selection: SelectionConfig) -> Selection:
        """The prompt's pick under ``selection`` from the judgements held (no coverage: that is `cover`'s)."""
        lengths = char_lengths(self.candidates[prompt.id])
        return select_prompt(prompt.id, self.judgements(prompt), selection, self.secondary, lengths)

    def cover(self, prompts: Sequence[Prompt], selection: SelectionConfig, coverage: float) -> float | None:
        """Re-select ``prompts`` from their judgements, decline to ``coverage`` and rewrite this judge's selections
        (a finished run recomputes the same ones); returns τ."""
        picks = [s if (s := self.selected[p.id]).skipped else self.select(p, selection) for p in prompts]
        covered, tau = cover(picks, coverage)
        if [self.selected[s.prompt_id] for s in covered] != covered:
            others = [s for s in self.rd.read(Selection) if s.judge != self.judge]
            write_records_atomic(self.rd.path / FILES[Selection], others + covered)
            self.selected.update((s.prompt_id, s) for s in covered)
        return tau

    def judgements(self, prompt: Prompt) -> list[Judgement]:
        """The judge's judgements of a prompt's candidates (those it has), by index."""
        return self.judged_of(prompt.id)

    def judged_of(self, prompt_id: str) -> list[Judgement]:
        return [self.judged[(prompt_id, i)] for i in range(self.n) if (prompt_id, i) in self.judged]


class Scheduler:
    """Samples up to ``executor.window`` batches ahead and keeps ``executor.judge_window`` batches
    judging; each record file is appended in batch order whatever the executor, so the local and
    the Ray engine write the same files."""

    def __init__(
        self,
        state: RunState,
        executor: Executor,
        batches: list[Sequence[Prompt]],
        config: RunConfig,
        progress: Progress,
        result: RunResult,
    ):
        self.state, self.executor, self.batches = state, executor, batches
        self.config, self.progress, self.result = config, progress, result
        self.sampling: dict[int, Pending | None] = {}
        self.scorer = ScoreMissing(executor, state.judged, state.judge, self._judged)

    def run(self) -> None:
        for k in range(len(self.batches)):
            for ahead in range(k, min(len(self.batches), k + self.executor.window)):
                if ahead not in self.sampling:
                    self._submit_sample(ahead)
            self._collect_sample(k)
            self.scorer.submit(
                k,
                self.batches[k],
                [self.state.candidates[p.id][i] for p in self.batches[k] for i in range(self.state.n)],
            )
            self.scorer.collect(keep=self.executor.judge_window)  # batch k is queued before we wait on older ones
            self.progress.status(self.executor.status())
        self.scorer.collect()
        self.progress.status(self.executor.status())

    def _submit_sample(self, k: int) -> None:
        # a batch is redrawn whole, so padding (hence every logit) is that of an uninterrupted run
        incomplete = not all(self.state.complete(p) for p in self.batches[k])
        self.sampling[k] = self.executor.sample(self.batches[k], self.state.n, self.config.seed) if incomplete else None

    def _collect_sample(self, k: int) -> None:
        pending = self.sampling.pop(k)
        if pending is not None:
            fresh = self.state.add_candidates(pending.result())
            self.result.generated += fresh
            self.progress.advance("candidates", fresh)

    def _judged(self, k: int, fresh: list[Judgement]) -> None:
        """Batch k's missing judgements are in: write them, then select its prompts."""
        self.state.rd.append(fresh)
        self.result.judged += len(fresh)
        self.progress.advance("judgements", len(fresh))
        state = self.state
        selections = [state.select(p, self.config.selection) for p in self.batches[k] if p.id not in state.selected]
        state.add_selections(selections)
        self.progress.advance("prompts", len(selections))


def batches(items: Sequence[Prompt], size: int) -> list[Sequence[Prompt]]:
    """``items`` in pipeline batches of ``size`` prompts, in order: the unit sampled, written and judged together."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def run(
    config: RunConfig,
    progress: Progress | None = None,
    policy: Policy | None = None,
    judge: Judge | None = None,
    executor: Executor | None = None,
) -> RunResult:
    """Run (or resume) a best-of-N job.

    A conversation goes turn by turn: every prompt's turn k is sampled, judged and selected before
    turn k+1 is built from the conversation with the kept answer (`bon.pipeline.turns`), so a
    resumed run redoes no finished turn. ``policy``/``judge`` override the configured ones and
    ``executor`` the configured engine (tests).
    """
    progress = progress or Silent()
    prompts = load_prompts(config.prompts)
    judge = judge or build_judge(config.judge.name, config.judge.options)
    plan = _preflight(config, prompts, judge, check_policy=policy is None)  # before the run directory exists
    description = judge.describe()
    with lock_dir(config.output_dir):  # one process per run directory
        rd, notes = RunDir.open(config, {"judge_description": description}, prompts)
        state = RunState.read(rd, config, judge.name)
        planned = [pid for p in prompts if p.id not in plan.skipped for pid in turn_ids(p)]
        for note in [*notes, *_resumed(state, planned), *plan.notes]:
            progress.note(note)
        _start(progress, state, planned)
        result = RunResult(rd, [], [], description, scale=judge.declaration.scale)
        t0 = time.perf_counter()
        with executor or make_executor(config, judge, policy, progress.note) as ex:
            work = _turns(config, prompts, plan, judge, state, ex, progress, result, check_policy=policy is None)
            result.seconds.update(ex.stage_seconds())
        result.seconds["wall"] = time.perf_counter() - t0
        _finish(config, prompts, judge, state, result, work)
    if not config.allow_unjudged:
        check_judged(judge.name, {p.id: state.judgements(p) for p in work}, kept=AGAIN.format(label=judge.name))
    return result


def _preflight(config: RunConfig, prompts: list[Prompt], judge: Judge, check_policy: bool) -> LengthPlan:
    """Everything refused before any work: conversations the format or judge cannot take, a coverage over
    conversations, weights that cannot load, prompts that do not fit (a conversation counted with empty answers)."""
    check_conversations(judge, prompts, config.policy.prompt_format)
    if config.selection.coverage is not None and any(p.later_turns for p in prompts):
        raise ConfigError(
            f"selection.coverage: {config.prompts.source} holds conversations, whose later turns are built from "
            "the answers kept turn by turn, before a coverage over all prompts is known; use "
            "selection.decline_below, or `bon select --coverage` on the finished run"
        )
    require_run_weights(config, judge, check_policy=check_policy)
    bounds = [last_turn_bound(p) for p in prompts if p.later_turns]  # user turns alone overflowing: refused now
    return lengths(config, prompts, judge, check_policy=check_policy, bounds=bounds)


def _resumed(state: RunState, planned: list[str]) -> list[str]:
    """What a resumed run says first: done (selected, its candidates all there; a cut file is sampled again)."""
    if not state.rd.resumed:
        return []
    done = sum(
        pid in state.selected and (state.selected[pid].skipped or len(state.candidates[pid]) >= state.n)
        for pid in planned
    )
    if done == len(planned):
        return [f"{state.rd.path}: complete, nothing to sample or judge (its results below)"]
    return [f"resuming the run in {state.rd.path}: {done} of {len(planned)} prompts done"]


def _start(progress: Progress, state: RunState, planned: list[str]) -> None:
    total = len(planned) * state.n
    progress.start("candidates", total, sum(min(len(state.candidates[pid]), state.n) for pid in planned))
    progress.start("judgements", total, sum(len(state.judged_of(pid)) for pid in planned))
    progress.start("prompts", len(planned), sum(pid in state.selected for pid in planned))


def _turns(
    config: RunConfig,
    prompts: list[Prompt],
    plan: LengthPlan,
    judge: Judge,
    state: RunState,
    ex: Executor,
    progress: Progress,
    result: RunResult,
    check_policy: bool,
) -> list[Prompt]:
    """Sample, judge and select turn after turn (one turn for single prompts); returns the prompts sampled."""
    work: list[Prompt] = []
    turn = prompts
    while turn:
        if turn is not prompts:  # a later turn: its prompts hold the kept answers, measured only now
            plan = lengths(config, turn, judge, check_policy=check_policy)
            state.rd.check_prompts(turn, record=True)
            for note in plan.notes:
                progress.note(f"turn {turn[0].turn}: {note}")
        state.add_selections(
            [
                Selection(p.id, None, True, None, judge.name, why, skipped=True)
                for p in turn
                if (why := plan.skipped.get(p.id)) and p.id not in state.selected
            ]
        )
        sampled = [p for p in turn if p.id not in plan.skipped]
        Scheduler(state, ex, batches(sampled, config.batch_size), config, progress, result).run()
        result.prompts += turn
        work += sampled
        turn = following(turn, state.selected, state.candidates, config.selection.decline_message)
    return work


def _finish(
    config: RunConfig, prompts: list[Prompt], judge: Judge, state: RunState, result: RunResult, work: list[Prompt]
) -> None:
    """A coverage's declines (τ needs every prompt's pick), the result's counts, and model_outputs.json."""
    rd = state.rd
    if config.selection.coverage is not None:
        result.threshold = state.cover(prompts, config.selection, config.selection.coverage)
        manifest = rd.manifest()
        manifest["selected_with"] = {
            "judge": judge.name,
            "coverage": config.selection.coverage,
            "threshold": result.threshold,
        }
        rd.write_manifest(manifest)
    result.selections = [state.selected[p.id] for p in result.prompts]
    made = [j for p in work for j in state.judgements(p)]
    result.judgements, result.flagged, result.flags = len(made), sum(bool(j.flag) for j in made), flag_counts(made)
    first = result.selections[: len(prompts)]  # AlpacaEval rows: one per source prompt, its first turn
    result.outputs_path = rd.write_outputs(alpaca_eval_outputs(config, prompts, state.candidates, first))


def alpaca_eval_outputs(
    config: RunConfig,
    prompts: Sequence[Prompt],
    cands: dict[str, dict[int, Candidate]],
    selections: Sequence[Selection],
    generator: str | None = None,
) -> list[dict[str, str]]:
    """AlpacaEval `model_outputs.json` rows: the kept candidate, or the decline message."""
    generator = generator or config.generator_name()
    return [
        {
            "instruction": p.instruction,
            "output": config.selection.decline_message
            if s.declined or s.chosen_index is None
            else cands[p.id][s.chosen_index].text,
            "generator": generator,
            "dataset": p.dataset,
        }
        for p, s in zip(prompts, selections)
    ]
