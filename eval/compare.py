"""`bon compare`: registered judges side by side on evaluation data, every raw judgement kept.

The run directory holds ``manifest.json`` (the config, the judges' specs), one append-only file per
(benchmark, judge) under ``judgements/`` (scalar judges) or ``comparisons/`` (pairwise judges on a
pairwise benchmark), and the report. A rerun scores only what is missing, so adding a judge to the
config reuses every other judge's work; a label's judge and options may not change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from bon.core.config import JudgeConfig, RayConfig, RunConfig, Strict
from bon.core.errors import BonError, SizeError
from bon.core.judging import Compares, Judge, build_judge, judge_spec, same_judge
from bon.core.names import Name
from bon.core.outputs import check_workdir
from bon.core.records import Comparison, Judgement, Prompt, by_key
from bon.core.rundir import MANIFEST, RunDir, read_manifest
from bon.engines.cache import ENGINES
from bon.eval.benchmarks import Benchmark, load_pairwise
from bon.eval.judge_metrics import (
    AgreementMatrix,
    LeaderboardResult,
    PairwiseResult,
    PoolResult,
    ScoresResult,
    candidate_scores,
    judge_agreement,
)
from bon.eval.kinds import KINDS
from bon.pipeline.executors import LocalExecutor, make_executor
from bon.pipeline.scoring import InFlight, needs_judging, score_missing


class CompareJudge(JudgeConfig):
    label: Name | None = Field(None, description="name in the report and the run directory; default the judge's name")
    max_items: int | dict[str, int] | None = Field(
        None,
        description=(
            "score K prompts per benchmark, or {benchmark: K}: spread "
            "evenly and nested across judges (model judges on CPU)"
        ),
    )
    benchmarks: list[str] | None = Field(None, description="only these benchmarks (by name); None = every benchmark")

    @property
    def key(self) -> str:
        return self.label or self.name

    def limit(self, benchmark: str) -> int | None:
        return self.max_items.get(benchmark) if isinstance(self.max_items, dict) else self.max_items


class BenchmarkConfig(Strict):
    name: Name = Field(description="name in the report and the run directory")
    kind: Literal["pairwise", "pool", "scores", "leaderboard"] = Field(
        description=(
            "pairwise: Auto-J format; pool: AlpacaEval annotations folder; "
            "scores: rated responses; leaderboard: per-model outputs + CSV"
        )
    )  # the kinds registered in eval.kinds.KINDS (a test keeps the two equal)
    path: str = Field(
        description=(
            "the file (pairwise, scores), folder of per-model annotation "
            "files (pool), or of outputs/ and leaderboard.csv (leaderboard)"
        )
    )
    instruction_field: str = Field("instruction", description="scores: column holding the instruction")
    response_field: str = Field("output", description="scores: column holding the response")
    score_field: str = Field("score", description="scores: the numeric reference column (e.g. a GPT-4 rating)")
    reference_field: str | None = Field(None, description="scores: column holding a gold answer, if any")
    use_references: bool = Field(
        True, description="give judges the reference answers (pool: the baseline's output); false = reference-free"
    )


class CompareConfig(Strict):
    output_dir: Path = Field(Path("runs/compare"), description="run directory; rerunning continues there")
    judges: list[CompareJudge] = Field(
        min_length=1, description="the judges to compare (registry names, options, labels)"
    )
    benchmarks: list[BenchmarkConfig] = Field(min_length=1, description="the data they are compared on")
    batch_size: int = Field(16, ge=1, description="prompts per judge call (the unit of resumption)")
    bootstrap: int = Field(
        1000, ge=0, le=100_000, description="bootstrap resamples for confidence intervals (0 = none; at most 100,000)"
    )
    folds: int = Field(
        2,
        ge=2,
        description="splits for the held-out tie threshold of scalar judges on pairwise data (at most their pairs)",
    )
    seed: int = Field(0, ge=0, description="seed of the bootstrap")
    engine: Literal["local", "ray"] = Field(
        "local", description="local = judges in this process; ray = judges in Ray actors"
    )
    ray: RayConfig = Field(default_factory=RayConfig, description="judge actors and cluster for engine: ray")

    @model_validator(mode="after")
    def _names(self) -> CompareConfig:
        for what, names in (
            ("judge label", [j.key for j in self.judges]),
            ("benchmark name", [b.name for b in self.benchmarks]),
        ):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{what} {dup[0]!r} is used twice; give each a distinct one")
        known = {b.name for b in self.benchmarks}
        for j in self.judges:
            limits = j.max_items if isinstance(j.max_items, dict) else {} if j.max_items is None else {"": j.max_items}
            bad = sorted(k for k, v in limits.items() if v < 1 or (k and k not in known))
            if bad:
                raise ValueError(f"judge {j.key!r}: max_items {bad[0]!r}: a known benchmark and a count of at least 1")
            unknown = sorted(set(j.benchmarks or []) - known)
            if unknown:
                raise ValueError(
                    f"judge {j.key!r}: unknown benchmark {unknown[0]!r} (known: {', '.join(sorted(known))})"
                )
        return self


def load_benchmark(cfg: BenchmarkConfig) -> Benchmark:
    bench = KINDS.get(cfg.kind).load(cfg)
    if not cfg.use_references:
        bench = dataclasses.replace(bench, prompts=[dataclasses.replace(p, reference=None) for p in bench.prompts])
    return bench


def _same_benchmark(before: Any, now: Any) -> bool:
    """Whether a stored benchmark spec, read with today's defaults (a field added since: no change), equals ``now``."""
    try:
        return BenchmarkConfig.model_validate(before).model_dump(mode="json") == now
    except (TypeError, ValueError):  # no longer valid: a different benchmark
        return False


