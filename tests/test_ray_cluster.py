"""A Ray run that loses a whole node mid-run completes with nothing lost or duplicated.

`ray.cluster_utils.Cluster` starts a head and a worker node on this machine. The head offers no
CPUs, so every actor starts on the worker; when the first batch's candidates arrive, the worker
node is removed (its raylet and every actor on it die) and a fresh node joins, as an autoscaler
would replace a lost spot instance. The actors restart there and the run's files equal a local run's.
"""

import os

import pytest

ray = pytest.importorskip("ray")

from bon.pipeline.ray_executor import RayExecutor  # noqa: E402
from bon.pipeline.runner import run  # noqa: E402
from tests.test_ray import demo, same_files  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.ray]


class LoseNodeOnFirstCandidates:
    """A progress sink that removes the worker node (and adds a replacement) when candidates first arrive."""

    def __init__(self, cluster, worker):
        self.cluster, self.worker, self.notes, self.lost = cluster, worker, [], False

    def start(self, stage, total, done):
        pass

    def advance(self, stage, amount):
        if stage == "candidates" and not self.lost:
            self.lost = True
            self.cluster.remove_node(self.worker, allow_graceful=False)  # as a crash: no draining
            self.cluster.add_node(num_cpus=2)

    def note(self, message):
        self.notes.append(message)

    def status(self, line):
        pass


def test_a_run_survives_losing_its_worker_node(tmp_path, smollm2):
    from ray.cluster_utils import Cluster

    reference = demo(tmp_path, "local")
    run(reference)
    if ray.is_initialized():
        ray.shutdown()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # the lost node is declared dead after 3 missed 0.5 s health checks, not 5 missed 3 s ones: the test waits less
    fast_death = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": fast_death}
    )
    try:
        worker = cluster.add_node(num_cpus=2)
        ray.init(address=cluster.address, log_to_driver=False)
        cfg = demo(tmp_path, "cluster", "engine=ray", "ray.max_restarts=2", "ray.startup_timeout_s=300")
        sink = LoseNodeOnFirstCandidates(cluster, worker)
        executor = RayExecutor(cfg, note=sink.notes.append)
        with executor:
            run(cfg, progress=sink, executor=executor)
            assert executor.policies.restarts == 1 and executor.judges.restarts >= 1, sink.notes
        assert sink.lost
        assert any("policy actor 0 died" in n and "restarted" in n for n in sink.notes), sink.notes
        same_files(cfg.output_dir, reference.output_dir)  # nothing lost, nothing duplicated
    finally:
        ray.shutdown()
        cluster.shutdown()
