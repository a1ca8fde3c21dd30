"""JSONL persistence for records: append-only, fsync'd, torn-tail tolerant, version-checked."""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import io
import json
import os
import stat
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from bon.core.errors import BonError
from bon.core.records import RecordError, from_json, to_json

T = TypeVar("T")


class DataFileError(BonError, ValueError):
    """A data file is malformed; the message names the file, the line and the field."""

    def __init__(self, path: Path | str, line: int | None, message: str):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path, self.line = Path(path), line


class DirectoryInUseError(BonError, RuntimeError):
    """Another process holds the directory's lock; the message names its pid."""


_held: dict[str, int] = {}  # directories this process has locked -> depth, so nested commands may re-enter


@contextlib.contextmanager
def lock_dir(path: Path | str) -> Iterator[Path]:
    """Create ``path`` if needed and hold its lock (``.lock``, flock) while the block runs.

    A second process fails at once, naming the holder's pid; the kernel releases the lock when the
    holder exits, kill -9 included, so a crash never leaves a stale lock behind.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    if key in _held:
        _held[key] += 1
        try:
            yield path
        finally:
            _held[key] -= 1
        return
    lock = path / ".lock"
    fd = _take_lock(path, lock)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = 1
    try:
        yield path
    finally:
        del _held[key]
        lock.unlink(missing_ok=True)  # removed while still held: a waiter that opened it sees it gone and retries
        os.close(fd)


def _take_lock(path: Path, lock: Path) -> int:
    """An open, flocked descriptor of ``lock`` that is still the file at that path (a releasing holder unlinks it)."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides, as for every file bon writes
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise DirectoryInUseError(
                f"{path} is in use by another bon process (pid {holder}); wait for it to finish or stop it"
            ) from None
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # we locked a file its holder had just removed: take the new one


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(text: str | bytes, path: Path | str, line: int | None = None, allow_nan: bool = False) -> Any:
    """JSON text, refused with file and line when malformed or (unless ``allow_nan``) holding NaN/Infinity."""
    try:
        return json.loads(text, parse_constant=None if allow_nan else _reject_constant)
    except json.JSONDecodeError as e:
        raise DataFileError(path, line if line is not None else e.lineno, f"not valid JSON ({e.msg})") from None
    except ValueError as e:
        raise DataFileError(path, line, f"not valid JSON ({e})") from None


def read_text(path: Path | str) -> str:
    """A UTF-8 text file; unreadable (missing, a directory, not UTF-8) is a `DataFileError` naming file and line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataFileError(path, None, f"cannot read ({e.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataFileError(
            path, line, f"not UTF-8 text (byte 0x{data[e.start]:02x}); save the file as UTF-8"
        ) from None


def read_json(path: Path | str, allow_nan: bool = False) -> Any:
    """A JSON file through `read_text` and `parse_json`; an empty file is named as empty, not as bad JSON."""
    text = read_text(path)
    if not text.strip():
        raise DataFileError(path, None, "is empty (no JSON in it)")
    return parse_json(text, path, allow_nan=allow_nan)


def read_json_rows(path: Path | str) -> list[tuple[int | None, dict[str, Any]]]:
    """(line, object) pairs of a JSONL file or a JSON list; lines are 1-based, None for a JSON list."""
    path = Path(path)
    text = read_text(path)
    if path.suffix.lower() == ".json":
        if not text.strip():  # an empty JSONL file has no rows; an empty JSON file has no list
            raise DataFileError(path, None, "is empty (no JSON in it)")
        rows = parse_json(text, path)
        if not isinstance(rows, list):
            raise DataFileError(path, None, f"expected a JSON list of objects, found {type(rows).__name__}")
        numbered: list[tuple[int | None, Any]] = [(None, r) for r in rows]
    else:
        numbered = [(n, parse_json(line, path, n)) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    for i, (lineno, row) in enumerate(numbered):
        if not isinstance(row, dict):
            raise DataFileError(path, lineno, f"row {i}: expected a JSON object, found {type(row).__name__}")
    return numbered


def _repair_tail(f) -> bool:
    """Cut an open binary file back to its last newline (a write torn by a crash); True if it cut."""
    end = f.seek(0, os.SEEK_END)
    if not end:
        return False
    f.seek(end - 1)
    if f.read(1) == b"\n":
        return False
    f.seek(0)
    data = f.read()
    f.truncate(data.rfind(b"\n") + 1)
    f.seek(0, os.SEEK_END)
    return True


def present(path: Path | str) -> bool:
    """Whether a file is there: False only when nothing has its name. Anything else that keeps it from being read
    (a symlink loop or a dangling link, no permission, a directory in its place) is an error naming the file and the
    reason: read as absent, a run file would be redone from scratch."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise DataFileError(path, None, f"cannot read ({e.strerror or e})") from None
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise DataFileError(path, None, f"cannot read ({e.strerror or e})") from None
    if stat.S_ISDIR(mode):
        raise DataFileError(path, None, "cannot read (Is a directory)")
    if not os.access(path, os.R_OK):
        raise DataFileError(path, None, "cannot read (Permission denied)")
    return True