def _is_comparison(path: Path) -> bool:
    """Whether ``path`` holds a `bon compare` directory (its manifest has a benchmarks section)."""
    try:
        return "benchmarks" in read_manifest(path / MANIFEST)
    except BonError:
        return False


def open_run(cfg: CompareConfig) -> RunDir:
    """Create or reopen the run directory (the caller holds its lock); stored labels and benchmarks keep meaning."""

    def refusal(what: str) -> Callable[[str, Any, Any], str]:
        return lambda key, before, now: (
            f"{what} {key!r} was run as {before} and is now {now}; its stored judgements would be mixed with new ones: "
            "give it another name or use another output_dir"
        )

    judges = {j.key: judge_spec(j.name, j.options) for j in cfg.judges}  # every label ever run here
    benchmarks = {b.name: b.model_dump(mode="json") for b in cfg.benchmarks}
    return RunDir.open_named(
        cfg.output_dir,
        cfg.model_dump(mode="json"),
        {
            "judges": (judges, same_judge, refusal("judge")),
            "benchmarks": (benchmarks, _same_benchmark, refusal("benchmark")),
        },
    )


def store_name(bench: str, label: str, pairwise_judge: bool) -> Path:
    """Where one judge's records on one benchmark live, relative to the comparison's directory."""
    return Path("comparisons" if pairwise_judge else "judgements") / bench / f"{label}.jsonl"


@dataclass(frozen=True)
class Store:
    """One judge's records on one benchmark in the comparison's run directory."""

    rd: RunDir
    name: Path

    def read(self, cls: type) -> list:
        return self.rd.read_at(self.name, cls)  # a torn last line is ignored here and cut by the next append

    def append(self, records: list) -> None:
        self.rd.append_at(self.name, records)


def _stored(store: Store | None, cls: type) -> list:
    return [] if store is None else store.read(cls)  # None: an in-memory evaluation (bon eval pairwise)


def _append(store: Store | None, records: list) -> None:
    if store is not None:
        store.append(records)


def score_benchmark(
    executor,
    bench: Benchmark,
    prompts: Sequence[Prompt],
    path: Store | None,
    label: str,
    batch_size: int,
    advance: Callable[[int], None],
) -> list[Judgement]:
    """Every candidate of ``prompts`` judged once; judgements already in ``path`` are kept, not redone."""
    have = _stored(path, Judgement)
    judged = by_key(have)
    todo = [p for p in prompts if needs_judging(bench.candidates[p.id], judged)]
    advance(len(prompts) - len(todo))

    def write(batch: Sequence[Prompt], fresh: list[Judgement]) -> None:
        _append(path, fresh)
        have.extend(fresh)
        advance(len(batch))

    if todo:  # touching the executor would start it
        batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
        score_missing(executor, batches, lambda p: bench.candidates[p.id], judged, label, write)
    return have


