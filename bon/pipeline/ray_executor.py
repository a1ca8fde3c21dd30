"""The Ray executor: policy and judge actors, pipelined; the only module that imports ray.

The driver (bon.pipeline.runner) submits sampling for several batches ahead and judging as soon as a
batch is sampled, so the judge scores batch k while the policy samples batch k+1. A call whose
actor dies is resubmitted (the actor restarts, up to ``ray.max_restarts``), and because every
prompt's samples depend only on its seed, the redone batch equals the lost one.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, OutOfMemoryError, RayActorError

from bon.core.config import RayConfig, RunConfig
from bon.core.judging import Judge, PairwiseJudge
from bon.core.records import Candidate, Judgement, Prompt
from bon.pipeline.executors import ExecutorError
from bon.pipeline.policy import Policy, StreamingPolicy

# ---------------------------------------------------------------- actors (run in worker processes)


def _use_threads(n: float, backend: str) -> None:
    # Ray pins OMP_NUM_THREADS=1 in workers; give torch the CPUs the actor reserved.
    if backend == "transformers" and n >= 1:
        from bon.engines.hf import set_torch_threads

        set_torch_threads(int(n))


class ActorScorer:
    """Early rejection's partial answers scored by the run's judge actors, in turn: the judge stage's own replicas
    (with their model loaded once), called from a policy actor between chunks."""

    def __init__(self, actors: Sequence[Any]):
        self.actors, self.turn = list(actors), 0

    def score(self, prompts: Sequence[Prompt], candidates: Sequence[Candidate]) -> list[Judgement]:
        actor = self.actors[self.turn % len(self.actors)]
        self.turn += 1
        judged, _ = ray.get(actor.score.remote(list(prompts), list(candidates)))
        return judged


class PolicyWorker:
    """Hosts one `EnginePolicy` (its model stays loaded between batches) and its continuous decode loop.

    `start` queues a batch in the loop and returns at once; `finish` decodes until that batch is done,
    batches started before it was asked for decoding alongside (the executor starts several ahead). With early
    rejection the loop pauses after every chunk and the judge actors score the partial answers (`ActorScorer`).
    """

    def __init__(
        self, policy_cfg: dict[str, Any], threads: float, early: dict[str, Any] | None = None, judges: Sequence = ()
    ):
        from bon.core.config import EarlyRejectionConfig, PolicyConfig
        from bon.pipeline.early_rejection import EarlyRejectionPolicy
        from bon.pipeline.policy import EnginePolicy

        cfg = PolicyConfig.model_validate(policy_cfg)
        _use_threads(threads, cfg.backend)
        engine = EnginePolicy(cfg)
        self.policy: StreamingPolicy = engine
        if early is not None:
            rules = EarlyRejectionConfig.model_validate(early)
            self.policy = EarlyRejectionPolicy(engine, ActorScorer(judges), rules)
        self.started: dict[str, Any] = {}

    def ready(self) -> int:
        return os.getpid()

    def rows(self) -> int:
        """Sequences its loop decodes at once (0: it samples one batch at a time)."""
        return self.policy.rows() if self.policy.streams() else 0

    def start(self, token: str, prompts: Sequence[Prompt], n: int, seed: int) -> None:
        if self.policy.streams():
            self.started[token] = self.policy.start(prompts, n, seed)

    def finish(self, token: str, prompts: Sequence[Prompt], n: int, seed: int) -> tuple[list[Candidate], float]:
        """The batch's candidates; started here if this actor never saw its `start` (it restarted since)."""
        t0 = time.perf_counter()
        if not self.policy.streams():
            return self.policy.generate(prompts, n, seed), time.perf_counter() - t0
        started = self.started.pop(token, None) or self.policy.start(prompts, n, seed)
        return self.policy.finish(started), time.perf_counter() - t0


class JudgeWorker:
    """Hosts one judge from the registry."""

    def __init__(self, name: str, options: dict[str, Any], threads: float):
        from bon.core.judging import build_judge

        self.judge = build_judge(name, options)
        _use_threads(threads, options.get("backend", "transformers"))
        getattr(self.judge, "engine", None)  # model judges load lazily: load now, during start-up

    def ready(self) -> int:
        return os.getpid()

    def score(self, prompts: Sequence[Prompt], candidates: Sequence[Candidate]) -> tuple[list, float]:
        t0 = time.perf_counter()
        out = self.judge.score(prompts, candidates)
        return out, time.perf_counter() - t0

    def compare(self, items: Sequence[tuple[str, str, str]]) -> tuple[list, float]:
        t0 = time.perf_counter()
        out = cast(PairwiseJudge, self.judge).compare(items)  # asked only of judges that compare
        return out, time.perf_counter() - t0


