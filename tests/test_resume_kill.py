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
SETTINGS = ["n=4", "prompts.limit=5", "batch_size=1", "policy.max_tokens=32"]
COMPARED = ("candidates.jsonl", "judgements.jsonl", "selections.jsonl", "model_outputs.json")


def command(run_dir: Path) -> list[str]:
    args = [sys.executable, "-m", "bon", "run", "configs/demo.yaml", "--set", f"output_dir={run_dir}"]
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
