"""--overwrite replaces only bon's own earlier output of the same kind: every command that writes what a user names,
against every place it must never delete (the run it reads, a folder holding it, the current directory, home,
a root, a run directory, a checkout, a folder of the user's), named directly, through a symbolic link and by `..`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bon.core.outputs import MARKER, OutputError, replace_folder
from tests.helpers import bon, one_clear_line


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (the lock aside): what must not change."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.name != ".lock"
    }


def _places(tmp_path: Path, run: Path, monkeypatch) -> dict[str, tuple[str, Path]]:
    """name -> (what to give --out, the folder whose files must stay), all seen from ``tmp_path`` as the cwd."""
    home = tmp_path / "home"
    (home / "notes").mkdir(parents=True)
    (home / "notes" / "todo.txt").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "paper.tex").write_text("\\section{}")
    checkout = tmp_path / "checkout"
    (checkout / ".git").mkdir(parents=True)
    (checkout / "src.py").write_text("x = 1\n")
    other_run = tmp_path / "other"
    other_run.mkdir()
    (other_run / "manifest.json").write_text("{}")
    (tmp_path / "link_to_run").symlink_to(run)
    (tmp_path / "link_to_here").symlink_to(tmp_path)
    return {
        "the run": (str(run.relative_to(tmp_path)), run),
        "the run by a link": ("link_to_run", run),
        "the run's parent by ..": (f"{run.relative_to(tmp_path)}/..", tmp_path),
        "the current directory": (".", tmp_path),
        "the current directory by a link": ("link_to_here", tmp_path),
        "home": (str(home), home),
        "home by ~ expanded": (os.path.expanduser("~"), home),
        "a root": ("/", tmp_path),  # nothing may change anywhere; tmp_path stands for what we can see
        "a folder of the user's": ("mine", mine),
        "a checkout": ("checkout", checkout),
        "another run directory": ("other", other_run),
    }


@pytest.mark.parametrize("kind", ["preferences", "sft"])
def test_overwrite_never_deletes_a_folder_bon_did_not_write(finished, tmp_path, monkeypatch, kind):
    run = Path(finished)
    places = _places(tmp_path, run, monkeypatch)
    for name, (out, guarded) in places.items():
        before = tree(guarded)
        result = bon("export", kind, str(run.relative_to(tmp_path)), "--out", out, "--overwrite", cwd=tmp_path)
        assert result.returncode == 2, f"{name}: {result.stdout}{result.stderr}"
        assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, f"{name}: {result.stderr}"
        assert "bon never replaces it" in result.stderr or "bon did not write" in result.stderr, name
        assert tree(guarded) == before, f"{name}: files changed"
    assert (tmp_path / "link_to_run").is_symlink() and (run / "manifest.json").exists()


def test_every_other_writer_refuses_the_same_places(finished, pool_dir, tmp_path, monkeypatch):
    """select-pool's report folder and a view page: the same places refused, whatever is given."""
    run = Path(finished)
    for name, (out, guarded) in _places(tmp_path, run, monkeypatch).items():
        before = tree(guarded)
        for args in (
            ("eval", "select-pool", str(pool_dir), "--judge", "length", "--out", out),
            ("view", str(run), "--out", out),
        ):
            result = bon(*args, cwd=tmp_path)
            one_clear_line(result, out if out != "/" else "/")
            assert tree(guarded) == before, f"{name}: {args[0]} changed files"


def test_overwrite_replaces_only_the_same_kind_of_bons_own_export(finished, tmp_path):
    run, out = str(finished), str(tmp_path / "prefs")
    assert bon("export", "preferences", run, "--out", out).returncode == 0
    marker = json.loads((tmp_path / "prefs" / MARKER).read_text())
    assert marker["kind"] == "preferences export" and "README.md" in marker["files"]
    one_clear_line(bon("export", "preferences", run, "--out", out), "holds an earlier preferences export")
    one_clear_line(bon("export", "sft", run, "--out", out, "--overwrite"), "not an SFT export")
    (tmp_path / "prefs" / "notes.md").write_text("my notes on these pairs")
    one_clear_line(
        bon("export", "preferences", run, "--out", out, "--overwrite"), "1 file added since bon wrote it (notes.md)"
    )
    (tmp_path / "prefs" / "notes.md").unlink()
    again = bon("export", "preferences", run, "--out", out, "--overwrite", "--strategy", "margin")
    assert again.returncode == 0, again.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".prefs")] == []  # nothing left beside it
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "prefs")  # through a link: the folder it points at is replaced, the link stays
    assert bon("export", "preferences", run, "--out", str(link), "--overwrite").returncode == 0
    assert link.is_symlink() and (tmp_path / "prefs" / MARKER).exists()


