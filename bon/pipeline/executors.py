"""Executors run the pipeline's two stages (sample, judge); the pipeline never knows where.

`LocalExecutor` runs them in this process, one after the other. `bon.pipeline.ray_executor.RayExecutor`
runs them in Ray actors, several batches in flight. Both hand back objects with ``.result()``.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeGuard, cast

from bon.core.config import RunConfig
from bon.core.errors import BonError
from bon.core.judging import Judge, PairwiseJudge
from bon.core.records import Candidate, Prompt
from bon.core.registry import Registry
from bon.engines.memory import CPU_ROWS
from bon.pipeline.early_rejection import EarlyRejectionPolicy
from bon.pipeline.policy import Closes, EnginePolicy, Policy, StreamingPolicy


class ExecutorError(BonError, RuntimeError):
    """An executor cannot run: resources, start-up, or workers lost for good."""


class Pending(Protocol):
    def result(self) -> Any: ...


class Executor(Protocol):
    @property
    def window(self) -> int:
        """Batches whose sampling may be in flight (the one being collected included)."""
        ...

    judge_window: int  # batches whose judging may be in flight before the oldest is finished

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...

    def sample(self, prompts: Sequence[Prompt], n: int, seed: int) -> Pending:
        """Candidates for ``prompts`` (a `list[Candidate]` once resolved)."""

    def score(self, prompts: Sequence[Prompt], candidates: Sequence[Candidate]) -> Pending:
        """Judgements of ``candidates`` (a `list[Judgement]` once resolved)."""

    def compare(self, items: Sequence[tuple[str, str, str]]) -> Pending:
        """Pairwise verdicts for (instruction, shown first, shown second) triples (a pairwise judge's)."""

    def status(self) -> str:
        """A short line on work in flight (queue depths), for progress displays."""

    def stage_seconds(self) -> dict[str, float]:
        """Compute seconds spent per stage ("sample", "judge") so far."""


class Done:
    """An already computed result."""

    def __init__(self, value: Any):
        self.value = value

    def result(self) -> Any:
        return self.value


class _Sampling:
    """A batch submitted for sampling; its candidates are made when asked for (`LocalExecutor._collect`)."""

    def __init__(self, executor: LocalExecutor, prompts: Sequence[Prompt], n: int, seed: int):
        self.executor, self.prompts, self.n, self.seed = executor, prompts, n, seed
        self.started: Any = None  # the policy's handle once the batch joined its decode loop
        self.value: list[Candidate] | None = None

    def result(self) -> list[Candidate]:
        return self.executor._collect(self)


class LocalExecutor:
    """Runs each stage in this process; the policy loads on first use.

    Judging runs when submitted. Sampling runs when its result is asked for: a policy that decodes
    continuously (`EnginePolicy.streams`) then takes every batch submitted so far into its decode
    loop, so rows of later batches fill the rows earlier ones free; ``window`` keeps enough batches
    submitted to fill twice its rows. Any other policy samples one batch at a time.
    """

    judge_window = 1

    def __init__(
        self,
        judge: Judge,
        policy: Policy | None = None,
        make_policy: Callable[[], Policy] | None = None,
        batch_rows: int = 0,
        rows_hint: int = 1,
    ):
        self.judge = judge
        self._policy = policy
        self._make_policy = make_policy
        self.batch_rows, self.rows_hint = batch_rows, rows_hint  # rows per pipeline batch; decode rows expected
        self._submitted: list[_Sampling] = []
        self.seconds: dict[str, float] = defaultdict(float)

    @property
    def window(self) -> int:
        """Batches whose sampling may be submitted ahead of the one being collected (itself included)."""
        if not self.batch_rows:
            return 1
        if self._policy is None:  # not loaded yet: the configured or default rows
            return 1 + math.ceil(2 * self.rows_hint / self.batch_rows)
        if not _streams(self._policy):
            return 1
        return 1 + math.ceil(2 * self._policy.rows() / self.batch_rows)

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        if isinstance(self._policy, Closes):  # a run that stopped early leaves no request decoding for nobody
            self._policy.close()

    def _timed(self, stage: str, fn: Callable[[], Any]) -> Done:
        t0 = time.perf_counter()
        value = fn()
        self.seconds[stage] += time.perf_counter() - t0
        return Done(value)

    def sample(self, prompts: Sequence[Prompt], n: int, seed: int) -> _Sampling:
        job = _Sampling(self, prompts, n, seed)
        self._submitted.append(job)
        return job

    def _collect(self, job: _Sampling) -> list[Candidate]:
        if job.value is not None:
            return job.value
        if self._policy is None:
            if self._make_policy is None:
                raise RuntimeError("LocalExecutor needs a policy or a way to make one")
            self._policy = self._make_policy()
        policy = self._policy
        t0 = time.perf_counter()
        if _streams(policy):
            for other in self._submitted:  # every batch submitted so far joins the decode loop, in order
                if other.started is None:
                    other.started = policy.start(other.prompts, other.n, other.seed)
            job.value = policy.finish(job.started)
        else:
            job.value = policy.generate(job.prompts, job.n, job.seed)
        self._submitted.remove(job)
        self.seconds["sample"] += time.perf_counter() - t0
        return job.value

    def score(self, prompts: Sequence[Prompt], candidates: Sequence[Candidate]) -> Done:
        return self._timed("judge", lambda: self.judge.score(prompts, candidates))

    def compare(self, items: Sequence[tuple[str, str, str]]) -> Done:
        judge = cast(PairwiseJudge, self.judge)  # callers ask only judges that compare (eval.compare.asks_pairs)
        return self._timed("judge", lambda: judge.compare(items))

    def status(self) -> str:
        return ""

    def stage_seconds(self) -> dict[str, float]:
        return dict(self.seconds)


def _streams(policy: Policy | None) -> TypeGuard[StreamingPolicy]:
    return isinstance(policy, StreamingPolicy) and policy.streams()


# engine name -> executor factory "module:function(config, judge, policy, note) -> Executor"
EXECUTORS: Registry = Registry(
    "engine",
    {"local": "bon.pipeline.executors:local_executor", "ray": "bon.pipeline.ray_executor:ray_executor"},
)


def local_executor(
    config: RunConfig, judge: Judge, policy: Policy | None, note: Callable[[str], None] = print
) -> LocalExecutor:
    def make_policy() -> Policy:
        if config.early_rejection is None:
            return EnginePolicy(config.policy)
        return EarlyRejectionPolicy(EnginePolicy(config.policy), judge, config.early_rejection)

    rows = config.policy.max_rows or CPU_ROWS  # until the policy says how many rows it decodes
    return LocalExecutor(
        judge, policy, make_policy=make_policy, batch_rows=config.batch_size * config.n, rows_hint=rows
    )


def make_executor(
    config: RunConfig, judge: Judge, policy: Policy | None = None, note: Callable[[str], None] = print
) -> Executor:
    return EXECUTORS.get(config.engine)(config, judge, policy, note)
