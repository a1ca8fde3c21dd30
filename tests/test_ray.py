"""The Ray executor: same files as the local engine, surviving killed actors, clear resource errors."""

import json
import os
import signal
import sys
import time

import pytest

ray = pytest.importorskip("ray")

from bon.core.config import load_config  # noqa: E402
from bon.pipeline.executors import ExecutorError  # noqa: E402
from bon.pipeline.ray_executor import RayExecutor, asked_resources, check_fits, death_reason, plan  # noqa: E402
from bon.pipeline.runner import run  # noqa: E402
from tests.conftest import two_turn_source  # noqa: E402
from tests.helpers import outside_package  # noqa: E402

SMALL = ["n=2", "prompts.limit=4", "policy.max_tokens=16", "batch_size=1"]
COMPARED = ("candidates.jsonl", "judgements.jsonl", "selections.jsonl", "model_outputs.json")


@pytest.fixture(scope="module")
def outside_on_path(tmp_path_factory):
    """A package of judges outside bon (tests/helpers.py) on this process's path and, through PYTHONPATH when Ray
    starts, on its workers': as a user's installed package is on both."""
    folder = outside_package(tmp_path_factory.mktemp("outside") / "pkg")
    before = os.environ.get("PYTHONPATH")
    sys.path.insert(0, str(folder))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(folder), *([before] if before else [])])
    yield folder
    sys.path.remove(str(folder))
    os.environ.pop("PYTHONPATH") if before is None else os.environ.update(PYTHONPATH=before)


@pytest.fixture(scope="module")
def ray_session(outside_on_path):
    """One local Ray for this module only: every other test stays free of Ray start-up."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir="/tmp/bon-ray-test", log_to_driver=False)
    yield
    ray.shutdown()


def demo(tmp_path, name, *extra):
    return load_config("configs/demo.yaml", [*SMALL, f"output_dir={tmp_path / name}", *extra])


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory, smollm2):
    cfg = demo(tmp_path_factory.mktemp("local"), "run")
    run(cfg)
    return cfg.output_dir


def _close(x, y) -> bool:
    if isinstance(x, float) and isinstance(y, float):
        return abs(x - y) <= 1e-4 * max(1.0, abs(x))
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_close(x[k], y[k]) for k in x)
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(_close(u, v) for u, v in zip(x, y))
    return x == y


def same_files(a, b):
    """Byte-identical texts and choices; floats within 1e-4: actors run torch on 1 thread, the local reference
    on 2, and the judge's prefix-reuse GEMM shapes reduce in a thread-dependent order (last-bit differences)."""
    for name in COMPARED:
        if not name.endswith(".jsonl"):
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
            continue
        mine, ref = ([json.loads(line) for line in (d / name).read_text().splitlines()] for d in (a, b))
        assert _close(mine, ref), name


@pytest.mark.slow
@pytest.mark.ray
def test_ray_engine_equals_local(ray_session, local_reference, tmp_path):
    cfg = demo(tmp_path, "ray", "engine=ray")
    result = run(cfg)
    same_files(cfg.output_dir, local_reference)
    assert result.seconds["sample"] > 0 and result.seconds["judge"] > 0


@pytest.mark.slow
@pytest.mark.ray
def test_early_rejection_under_ray_rejects_and_selects_as_the_local_engine(ray_session, tmp_path):
    """The policy actor pauses its rows every chunk and the judge actor scores the partial answers: the same
    candidates, rejections (their flags) and selections as one process."""
    rules = ["n=4", "early_rejection={chunk_tokens: 4, keep_fraction: 0.5}", "judge.name=length", "judge.options={}"]
    local = demo(tmp_path, "local", *rules)
    run(local)
    remote = demo(tmp_path, "ray", "engine=ray", *rules)
    run(remote)
    same_files(remote.output_dir, local.output_dir)
    rejected = [json.loads(line) for line in (remote.output_dir / "candidates.jsonl").read_text().splitlines()]
    assert any(c["finish_reason"] == "rejected" for c in rejected)


@pytest.mark.slow
@pytest.mark.ray
def test_conversations_under_ray_equal_local(ray_session, tmp_path):
    """Two-turn conversations: each turn's prompts, built from the kept answer, run on the actors as locally."""
    source = two_turn_source(tmp_path)
    local = demo(tmp_path, "local", f"prompts.source={source}")
    run(local)
    on_ray = demo(tmp_path, "ray", f"prompts.source={source}", "engine=ray")
    result = run(on_ray)
    assert [p.id for p in result.prompts] == ["0", "1", "0:turn2", "1:turn2"]
    same_files(on_ray.output_dir, local.output_dir)


class KillOnFirst:
    """A progress sink that SIGKILLs an actor's process the first time a stage advances."""

    def __init__(self, pids):
        self.pids, self.killed, self.notes = pids, [], []

    def start(self, stage, total, done):
        pass

    def advance(self, stage, amount):
        if stage in self.pids and stage not in self.killed:
            os.kill(self.pids[stage], signal.SIGKILL)  # the actor is busy with the next batch now
            self.killed.append(stage)

    def note(self, message):
        self.notes.append(message)

    def status(self, line):
        pass