# ---------------------------------------------------------------- planning (pure, testable without ray)


@dataclass(frozen=True)
class ActorPlan:
    role: str  # "policy" or "judge"
    replicas: int
    num_cpus: float
    num_gpus: float  # on the actor itself
    memory: float | None  # bytes
    bundles: list[dict[str, float]] | None  # a placement group per replica (tensor parallel vLLM)


def plan(config: RunConfig) -> list[ActorPlan]:
    """What each pool of actors asks of the cluster."""
    r = config.ray
    tp = int(config.policy.engine_args.get("tensor_parallel_size", 1)) if config.policy.backend == "vllm" else 1
    gb = lambda x: None if x is None else x * 1024**3  # noqa: E731
    policy_bundles = [{"GPU": 1.0, "CPU": 1.0}] * tp if tp > 1 else None
    return [
        ActorPlan(
            "policy",
            r.policy_replicas,
            r.policy.num_cpus,
            0.0 if policy_bundles else r.policy.num_gpus,
            gb(r.policy.memory_gb),
            policy_bundles,
        ),
        ActorPlan("judge", r.judge_replicas, r.judge.num_cpus, r.judge.num_gpus, gb(r.judge.memory_gb), None),
    ]


def asked_resources(plans: Sequence[ActorPlan]) -> dict[str, float]:
    asked: dict[str, float] = defaultdict(float)
    for p in plans:
        asked["CPU"] += p.replicas * p.num_cpus
        asked["GPU"] += p.replicas * p.num_gpus
        for bundle in p.bundles or []:
            for key, value in bundle.items():
                asked[key] += p.replicas * value
        if p.memory:
            asked["memory"] += p.replicas * p.memory
    return {k: v for k, v in asked.items() if v}


def _fmt(resources: dict[str, float]) -> str:
    keys = [k for k in ("CPU", "GPU", "memory") if k in resources]
    show = lambda k, v: f"{v / 1024**3:.1f} GiB memory" if k == "memory" else f"{v:g} {k}"  # noqa: E731
    return ", ".join(show(k, resources[k]) for k in keys) or "nothing"


def check_fits(asked: dict[str, float], have: dict[str, float]) -> None:
    short = [k for k, v in asked.items() if v > have.get(k, 0.0) + 1e-9]
    if short:
        raise ExecutorError(
            f"the run asks Ray for {_fmt(asked)} but the cluster has {_fmt(have)} "
            f"(short of {', '.join(short)}); lower ray.policy_replicas / ray.judge_replicas or the "
            "per-actor num_cpus / num_gpus, or add nodes (docs/tasks/ray.md: on a cluster)"
        )


_OOM_MARKERS = ("out of memory", "low on memory", "memory monitor", "oom")


def death_reason(role: str, replica: int, error: BaseException) -> str:
    """A plain sentence for an actor's death; out-of-memory kills say so."""
    text = str(error)
    if isinstance(error, OutOfMemoryError) or any(m in text.lower() for m in _OOM_MARKERS):
        return (
            f"{role} actor {replica} was killed for running out of memory; lower batch_size, "
            f"max_tokens or ray.{role}_replicas, or give it ray.{role}.memory_gb on a larger node"
        )
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return f"{role} actor {replica} died ({first[:200]})"


# ---------------------------------------------------------------- the executor


class _Pool:
    """Replicas of one actor class; calls go to the least loaded live replica."""

    def __init__(
        self, role: str, actors: list[Any], pids: list[int], startup_timeout: float, note: Callable[[str], None]
    ):
        self.role, self.actors, self.pids, self.note = role, actors, list(pids), note
        self.startup_timeout = startup_timeout
        self.inflight = [0] * len(actors)
        self.restarts = 0
        self.dead: set[int] = set()
        self.seconds = 0.0

    def alive(self) -> list[int]:
        return [i for i in range(len(self.actors)) if i not in self.dead]

    def submit(self, method: str, *args: Any, then: str | None = None) -> RayPending:
        return RayPending(self, method, args, then)

    def _wait_ready(self, replica: int) -> int | None:
        """The replica's pid once it answers again, or None if Ray gave it up (or it never came back)."""
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            try:
                return ray.get(self.actors[replica].ready.remote(), timeout=max(0.1, deadline - time.monotonic()))
            except ActorUnavailableError:  # restarting: ask again shortly
                time.sleep(0.5)
            except (RayActorError, GetTimeoutError):
                return None
        return None

    def recover(self, replica: int, error: BaseException) -> None:
        """After a failed call, wait for the replica to come back (Ray restarts it) or retire it.

        One death fails every call queued on the actor; the pid tells a new death from those.
        """
        reason = death_reason(self.role, replica, error)
        pid = self._wait_ready(replica)
        if pid is None:
            self.dead.add(replica)
            if not self.alive():
                raise ExecutorError(
                    f"{reason}; no {self.role} actor is left (each restarts ray.max_restarts times)"
                ) from None
            self.note(f"{reason}; it is not coming back, its work moves to the other replicas")
            return
        if pid != self.pids[replica]:
            self.pids[replica] = pid
            self.restarts += 1
            self.note(f"{reason}; restarted, its batches are requeued")


