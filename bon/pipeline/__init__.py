"""Best-of-N orchestration: policy, judging what is missing, selection, executors, preflight, rejudging."""

from bon.pipeline.runner import RunResult, run

__all__ = ["RunResult", "run"]
