"""The wheel a user installs: judges/ and eval/ go inside bon (as bon.judges and bon.eval) with their data files, and
no top-level `judges` or `eval` package is installed to collide with a user's own modules."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

from tests.helpers import ROOT


def test_the_wheel_installs_judges_and_eval_inside_bon_with_their_data(tmp_path):
    source = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    source.mkdir()
    for name in ("bon", "judges", "eval", "pyproject.toml", "README.md"):
        src = ROOT / name
        (shutil.copytree(src, source / name, symlinks=True) if src.is_dir() else shutil.copy(src, source / name))
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source)]
    out = subprocess.run([*build, "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    [wheel] = (tmp_path / "dist").glob("bon-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"bon"}
    for path in ("bon/judges/selfj.py", "bon/eval/training.py", "bon/judges/prompts/selfj_with_reference.txt"):
        assert path in names
    assert "bon/judges/prompts/mt_bench_single.jsonl" in names and "bon/eval/data/view.html" in names
