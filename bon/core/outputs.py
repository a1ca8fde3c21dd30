"""Where bon writes what a user names (``--out``, ``output_dir``): it replaces only what it wrote itself.

One rule for every command. A folder bon writes whole (a dataset export, a report folder) carries a marker
file naming its kind and every file bon put in it; a single file bon writes into a folder it shares with
others (a view page, an AlpacaEval or MT-Bench submission file) is recognised by its own content (`owns`).
A target may be replaced only when it is bon's output of the same kind, holding nothing else; a folder that
holds the run being read, the current directory, the home folder, a file system root, a run directory or a
checkout is never replaced, whatever the flags. The new output is complete before the old one goes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from bon.core.errors import BonError
from bon.core.io import umask, write_json_atomic
from bon.core.rundir import FILES, MANIFEST

MARKER = ".bon-output.json"  # in a folder bon wrote whole: {"schema", "kind", "files"}
_SCHEMA = 1
_RUN_FILES = (MANIFEST, *FILES.values())  # any of them: a run or compare directory


class OutputError(BonError, ValueError):
    """An output path bon will not write or replace; the message names the path and what is in it."""


def _a(kind: str) -> str:
    """``kind`` with its article: "an SFT export", "a preferences export"."""
    vowel = kind[0].lower() in "aeiou" or (kind[:2].isupper() and kind[0] in "AEFHILMNORSX")
    return f"{'an' if vowel else 'a'} {kind}"


def _shown(names: Sequence[str], k: int = 3) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def never_replaced(path: Path, reading: Sequence[Path] = ()) -> str | None:
    """Why the folder ``path`` may never be replaced or deleted by bon (None when it may), links and ``..`` resolved."""
    real = Path(os.path.realpath(path))
    here = Path(os.path.realpath(Path.cwd()))
    if real == Path(real.anchor):
        return "a file system root"
    if real == Path(os.path.realpath(Path.home())):
        return "your home folder"
    if real == here or real in here.parents:
        return "the current directory" if real == here else "a folder holding the current directory"
    for source in reading:
        src = Path(os.path.realpath(source))
        if real == src or real in src.parents:
            return f"{'the' if real == src else 'a folder holding the'} run being read ({source})"
    if real.is_dir():
        if any((real / name).exists() for name in _RUN_FILES):
            return "a run directory (bon run, bon compare)"
        if (real / ".git").exists():
            return "a git checkout"
    return None


def _followed(out: Path) -> Path:
    """``out``, or the folder it links to: an output written through a link replaces the folder, not the link."""
    return Path(os.path.realpath(out)) if Path(out).is_symlink() else Path(out)


def _marker(folder: Path) -> dict | None:
    path = folder / MARKER
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(data, dict) and isinstance(data.get("kind"), str) and isinstance(data.get("files"), list)
    return data if ok else None


def _files(folder: Path) -> list[str]:
    """Every file under ``folder`` (links not followed), relative, sorted; the marker aside."""
    out = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in names + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            rel = os.path.relpath(os.path.join(root, name), folder)
            if rel != MARKER:
                out.append(rel)
    return sorted(out)


def _top(folder: Path, limit: int = 1000) -> list[str]:
    """The names in ``folder`` (not below it; at most ``limit``), sorted: enough to say what a folder holds."""
    with os.scandir(folder) as entries:
        names = [e.name + ("/" if e.is_dir(follow_symlinks=False) else "") for _, e in zip(range(limit), entries)]
    return sorted(names)


def check_workdir(path: Path, kind: str, mine: Callable[[Path], bool]) -> None:
    """A folder a command keeps working in (`bon compare`'s output_dir): new, empty, or already its own ``kind``
    (``mine``), so it never writes its files among a user's, nor its manifest over a run's."""
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise OutputError(f"{path} is a file, not a folder; choose another output_dir")
    if not path.is_dir():
        return
    found = [name for name in _top(path) if name != ".lock"]
    if found and not mine(path):
        raise OutputError(
            f"{path} holds files that are not {_a(kind)} ({_shown(found)}); bon writes {_a(kind)} only into a new or "
            f"empty folder, or continues its own: choose another output_dir"
        )


def folder_owner(folder: Path, kind: str) -> str | None:
    """Why ``folder`` is not bon's own ``kind`` output holding nothing else (None when it is)."""
    marker = _marker(folder)
    if marker is None:
        found = _top(folder)
        return f"holds files bon did not write ({_shown(found)})"
    if marker["kind"] != kind:
        return f"holds bon's {marker['kind']}, not {_a(kind)}"
    other = sorted(set(_files(folder)) - set(marker["files"]))
    if other:
        files = "1 file" if len(other) == 1 else f"{len(other)} files"
        return f"is {_a(kind)} with {files} added since bon wrote it ({_shown(other)})"
    return None


def check_folder(
    out: Path, kind: str, overwrite: bool, reading: Sequence[Path] = (), flag: str = "--overwrite"
) -> None:
    """Refuse ``out`` as the folder of a new ``kind`` output before any work: occupied without ``overwrite``, or
    holding anything but bon's earlier ``kind``. ``flag`` is what lets a replacement happen ("" when none is
    needed: a report bon redoes in place)."""
    shown = f"{out} (a link to {os.path.realpath(out)})" if Path(out).is_symlink() else str(out)
    out = _followed(out)
    if os.path.lexists(out) and not out.is_dir():
        raise OutputError(f"{shown} is a file, not a folder; bon writes {_a(kind)} folder only where nothing is")
    why = never_replaced(out, reading)
    if why is not None:
        raise OutputError(f"{shown} is {why}; bon never replaces it: give --out a new folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    mine = folder_owner(out, kind)
    if mine is not None:
        raise OutputError(f"{shown} {mine}; bon replaces only its own earlier {kind}: give --out a new or empty folder")
    if flag and not overwrite:
        raise OutputError(f"{shown} holds an earlier {kind}; give {flag} to replace it, or another --out")


@contextlib.contextmanager
def replace_folder(
    out: Path, kind: str, overwrite: bool, reading: Sequence[Path] = (), flag: str = "--overwrite"
) -> Iterator[Path]:
    """A fresh folder beside ``out`` to write the new ``kind`` output in; on success it takes ``out``'s place
    (with its marker), and an earlier output of bon's there is removed only then. On failure nothing changes."""
    out = _followed(out)
    check_folder(out, kind, overwrite, reading, flag)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".new"))
    tmp.chmod(0o777 & ~umask())  # mkdtemp makes 0700; the folder gets what an ordinary mkdir would
    old = None
    try:
        yield tmp
        write_json_atomic(tmp / MARKER, {"schema": _SCHEMA, "kind": kind, "files": _files(tmp)})
        check_folder(out, kind, overwrite, reading, flag)  # again: another process may have written meanwhile
        if out.is_dir():
            if any(out.iterdir()):
                old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
                os.replace(out, old / "x")
            else:
                out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            if os.path.lexists(old / "x") and not os.path.lexists(out):
                os.replace(old / "x", out)  # put the earlier output back
            with contextlib.suppress(OSError):
                old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)  # bon's earlier output, checked above to hold nothing else


def check_file(path: Path, kind: str, owns: Callable[[Path], bool], overwrite: bool, flag: str = "--overwrite") -> None:
    """Refuse ``path`` as a new ``kind`` file: a folder, something bon did not write as a ``kind`` (``owns``), or,
    without ``overwrite``, any earlier file (``flag`` "" when bon redoes its own file without asking)."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if path.is_dir() or path.is_symlink():
        what = "a folder" if path.is_dir() else "a symbolic link"
        raise OutputError(f"{path} is {what}; bon writes its {kind} only where nothing is or where its own was")
    if not owns(path):
        raise OutputError(
            f"{path} exists and is not {_a(kind)} bon wrote; bon replaces only its own: move it, or choose another path"
        )
    if flag and not overwrite:
        raise OutputError(f"{path} exists (an earlier {kind}); give {flag} to replace it, or another --out")


def head(path: Path, size: int = 4096) -> bytes:
    """The first bytes of a file (b"" when it cannot be read), for content checks of `check_file`'s ``owns``."""
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError:
        return b""