def drop_torn_tail(path: Path) -> bool:
    """Truncate a last line that has no newline (a write cut by a crash); True if one was dropped."""
    if not present(path):
        return False
    with open(path, "rb+") as f:
        return _repair_tail(f)


def read_records(path: Path, cls: type[T], n: int | None = None) -> list[T]:
    """Every record of a JSONL file written by `append_records`.

    A last line without a newline is a write torn by a crash and is ignored (call `drop_torn_tail`
    before appending). Any other bad line is an error naming the file, line and field, and so is a
    candidate index (the record class's `indices`) of ``n`` or more, when the run's ``n`` is given.
    """
    if not present(path):
        return []
    records: list[T] = []
    identity: tuple[str, ...] = getattr(cls, "identity", ())
    seen: dict[tuple, tuple[int, T]] = {}  # identity -> (line, record)
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    # the element after the last newline is either empty or a torn write
    for lineno, raw in enumerate(lines[:-1], start=1):
        if not raw.strip():
            continue
        data = parse_json(raw, path, lineno)
        if not isinstance(data, dict):
            raise DataFileError(path, lineno, "expected a JSON object")
        try:
            record = from_json(cls, data)
        except (RecordError, TypeError) as e:
            raise DataFileError(path, lineno, str(e)) from None
        for name in getattr(cls, "indices", ()):
            value = getattr(record, name)
            if n is not None and value is not None and value >= n:
                raise DataFileError(
                    path, lineno, f"field {name!r}: {value} is not a candidate of this run (n={n}: 0 to {n - 1})"
                )
        if identity:  # an identical repeat is merged; two different records of one thing are an error
            key = tuple(getattr(record, name) for name in identity)
            if key in seen:
                if seen[key][1] == record:
                    continue
                named = ", ".join(f"{name} {value!r}" for name, value in zip(identity, key))
                raise DataFileError(
                    path,
                    lineno,
                    f"a second, different {getattr(cls, 'kind', cls.__name__)} record for {named} "
                    f"(the first is on line {seen[key][0]}); keep one of the two lines",
                )
            seen[key] = (lineno, record)
        records.append(record)
    return records


def dumps(obj: Any) -> str:
    """Standard JSON only: a NaN or infinity is a bug upstream, never written to a file."""
    return json.dumps(obj, ensure_ascii=False, allow_nan=False)


def append_records(path: Path, records: Iterable[Any]) -> None:
    """Append records (with their schema version and kind) through `append_jsonl`."""
    append_jsonl(path, (to_json(r) for r in records))


def append_jsonl(path: Path, rows: Iterable[Any]) -> None:
    """Append JSON lines and fsync, so a crash loses at most a torn last line.

    A torn last line left by an earlier crash is cut first, so it never fuses with the next row:
    every appender of a JSONL file goes through here.
    """
    payload = "".join(dumps(r) + "\n" for r in rows).encode("utf-8")
    if not payload:
        return
    try:
        with open(path, "ab+") as f:
            _repair_tail(f)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:  # a failed write() names no file: say which one (disk full, size limit)
        raise OSError(e.errno, e.strerror, str(path)) from None


def write_records_atomic(path: Path, records: Iterable[Any]) -> None:
    """Replace a JSONL file of records through `write_jsonl_atomic`."""
    write_jsonl_atomic(path, (to_json(r) for r in records))


def write_jsonl_atomic(path: Path, rows: Iterable[Any]) -> None:
    """Replace a JSONL file through a temporary file and a rename: readers see the old or the new one."""
    _write_atomic(path, "".join(dumps(r) + "\n" for r in rows))


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    _write_atomic(path, json.dumps(obj, ensure_ascii=False, indent=2, allow_nan=False) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Replace a text file through a temporary file and a rename (a page, a report)."""
    _write_atomic(path, text)


def umask() -> int:
    """This process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600; the file gets what an ordinary open() would
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a failed write() names no file: say which one (disk full, size limit)
        Path(tmp).unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# `bon --verbose`: third-party output (progress bars, warnings) is shown instead of held back
VERBOSE: contextvars.ContextVar[bool] = contextvars.ContextVar("bon_verbose", default=False)


@contextlib.contextmanager
def held_stderr() -> Iterator[None]:
    """Third-party progress bars and prints on stderr (tqdm's, alpaca-eval's) held while the block runs and dropped:
    nothing a user can act on, and a failure's one-line error stays alone. With `VERBOSE` they are written out."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer):
            yield
    finally:
        if VERBOSE.get():
            sys.stderr.write(buffer.getvalue())
