"""`bon run` killed with SIGKILL mid-run, then rerun, ends exactly like an uninterrupted run (the candidates'
measured confidence within float rounding)."""

import json
import os
import random
import shutil
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
# measured from the logits, which other neighbours in the decode batch round differently (tokens do not differ)
MEASURED = ("logprob_sum", "entropy_sum", "certainty_sum")


def same(resumed: Path, reference: Path) -> None:
    """``resumed`` equals ``reference`` byte for byte, but for the confidence a candidate's policy measured while
    decoding: within 1e-4 a token, as a batch of other neighbours computes it."""
    if resumed.name != "candidates.jsonl":
        assert resumed.read_bytes() == reference.read_bytes(), resumed.name
        return
    got, want = resumed.read_text().splitlines(), reference.read_text().splitlines()
    assert len(got) == len(want)
    for a, b in zip(map(json.loads, got), map(json.loads, want)):
        assert {k: v for k, v in a.items() if k not in MEASURED} == {k: v for k, v in b.items() if k not in MEASURED}
        tokens = max(1, a.get("confidence_tokens") or 1)
        for k in MEASURED:
            assert (k in a) == (k in b)
            if k in a:
                assert a[k] / tokens == pytest.approx(b[k] / tokens, abs=1e-4), (a["prompt_id"], a["index"], k)


def command(run_dir: Path) -> list[str]:
    args = [*BON, "run", "configs/demo.yaml", "--set", f"output_dir={run_dir}"]
    for s in SETTINGS:
        args += ["--set", s]
    return args


def lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def kill_when(cmd: list[str], ready) -> None:
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` holds; fails when it finished first."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    return time.perf_counter() - t0


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, float]:
    """One uninterrupted run and its wall seconds, which the kill tests compare against (none writes to it)."""
    ref = tmp_path_factory.mktemp("uninterrupted") / "ref"
    return ref, timed(command(ref))


def test_kill_9_then_resume_matches_uninterrupted(tmp_path, reference):
    ref, _ = reference
    killed = tmp_path / "killed"
    kill_when(command(killed), lambda: lines(killed / "candidates.jsonl") >= 8)
    assert not (killed / "model_outputs.json").exists()
    assert 8 <= lines(killed / "candidates.jsonl") < 20

    resumed = subprocess.run(command(killed), capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    for name in COMPARED:
        same(killed / name, ref / name)


def kill_loop(cmd: list[str], kills: int, whole: float, idle: float, rng) -> None:
    """Start ``cmd`` and SIGKILL it at a random moment, ``kills`` times, each a resume; then let it finish.

    ``whole``: the uninterrupted command's seconds; ``idle``: the same command's with nothing left to do (start-up,
    loading, writing outputs). Each kill lands within start-up plus a share of the work, so the work never runs
    out before the last kill and every kill interrupts something (loading, sampling, judging or writing).
    """
    share = max(whole - idle, 1.0) / kills
    for k in range(kills):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(0.3, idle + share))
            raise AssertionError(f"kill {k + 1}: the command finished before it could be killed")
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    timed(cmd)


@pytest.mark.long  # over a minute on 2 cores: .ci/run's second tier
def test_kill_loop_of_run_and_judge_matches_uninterrupted(tmp_path, reference):
    """Ten kill -9 at random moments: six of `bon run` (loading, sampling, judging, writing), then four of
    `bon judge`, each resumed: the files equal an uninterrupted run's."""
    rng = random.Random(13)
    run_s = reference[1]
    run_idle = timed(command(reference[0]))  # nothing left to do
    ref = tmp_path / "ref"
    shutil.copytree(reference[0], ref)  # `bon judge` adds to it
    judge = [
        *BON,
        "judge",
        str(ref),
        "--judge",
        "selfj",
        "--set",
        "prompt_format=chat",
        "--set",
        "reference=never",
        "--label",
        "sj",
    ]
    judge_s, judge_idle = timed(judge), timed(judge)

    killed = tmp_path / "killed"
    kill_loop(command(killed), 6, run_s, run_idle, rng)
    for name in COMPARED:
        same(killed / name, reference[0] / name)
    judge[judge.index(str(ref))] = str(killed)
    kill_loop(judge, 4, judge_s, judge_idle, rng)
    assert (killed / "judgements.jsonl").read_bytes() == (ref / "judgements.jsonl").read_bytes()


def test_kill_9_during_turn_2_then_resume_matches_uninterrupted(tmp_path, shared_data):
    """A two-turn MT-Bench run killed while turn 2 is being written resumes to the uninterrupted run's files."""

    def mt_command(run_dir: Path) -> list[str]:
        args = [*BON, "run", "configs/mt_bench_cpu.yaml", "--set", f"output_dir={run_dir}"]
        for s in ("n=2", "prompts.ids=[81,101]", "batch_size=1", "policy.max_tokens=16"):
            args += ["--set", s]
        return args + ["--set", f"prompts.source={shared_data / 'mt_bench' / 'question.jsonl'}"]

    ref = tmp_path / "ref"
    done = subprocess.run(mt_command(ref), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr

    killed = tmp_path / "killed"
    cands = killed / "candidates.jsonl"
    kill_when(mt_command(killed), lambda: cands.exists() and b":turn2" in cands.read_bytes())
    assert not (killed / "model_outputs.json").exists()
    written = cands.read_text()
    assert ":turn2" in written and written.count(":turn2") < 4  # inside turn 2: some of its candidates, not all

    resumed = subprocess.run(mt_command(killed), capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    for name in (*COMPARED, "prompts.json"):
        same(killed / name, ref / name)