@pytest.mark.slow
@pytest.mark.ray
def test_killed_actors_restart_and_lose_nothing(ray_session, local_reference, tmp_path):
    cfg = demo(tmp_path, "killed", "engine=ray", "ray.max_restarts=2")
    sink = KillOnFirst({})
    executor = RayExecutor(cfg, note=sink.notes.append)
    with executor:
        sink.pids = {"candidates": executor.pids["policy"][0], "judgements": executor.pids["judge"][0]}
        run(cfg, progress=sink, executor=executor)
        assert executor.policies.restarts == 1 and executor.judges.restarts == 1
    assert sink.killed == ["candidates", "judgements"]
    assert sum("policy actor 0 died" in n and "restarted" in n for n in sink.notes) == 1, sink.notes
    same_files(cfg.output_dir, local_reference)  # no candidate lost or duplicated


@pytest.mark.ray
def test_unsatisfiable_resources_fail_fast(ray_session, tmp_path):
    cfg = demo(tmp_path, "big", "engine=ray", "ray.policy.num_gpus=4")
    start = time.perf_counter()
    with pytest.raises(ExecutorError, match=r"asks Ray for 2 CPU, 4 GPU but the cluster has 2 CPU.*short of GPU"):
        run(cfg)
    assert time.perf_counter() - start < 30
    assert not (cfg.output_dir / "candidates.jsonl").exists()


def test_plan_for_tensor_parallel_vllm():
    cfg = load_config(
        "configs/alpaca_eval_v2_bo32.yaml",
        [
            "policy.engine_args.tensor_parallel_size=2",
            "ray.policy_replicas=2",
            "ray.judge.num_gpus=1",
            "ray.judge_replicas=3",
        ],
    )
    policy, judge = plan(cfg)
    assert policy.bundles == [{"GPU": 1.0, "CPU": 1.0}] * 2 and policy.num_gpus == 0
    assert asked_resources([policy, judge]) == {"CPU": 2 * 1 + 2 * 2 + 3 * 1, "GPU": 2 * 2 + 3}
    check_fits({"CPU": 2, "GPU": 1}, {"CPU": 16.0, "GPU": 1.0, "memory": 1e9})
    with pytest.raises(ExecutorError, match=r"asks Ray for 1 CPU, 2 GPU but the cluster has 16 CPU, 1 GPU"):
        check_fits({"CPU": 1, "GPU": 2}, {"CPU": 16.0, "GPU": 1.0})


def test_death_reasons_name_out_of_memory():
    oom = ray.exceptions.OutOfMemoryError("Task was killed due to the node running low on memory.")
    assert "running out of memory" in death_reason("judge", 1, oom) and "ray.judge.memory_gb" in death_reason(
        "judge", 1, oom
    )
    plain = ray.exceptions.ActorDiedError()
    assert (
        death_reason("policy", 0, plain)
        == "policy actor 0 died (The actor died unexpectedly before finishing this task.)"
    )


@pytest.mark.slow
@pytest.mark.ray
def test_compare_on_ray_equals_local_and_starts_judge_actors_only(ray_session, tmp_path):
    import json

    from bon.eval.compare import CompareConfig, run_compare

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps(
                {
                    "scenario": "chitchat",
                    "label": i % 3,
                    "prompt": f"q{i}",
                    "response 1": "a" * (i % 4),
                    "response 2": "b" * (i % 3),
                }
            )
            + "\n"
            for i in range(12)
        )
    )
    results = {}
    for engine in ("local", "ray"):
        cfg = CompareConfig.model_validate(
            {
                "output_dir": str(tmp_path / engine),
                "engine": engine,
                "batch_size": 3,
                "bootstrap": 20,
                "ray": {"judge_replicas": 2, "judge": {"num_cpus": 0.5}},
                "judges": [
                    {"name": "length"},
                    {"name": "pairwise", "label": "pw", "options": {"comparator": "scalar"}},
                    {"name": "wordjudges:word_count", "label": "wc"},  # a user's reward function, on the actors
                ],
                "benchmarks": [{"name": "pairs", "kind": "pairwise", "path": str(pairs)}],
            }
        )
        seen = []
        results[engine] = run_compare(cfg, note=seen.append)
        assert not [a for a in ray.util.list_named_actors() if a.startswith("bon-")]  # every actor is gone after
        for rel in ("judgements/pairs/length.jsonl", "comparisons/pairs/pw.jsonl", "judgements/pairs/wc.jsonl"):
            assert (cfg.output_dir / rel).exists()
    for rel in ("judgements/pairs/length.jsonl", "judgements/pairs/wc.jsonl"):
        assert (tmp_path / "ray" / rel).read_bytes() == (tmp_path / "local" / rel).read_bytes()
    assert (tmp_path / "ray/comparisons/pairs/pw.jsonl").read_bytes() == (
        tmp_path / "local/comparisons/pairs/pw.jsonl"
    ).read_bytes()
    assert results["ray"].benchmarks == results["local"].benchmarks


def test_judge_only_plan_asks_nothing_for_a_policy():
    cfg = load_config("configs/demo.yaml", ["ray.judge_replicas=2"])
    only_judges = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"policy_replicas": 0})})
    assert asked_resources(plan(only_judges)) == {"CPU": 2.0}