def test_a_failed_replacement_keeps_the_earlier_output_whole(tmp_path):
    out = tmp_path / "out"
    with replace_folder(out, "report", overwrite=True) as tmp:
        (tmp / "a.md").write_text("first")
    before = tree(out)
    with pytest.raises(RuntimeError, match="cut"):
        with replace_folder(out, "report", overwrite=True) as tmp:
            (tmp / "a.md").write_text("half")
            raise RuntimeError("cut")
    assert tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(OutputError, match="is a file, not a folder"):
        with replace_folder(out / "a.md", "report", overwrite=True):
            pass


def test_view_writes_over_its_own_page_and_nothing_else(finished, tmp_path):
    run = Path(finished)
    assert bon("view", str(run)).returncode == 0
    assert bon("view", str(run)).returncode == 0  # its own page is redone without a flag
    page = tmp_path / "notes.html"
    page.write_text("<p>mine</p>")
    for target in (page, run / "manifest.json", run / "candidates.jsonl", run):
        before = tree(tmp_path)
        one_clear_line(bon("view", str(run), "--out", str(target)), str(target))
        assert tree(tmp_path) == before


def test_select_pool_out_redoes_its_report_and_refuses_the_pool_folder(pool_dir, tmp_path):
    before = tree(pool_dir)
    for out in (pool_dir, pool_dir / ".."):
        one_clear_line(bon("eval", "select-pool", str(pool_dir), "--judge", "length", "--out", str(out)), "pool")
    assert tree(pool_dir) == before
    report = tmp_path / "report"
    for _ in range(2):
        done = bon("eval", "select-pool", str(pool_dir), "--judge", "length", "--out", str(report))
        assert done.returncode == 0, done.stderr
    assert {"select_pool.md", "select_pool.png"} <= set(tree(report))
    (report / "draft.md").write_text("mine")
    one_clear_line(bon("eval", "select-pool", str(pool_dir), "--judge", "length", "--out", str(report)), "draft.md")


def test_an_alpaca_eval_export_writes_over_its_own_files_only(tmp_path):
    from tests.conftest import finished_ae_run

    cfg, reference = finished_ae_run(tmp_path, ["Q one?", "Q two?"])
    args = ["export", "alpaca-eval", str(cfg.output_dir), "--reference-outputs", str(reference), "--out", str(tmp_path)]
    theirs = tmp_path / "results" / "gpt4" / "model_outputs.json"
    theirs.parent.mkdir(parents=True)
    theirs.write_text('[{"instruction": "Q one?", "output": "GPT-4 wrote this", "generator": "gpt4"}]')
    one_clear_line(bon(*args, "--name", "gpt4", "--overwrite"), "is not an AlpacaEval export of 'gpt4' bon wrote")
    assert "GPT-4 wrote this" in theirs.read_text() and not (tmp_path / "models_configs").exists()
    assert bon(*args, "--name", "bo2").returncode == 0
    one_clear_line(bon(*args, "--name", "bo2"), "give --overwrite")
    assert bon(*args, "--name", "bo2", "--overwrite").returncode == 0


def test_a_comparison_is_written_only_into_a_new_empty_or_comparison_folder(tmp_path, pair_file, pool_dir):
    from bon.eval.compare import run_compare
    from tests.conftest import compare_config

    cfg = compare_config(tmp_path, pair_file, pool_dir, judges=[{"name": "length"}])
    for folder, what in ((pool_dir, "a.json"), (tmp_path / "run", "manifest.json")):
        if what == "manifest.json":
            folder.mkdir()
            (folder / what).write_text(json.dumps({"schema": 1, "config": {}, "generator": "x"}))
        before = tree(folder)
        with pytest.raises(OutputError, match=f"not a comparison directory \\({what}"):
            run_compare(cfg.model_copy(update={"output_dir": folder}), note=lambda _: None)
        assert tree(folder) == before
    run_compare(cfg, note=lambda _: None)  # a new folder, then the same comparison again, resumed
    run_compare(cfg, note=lambda _: None)
