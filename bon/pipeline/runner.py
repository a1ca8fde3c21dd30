"""The in-process best-of-N pipeline: sample, judge, select or decline, write AlpacaEval outputs.

Prompts go through in fixed batches (``batch_size`` prompts, in source order). Each stage appends
what is missing to the run directory, so rerunning the same config continues where it stopped.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Protocol, Sequence

from bon.core.config import RunConfig
from bon.pipeline.early_rejection import in_order, rejected_judgements
from bon.pipeline.executors import Done, Executor, Pending, make_executor
from bon.core.io import lock_dir
from bon.pipeline.policy import Policy
from bon.pipeline.preflight import lengths
from bon.core.prompts import load_prompts
from bon.core.records import Candidate, Judgement, Prompt, Selection
from bon.core.rundir import RunDir
from bon.pipeline.selection import check_judged, secondary_judge, select_prompt
from bon.core.judging import build_judge
from bon.core.judging import Judge


class Progress(Protocol):
    def start(self, stage: str, total: int, done: int) -> None: ...

    def advance(self, stage: str, amount: int) -> None: ...

    def note(self, message: str) -> None: ...

    def status(self, line: str) -> None: ...


class _Silent:
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
    generated: int = 0  # candidates sampled by this invocation
    judged: int = 0  # judgements made by this invocation
    seconds: dict[str, float] = field(default_factory=dict)  # "sample"/"judge" compute, "wall"
    outputs_path: object = None


def _batches(items: Sequence[Prompt], size: int) -> list[Sequence[Prompt]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def run(
    config: RunConfig,
    progress: Progress | None = None,
    policy: Policy | None = None,
    judge: Judge | None = None,
    executor: Executor | None = None,
) -> RunResult:
    """Run (or resume) a best-of-N job.

    ``policy``/``judge`` override the configured ones and ``executor`` the configured engine
    (tests). Each record file is written in batch order whatever the executor, so the local and
    the Ray engine produce the same files.
    """
    progress = progress or _Silent()
    prompts = load_prompts(config.prompts)
    judge = judge or build_judge(config.judge.name, config.judge.options)
    plan = lengths(config, prompts, judge, check_policy=policy is None)  # before the run directory exists
    describe = {"judge_description": judge.describe()}
    with lock_dir(config.output_dir):  # one process per run directory
        rd, notes = RunDir.open(config, describe, prompts)
        for note in notes + plan.notes:
            progress.note(note)

        n = config.n
        cands: dict[str, dict[int, Candidate]] = defaultdict(dict)
        for c in rd.read(Candidate):
            cands[c.prompt_id][c.index] = c
        judged: dict[tuple[str, int], Judgement] = {
            (j.prompt_id, j.candidate_index): j for j in rd.read(Judgement) if j.judge == judge.name
        }
        selected: dict[str, Selection] = {s.prompt_id: s for s in rd.read(Selection) if s.judge == judge.name}
        sel = config.selection
        other = secondary_judge(sel.tie_break)
        secondary = {(j.prompt_id, j.candidate_index): j for j in rd.read(Judgement) if j.judge == other} if other else None
        result = RunResult(rd, prompts, [], describe["judge_description"])
        skips = [
            Selection(p.id, None, True, None, judge.name, plan.skipped[p.id], skipped=True)
            for p in prompts
            if p.id in plan.skipped and p.id not in selected
        ]
        rd.append(skips)
        selected.update((s.prompt_id, s) for s in skips)
        work = [p for p in prompts if p.id not in plan.skipped]

        total = len(work) * n
        progress.start("candidates", total, sum(min(len(cands[p.id]), n) for p in work))
        progress.start("judgements", total, sum((p.id, i) in judged for p in work for i in range(n)))
        progress.start("prompts", len(prompts), sum(p.id in selected for p in prompts))

        batches = _batches(work, config.batch_size)
        sampling: dict[int, Pending | None] = {}
        judging: dict[int, Pending | None] = {}

        def submit_sample(k: int) -> None:
            # a batch is redrawn whole, so padding (hence every logit) is that of an uninterrupted run
            incomplete = any(len(cands[p.id]) < n for p in batches[k])
            sampling[k] = executor.sample(batches[k], n, config.seed) if incomplete else None

        def collect_sample(k: int) -> None:
            pending = sampling.pop(k)
            if pending is None:
                return
            fresh = [c for c in pending.result() if c.index not in cands[c.prompt_id]]
            rd.append(fresh)
            for c in fresh:
                cands[c.prompt_id][c.index] = c
            result.generated += len(fresh)
            progress.advance("candidates", len(fresh))

        def submit_judge(k: int) -> None:
            batch_cands = [cands[p.id][i] for p in batches[k] for i in range(n)]
            if not needs_judging(batch_cands, judged):
                judging[k] = None
                return
            scoreable, failed = rejected_judgements(batch_cands, judge.name)  # early-rejected: never judged, never chosen
            judging[k] = (executor.score(batches[k], scoreable) if scoreable else Done([]), failed, batch_cands)

        def finish(k: int) -> None:
            entry = judging.pop(k)
            if entry is not None:
                pending, failed, batch_cands = entry
                fresh = keep_missing(in_order(batch_cands, pending.result(), failed), judged)
                rd.append(fresh)
                result.judged += len(fresh)
                progress.advance("judgements", len(fresh))
            fresh_s = [
                select_prompt(p.id, [judged[(p.id, i)] for i in range(n)], sel.decline_below, sel.tie_break, secondary)
                for p in batches[k]
                if p.id not in selected
            ]
            rd.append(fresh_s)
            for s in fresh_s:
                selected[s.prompt_id] = s
            progress.advance("prompts", len(fresh_s))

        t0 = time.perf_counter()
        with executor or make_executor(config, judge, policy, progress.note) as executor:
            for k in range(len(batches)):
                for ahead in range(k, min(len(batches), k + executor.window)):
                    if ahead not in sampling:
                        submit_sample(ahead)
                collect_sample(k)
                submit_judge(k)
                # batch k is queued for judging before we wait on the oldest judgements still out
                for old in sorted(judging):
                    if old <= k - executor.judge_window:
                        finish(old)
                progress.status(executor.status())
            for old in sorted(judging):
                finish(old)
            progress.status(executor.status())
            result.seconds.update(executor.stage_seconds())
        result.seconds["wall"] = time.perf_counter() - t0

        result.selections = [selected[p.id] for p in prompts]
        result.outputs_path = rd.write_outputs(alpaca_eval_outputs(config, prompts, cands, result.selections))
    if not config.allow_unjudged:
        check_judged(judge.name, {p.id: [judged[(p.id, i)] for i in range(n) if (p.id, i) in judged] for p in work})
    return result


def needs_judging(batch_cands: Sequence[Candidate], judged: dict[tuple[str, int], Judgement]) -> bool:
    """Whether any candidate of a batch lacks a judgement.

    Such a batch is rescored whole, so that padding and batch layout (hence every float) are those
    of an uninterrupted run; `keep_missing` then keeps only the judgements that were missing.
    """
    return any((c.prompt_id, c.index) not in judged for c in batch_cands)


def keep_missing(verdicts: Sequence[Judgement], judged: dict[tuple[str, int], Judgement]) -> list[Judgement]:
    """The verdicts not judged before, recorded in ``judged``."""
    fresh = [j for j in verdicts if (j.prompt_id, j.candidate_index) not in judged]
    for j in fresh:
        judged[(j.prompt_id, j.candidate_index)] = j
    return fresh


def judge_missing(
    judge: Judge,
    batch: Sequence[Prompt],
    batch_cands: Sequence[Candidate],
    judged: dict[tuple[str, int], Judgement],
) -> list[Judgement]:
    """Judge a batch in this process if anything is missing; returns (and records) the new judgements."""
    if not needs_judging(batch_cands, judged):
        return []
    scoreable, failed = rejected_judgements(batch_cands, judge.name)
    return keep_missing(in_order(batch_cands, judge.score(batch, scoreable) if scoreable else [], failed), judged)


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
            "output": config.selection.decline_message if s.declined else cands[p.id][s.chosen_index].text,
            "generator": generator,
            "dataset": p.dataset,
        }
        for p, s in zip(prompts, selections)
    ]