def compare_benchmark(
    executor,
    bench: Benchmark,
    prompts: Sequence[Prompt],
    path: Store | None,
    label: str,
    batch_size: int,
    advance: Callable[[int], None],
) -> list[Comparison]:
    """A pairwise judge on each pair in both orders (response 1 first, then response 2 first)."""
    have = _stored(path, Comparison)
    done = {(c.prompt_id, c.first) for c in have}
    todo = [p for p in prompts if (p.id, 0) not in done or (p.id, 1) not in done]
    advance(len(prompts) - len(todo))
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]

    def items(batch: Sequence[Prompt]) -> list[tuple[str, str, str]]:
        out = []
        for p in batch:
            r1, r2 = (c.text for c in bench.candidates[p.id])
            out += [(p.instruction, r1, r2), (p.instruction, r2, r1)]
        return out

    def collect(k: int, verdicts: list) -> None:
        new = []
        for i, p in enumerate(batches[k]):
            for first, v in zip((0, 1), verdicts[2 * i : 2 * i + 2]):
                if (p.id, first) not in done:
                    new.append(Comparison(p.id, first, 1 - first, label, v.winner, v.flag, v.raw))
        _append(path, new)
        have.extend(new)
        advance(len(batches[k]))

    flight = InFlight(collect)
    for k, batch in enumerate(batches):
        flight.submit(k, executor.compare(items(batch)))
        flight.collect(keep=max(1, executor.judge_window))
    flight.collect()
    return have


def judge_executor(cfg: CompareConfig, entry: CompareJudge, judge, note: Callable[[str], None]):
    """The same executors as reranking (in-process, or Ray judge actors with no policy actors)."""
    run_cfg = RunConfig(
        engine=cfg.engine,
        ray=cfg.ray.model_copy(update={"policy_replicas": 0}),  # comparing needs judge actors only
        judge=JudgeConfig(name=entry.name, options=entry.options),
    )
    return make_executor(run_cfg, judge, None, note)


class _OnDemand:
    """Enters an executor at its first use, so a judge with nothing left to do loads no model and starts no actor."""

    def __init__(self, make: Callable[[], Any], stack: contextlib.ExitStack):
        self._make, self._stack, self._executor = make, stack, None

    def __getattr__(self, name: str) -> Any:
        if self._executor is None:
            self._executor = self._stack.enter_context(self._make())
        return getattr(self._executor, name)


@dataclass(frozen=True)
class BenchmarkReport:
    name: str
    kind: str
    source: str
    prompts: int
    results: list[PairwiseResult | PoolResult | ScoresResult | LeaderboardResult]  # one per judge, in config order
    agreement: AgreementMatrix
    skipped: dict[str, str]  # judge label -> why it has no row here
    board: dict[str, dict[str, float | None]] = field(default_factory=dict)  # leaderboard: model -> column -> value
    notes: list[str] = field(default_factory=list)  # e.g. which pool files lacked instructions


@dataclass(frozen=True)
class CompareResult:
    output_dir: Path
    benchmarks: list[BenchmarkReport]
    judges: dict[str, str]  # label -> what is scoring (describe())
    seconds: dict[str, float]  # label -> judging seconds in this invocation
    wall_s: float


def evaluate(
    bench: Benchmark,
    subset: Sequence[Prompt],
    label: str,
    records: list,
    reps: int = 1000,
    seed: int = 0,
    folds: int = 2,
):
    """The kind's numbers for one judge's stored records (judgements, or comparisons of a pairwise judge)."""
    return KINDS.get(bench.kind).evaluate(bench, subset, label, records, reps, seed, folds)


def run_compare(cfg: CompareConfig, progress=None, note: Callable[[str], None] = print) -> CompareResult:
    """Judge every benchmark with every judge (only what the run directory lacks), then score them."""
    start = time.perf_counter()
    benches = {b.name: load_benchmark(b) for b in cfg.benchmarks}  # bad data fails before anything is written
    check_folds(cfg, benches)
    check_workdir(cfg.output_dir, "comparison directory", _is_comparison)
    with RunDir(cfg.output_dir).locked():  # one process per comparison directory
        rd = open_run(cfg)
        stored: dict[str, dict[str, tuple[list[Prompt], list]]] = {name: {} for name in benches}
        skipped: dict[str, dict[str, str]] = {name: {} for name in benches}
        described: dict[str, str] = {}
        seconds: dict[str, float] = {}
        for entry in cfg.judges:
            t0 = time.perf_counter()
            with ENGINES.scope():  # this judge's models are released before the next judge loads its own
                described[entry.key] = _judge_entry(cfg, entry, benches, rd, stored, skipped, progress, note)
            seconds[entry.key] = time.perf_counter() - t0
        reports = []
        for name, bench in benches.items():
            results, scores = [], {}
            for label, (subset, records) in stored[name].items():
                results.append(evaluate(bench, subset, label, records, cfg.bootstrap, cfg.seed, cfg.folds))
                scores[label] = candidate_scores(records)
            reports.append(
                BenchmarkReport(
                    name,
                    bench.kind,
                    bench.source,
                    len(bench.prompts),
                    results,
                    judge_agreement(bench, scores),
                    skipped[name],
                    bench.board,
                    [note for note in [bench.pool.note() if bench.pool is not None else None] if note],
                )
            )
        return CompareResult(rd.path, reports, described, seconds, time.perf_counter() - start)


