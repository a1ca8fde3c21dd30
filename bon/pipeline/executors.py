"""Executors run the pipeline's two stages (sample, judge); the pipeline never knows where.

`LocalExecutor` runs them in this process, one after the other. `bon.pipeline.ray_executor.RayExecutor`
runs them in Ray actors, several batches in flight. Both hand back objects with ``.result()``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

from bon.core.config import RunConfig
from bon.core.errors import BonError
from bon.core.judging import Judge, PairwiseJudge
from bon.core.records import Candidate, Prompt
from bon.core.registry import Registry
from bon.pipeline.early_rejection import EarlyRejectionPolicy
from bon.pipeline.policy import EnginePolicy, Policy


class ExecutorError(BonError, RuntimeError):
    """An executor cannot run: resources, start-up, or workers lost for good."""


class Pending(Protocol):
    def result(self) -> Any: ...


class Executor(Protocol):
    window: int  # batches whose sampling may be in flight (the one being collected included)
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


class LocalExecutor:
    """Runs each stage in this process when it is submitted; the policy loads on first use."""

    window = 1
    judge_window = 1

    def __init__(self, judge: Judge, policy: Policy | None = None, make_policy: Callable[[], Policy] | None = None):
        self.judge = judge
        self._policy = policy
        self._make_policy = make_policy
        self.seconds: dict[str, float] = defaultdict(float)

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _timed(self, stage: str, fn: Callable[[], Any]) -> Done:
        t0 = time.perf_counter()
        value = fn()
        self.seconds[stage] += time.perf_counter() - t0
        return Done(value)

    def sample(self, prompts: Sequence[Prompt], n: int, seed: int) -> Done:
        if self._policy is None:
            if self._make_policy is None:
                raise RuntimeError("LocalExecutor needs a policy or a way to make one")
            self._policy = self._make_policy()
        policy = self._policy
        return self._timed("sample", lambda: policy.generate(prompts, n, seed))

    def score(self, prompts: Sequence[Prompt], candidates: Sequence[Candidate]) -> Done:
        return self._timed("judge", lambda: self.judge.score(prompts, candidates))

    def compare(self, items: Sequence[tuple[str, str, str]]) -> Done:
        judge = cast(PairwiseJudge, self.judge)  # callers ask only judges that compare (eval.compare.asks_pairs)
        return self._timed("judge", lambda: judge.compare(items))

    def status(self) -> str:
        return ""

    def stage_seconds(self) -> dict[str, float]:
        return dict(self.seconds)


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

    return LocalExecutor(judge, policy, make_policy=make_policy)


def make_executor(
    config: RunConfig, judge: Judge, policy: Policy | None = None, note: Callable[[str], None] = print
) -> Executor:
    return EXECUTORS.get(config.engine)(config, judge, policy, note)