class RayPending:
    """A submitted call; `result()` resubmits it when its actor dies on the way.

    With ``then``, the call is the first half of a pair on one replica, both called with a token and
    the same arguments: `result()` sends ``then`` to the replica that got the first (sampling: `start`
    now, `finish` when asked), so the batches started meanwhile decode beside it. After a death the
    pair is sent again; a restarted actor that never saw the `start` does it in `finish`.
    """

    def __init__(self, pool: _Pool, method: str, args: tuple, then: str | None = None):
        self.pool, self.method, self.then = pool, method, then
        self.args = (uuid.uuid4().hex, *args) if then else args
        self._submit()

    def _submit(self) -> None:
        alive = self.pool.alive()
        self.replica = min(alive, key=lambda i: self.pool.inflight[i])
        self.pool.inflight[self.replica] += 1
        self.ref = getattr(self.pool.actors[self.replica], self.method).remote(*self.args)

    def result(self) -> Any:
        while True:
            try:
                ref = self.ref
                if self.then is not None:  # the actor runs calls in order: every earlier start is in its loop
                    ref = getattr(self.pool.actors[self.replica], self.then).remote(*self.args)
                value, seconds = ray.get(ref)
            except (RayActorError, OutOfMemoryError) as e:
                self.pool.inflight[self.replica] -= 1
                self.pool.recover(self.replica, e)
                self._submit()
                continue
            self.pool.inflight[self.replica] -= 1
            self.pool.seconds += seconds
            return value