def _judge_entry(
    cfg: CompareConfig,
    entry: CompareJudge,
    benches: dict[str, Benchmark],
    rd: RunDir,
    stored: dict[str, dict[str, tuple[list[Prompt], list]]],
    skipped: dict[str, dict[str, str]],
    progress: Any,
    note: Callable[[str], None],
) -> str:
    """One judge over every benchmark it is asked for: its records in ``stored`` (or why not, in ``skipped``);
    what is scoring, in words. The judge (and so its model) is unreferenced when this returns."""
    label, judge = entry.key, build_judge(entry.name, entry.options)
    with contextlib.ExitStack() as stack:
        executor = _OnDemand(partial(judge_executor, cfg, entry, judge, note), stack)
        for name, bench in benches.items():
            if entry.benchmarks is not None and name not in entry.benchmarks:
                continue
            if judge.needs_reference and not bench.has_references:
                skipped[name][label] = "needs a reference answer and this benchmark has none"
                continue
            subset = bench.subset(entry.limit(name))
            stage = f"{label} · {name}"
            if progress is not None:
                progress.start(stage, len(subset), 0)
            advance = (lambda k, s=stage: progress.advance(s, k)) if progress is not None else (lambda k: None)
            path = Store(rd, store_name(name, label, asks_pairs(judge, bench)))
            stored[name][label] = (
                subset,
                judge_benchmark(executor, judge, bench, subset, path, label, cfg.batch_size, advance),
            )
    return judge.describe()


def check_folds(cfg: CompareConfig, benches: dict[str, Benchmark]) -> None:
    """Each held-out fold needs a pair of its own: `folds` beyond the pairs a judge scores is refused."""
    for entry in cfg.judges:
        for name, bench in benches.items():
            if bench.kind != "pairwise" or (entry.benchmarks is not None and name not in entry.benchmarks):
                continue
            pairs = len(bench.subset(entry.limit(name)))
            if cfg.folds > pairs:
                raise SizeError(
                    f"folds {cfg.folds:,} is more held-out folds than the {pairs} pairs judge {entry.key!r} scores on "
                    f"benchmark {name!r}; at most {pairs}"
                )


def asks_pairs(judge: Judge, bench: Benchmark) -> bool:
    """A pairwise judge on pairwise data is asked both orders of each pair, not one score per response."""
    return bench.kind == "pairwise" and isinstance(judge, Compares)


def judge_benchmark(
    executor,
    judge,
    bench: Benchmark,
    subset: Sequence[Prompt],
    path: Store | None,
    label: str,
    batch_size: int,
    advance,
) -> list:
    """Comparisons when a pairwise judge meets a pairwise benchmark, else one judgement per candidate."""
    if asks_pairs(judge, bench):
        return compare_benchmark(executor, bench, subset, path, label, batch_size, advance)
    return score_benchmark(executor, bench, subset, path, label, batch_size, advance)


def evaluate_pairwise_file(
    path: Path | str,
    name: str,
    options: dict | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    progress=None,
) -> PairwiseResult:
    """`bon eval pairwise`: one judge on one Auto-J format file, in this process, nothing written."""
    bench = load_pairwise(path)
    judge = build_judge(name, options)
    subset = bench.subset(limit)
    advance = lambda k: None  # noqa: E731
    if progress is not None:
        progress.start("pairs", len(subset), 0)
        advance = lambda k: progress.advance("pairs", k)  # noqa: E731
    records = judge_benchmark(LocalExecutor(judge), judge, bench, subset, None, name, batch_size, advance)
    return evaluate(bench, subset, name, records)
