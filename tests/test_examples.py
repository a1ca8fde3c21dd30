"""The scripts in examples/ run as a user runs them, on a run directory, with bon's public API only."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_an_example_imports_only_bons_public_api(script: Path):
    names = [
        (n.module if isinstance(n, ast.ImportFrom) else a.name) or ""
        for n in ast.walk(ast.parse(script.read_text(encoding="utf-8")))
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in n.names
    ]
    private = [m for m in names if m.split(".")[0] in ("bon", "judges", "eval") and m != "bon"]
    assert private == [], f"{script.name} reaches past `import bon`: {private}"


@pytest.mark.slow  # cosine loads MiniLM
def test_compare_judges_judges_a_run_three_ways_and_plots_their_agreement(finished):
    script = ROOT / "examples" / "compare_judges.py"
    out = subprocess.run([sys.executable, str(script), str(finished)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split("Kendall")[0].split() for line in lines[:3]] == [
        ["length", "~", "cosine"],
        ["length", "~", "overlap"],
        ["cosine", "~", "overlap"],
    ]
    assert (Path(finished) / "compare_judges.png").stat().st_size > 5000
    again = subprocess.run([sys.executable, str(script), str(finished)], capture_output=True, text=True, timeout=600)
    assert again.stdout.splitlines()[:3] == lines[:3]  # the stored judgements are reused, not redone


@pytest.mark.long
def test_dpo_loop_trains_two_steps_on_pairs_best_of_n_sampled_from_the_weights_being_trained(tmp_path):
    pytest.importorskip("trl")
    script = ROOT / "examples" / "dpo_loop.py"
    out = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    steps = [line for line in out.stdout.splitlines() if line.startswith("step ")]
    assert [s.split(":")[0] for s in steps] == ["step 0", "step 0", "step 1", "step 1"]
    pairs = [int(s.split()[2]) for s in steps if "pairs" in s]
    assert all(p >= 2 for p in pairs), steps
    losses = [float(s.split()[-1]) for s in steps if "DPO loss" in s]
    # step 0 starts from the reference weights (loss ln 2); step 1's differs only if step 0 changed the weights
    assert abs(losses[0] - math.log(2)) < 1e-3 and abs(losses[1] - math.log(2)) > 1e-4, steps