class RayExecutor:
    """Policy and judge replicas as Ray actors; joins a cluster or starts a local instance."""

    def __init__(self, config: RunConfig, note: Callable[[str], None] = lambda m: None):
        self.config = config
        self.cfg: RayConfig = config.ray
        self.note = note
        self.window = self.cfg.policy_replicas + self.cfg.queue_size  # until the actors say how many rows they decode
        self.judge_window = self.cfg.judge_replicas
        self._owns_ray = False
        self._actors: list[Any] = []
        self._groups: list[Any] = []
        self.pids: dict[str, list[int]] = {}
        self.run_tag = uuid.uuid4().hex[:6]
        self._depth = 0

    # -- lifecycle
    def __enter__(self) -> RayExecutor:
        self._depth += 1  # re-entrant: a caller may start it first to reach the actors
        if self._depth == 1:
            self._connect()
            try:
                self._start_actors()
            except BaseException:
                self.__exit__()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth > 0:
            return
        for actor in self._actors:
            ray.kill(actor, no_restart=True)  # actors hold their resources until killed
        from ray.util.placement_group import remove_placement_group

        for group in self._groups:
            remove_placement_group(group)
        self._actors, self._groups = [], []
        if self._owns_ray:
            ray.shutdown()

    def _connect(self) -> None:
        if ray.is_initialized():
            return
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        address = self.cfg.address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=True)
        else:  # a short temp dir: Ray's Unix sockets must fit in 107 characters
            ray.init(num_cpus=self.cfg.num_cpus, include_dashboard=False, _temp_dir="/tmp/bon-ray")
        self._owns_ray = True

    def _start_actors(self) -> None:
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        plans = plan(self.config)
        asked = asked_resources(plans)
        check_fits(asked, ray.cluster_resources())
        policy_cfg = self.config.policy.model_dump(mode="json")
        pools: dict[str, list[Any]] = {"policy": [], "judge": []}
        for p in sorted(plans, key=lambda p: p.role != "judge"):  # judges first: an early-rejecting policy calls them
            for i in range(p.replicas):
                options: dict[str, Any] = {
                    "name": f"bon-{p.role}-{i}-{self.run_tag}",  # readable in the dashboard, unique per run
                    "num_cpus": p.num_cpus,
                    "num_gpus": p.num_gpus,
                    "max_restarts": self.cfg.max_restarts,
                    "max_task_retries": 0,  # the executor resubmits lost calls itself
                    "get_if_exists": False,
                }
                if p.memory:
                    options["memory"] = p.memory
                if p.bundles:
                    group = placement_group(p.bundles, strategy="STRICT_PACK", name=f"bon-{p.role}-{i}-{self.run_tag}")
                    self._groups.append(group)
                    options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                        placement_group=group, placement_group_capture_child_tasks=True
                    )
                if p.role == "policy":
                    cfg = dict(policy_cfg)
                    if p.bundles:  # vLLM spreads its tensor-parallel workers over the group with Ray
                        cfg["engine_args"] = {"distributed_executor_backend": "ray", **cfg["engine_args"]}
                    early = self.config.early_rejection
                    rules = early.model_dump(mode="json") if early is not None else None
                    actor = ray.remote(PolicyWorker).options(**options).remote(cfg, p.num_cpus, rules, pools["judge"])
                else:
                    actor = (
                        ray.remote(JudgeWorker)
                        .options(**options)
                        .remote(self.config.judge.name, self.config.judge.options, p.num_cpus)
                    )
                pools[p.role].append(actor)
                self._actors.append(actor)
        ready = {actor.ready.remote(): (role, i) for role, actors in pools.items() for i, actor in enumerate(actors)}
        done, waiting = ray.wait(list(ready), num_returns=len(ready), timeout=self.cfg.startup_timeout_s)
        if waiting:
            raise ExecutorError(
                f"{len(waiting)} of {len(ready)} actors did not start within {self.cfg.startup_timeout_s:g} s; "
                f"the run asks for {_fmt(asked)}, the cluster has {_fmt(ray.cluster_resources())} "
                f"of which {_fmt(ray.available_resources())} is free"
            )
        pids: dict[str, list[int]] = {role: [0] * len(actors) for role, actors in pools.items()}
        for ref, (role, i) in ready.items():
            try:
                pids[role][i] = ray.get(ref)
            except RayActorError as e:
                raise ExecutorError(f"{role} actor {i} failed to start: {_root_cause(e)}") from None
        timeout = self.cfg.startup_timeout_s
        self.policies = _Pool("policy", pools["policy"], pids["policy"], timeout, self.note)
        self.judges = _Pool("judge", pools["judge"], pids["judge"], timeout, self.note)
        self.pids = {"policy": self.policies.pids, "judge": self.judges.pids}
        rows = ray.get(pools["policy"][0].rows.remote()) if pools["policy"] else 0
        ahead = math.ceil(2 * rows / (self.config.batch_size * self.config.n)) if rows else 0
        self.window = self.cfg.policy_replicas * (1 + ahead) + self.cfg.queue_size  # enough to keep each loop full

    # -- the Executor protocol
    def sample(self, prompts: Sequence[Prompt], n: int, seed: int) -> RayPending:
        return self.policies.submit("start", list(prompts), n, seed, then="finish")

    def score(self, prompts: Sequence[Prompt], candidates: Sequence[Candidate]) -> RayPending:
        return self.judges.submit("score", list(prompts), list(candidates))

    def compare(self, items: Sequence[tuple[str, str, str]]) -> RayPending:
        return self.judges.submit("compare", list(items))

    def status(self) -> str:
        restarts = self.policies.restarts + self.judges.restarts
        line = f"in flight: sampling {sum(self.policies.inflight)}, judging {sum(self.judges.inflight)}"
        return line + (f", restarts {restarts}" if restarts else "")

    def stage_seconds(self) -> dict[str, float]:
        return {"sample": self.policies.seconds, "judge": self.judges.seconds}


def _root_cause(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    errors = [line for line in lines if "Error:" in line]
    return (errors[-1] if errors else lines[-1] if lines else type(error).__name__)[:300]


def ray_executor(
    config: RunConfig, judge: Judge, policy: Policy | None, note: Callable[[str], None] = lambda m: None
) -> RayExecutor:
    """Factory for `bon.pipeline.executors.make_executor`; the actors build their own policy and judge."""
    if policy is not None:
        raise ExecutorError("engine: ray builds its policy inside actors; an in-process policy cannot be used")
    return RayExecutor(config, note)
