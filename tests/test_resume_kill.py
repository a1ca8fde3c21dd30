"""`bon run` killed with SIGKILL mid-run, then rerun, ends exactly like an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BON = [sys.executable, "-m", "bon"]
SETTINGS = ["n=4", "prompts.limit=5", "batch_size=1", "policy.max_tokens=32"]
COMPARED = ("candidates.jsonl", "judgements.jsonl", "selections.jsonl", "model_outputs.json")


def command(run_dir: Path) -> list[str]:
    args = [*BON, "run", "configs/demo.yaml", "--set", f"output_dir={run_dir}"]
    for s in SETTINGS:
        args += ["--set", s]
    return args


def lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def test_kill_9_then_resume_matches_uninterrupted(tmp_path):
    ref = tmp_path / "ref"
    done = subprocess.run(command(ref), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr

    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(killed), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while lines(killed / "candidates.jsonl") < 8 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "model_outputs.json").exists()
    assert 8 <= lines(killed / "candidates.jsonl") < 20

    resumed = subprocess.run(command(killed), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    for name in COMPARED:
        assert (killed / name).read_bytes() == (ref / name).read_bytes(), name


def kill_loop(cmd: list[str], kills: int, longest: float, rng) -> int:
    """Start ``cmd``, SIGKILL it at a random moment, again and again; then let it finish. Returns the kills made."""
    made = 0
    for _ in range(3 * kills):
        if made == kills:
            break
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(0.3, longest))
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            made += 1
    final = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stderr
    return made


def test_kill_loop_of_run_and_judge_matches_uninterrupted(tmp_path):
    """Ten kill -9 at random moments: six of `bon run` (loading, sampling, judging, writing), then four of
    `bon judge`, each resumed: the files equal an uninterrupted run's."""
    import random

    rng = random.Random(13)
    ref = tmp_path / "ref"
    t0 = time.perf_counter()
    assert subprocess.run(command(ref), cwd=ROOT, capture_output=True, timeout=900).returncode == 0
    run_s = time.perf_counter() - t0
    uninterrupted = {name: (ref / name).read_bytes() for name in COMPARED}  # before `bon judge` adds to ref
    judge = ["--judge", "selfj", "--set", "prompt_format=chat", "--set", "reference=never", "--label", "sj"]
    t0 = time.perf_counter()
    assert subprocess.run([*BON, "judge", str(ref), *judge], cwd=ROOT, capture_output=True, timeout=900).returncode == 0
    judge_s = time.perf_counter() - t0

    killed = tmp_path / "killed"
    assert kill_loop(command(killed), 6, run_s, rng) == 6
    for name in COMPARED:
        assert (killed / name).read_bytes() == uninterrupted[name], name
    assert kill_loop([*BON, "judge", str(killed), *judge], 4, judge_s, rng) == 4
    assert (killed / "judgements.jsonl").read_bytes() == (ref / "judgements.jsonl").read_bytes()
