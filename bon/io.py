"""JSONL persistence for records: append-only, fsync'd, torn-tail tolerant, version-checked."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, TypeVar

from bon.records import RecordError, from_json, to_json

T = TypeVar("T")


class DataFileError(ValueError):
    """A data file is malformed; the message names the file, the line and the field."""

    def __init__(self, path: Path | str, line: int | None, message: str):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path, self.line = Path(path), line


def drop_torn_tail(path: Path) -> bool:
    """Truncate a last line that has no newline (a write cut by a crash); True if one was dropped."""
    if not path.exists():
        return False
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return False
        f.truncate(data.rfind(b"\n") + 1)
    return True


def read_records(path: Path, cls: type[T]) -> list[T]:
    """Every record of a JSONL file written by `append_records`.

    A last line without a newline is a write torn by a crash and is ignored (call `drop_torn_tail`
    before appending). Any other bad line is an error naming the file, line and field.
    """
    if not path.exists():
        return []
    records: list[T] = []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    # the element after the last newline is either empty or a torn write
    for lineno, raw in enumerate(lines[:-1], start=1):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataFileError(path, lineno, f"not valid JSON ({e.msg})") from None
        if not isinstance(data, dict):
            raise DataFileError(path, lineno, "expected a JSON object")
        try:
            records.append(from_json(cls, data))
        except (RecordError, TypeError) as e:
            raise DataFileError(path, lineno, str(e)) from None
    return records


def append_records(path: Path, records: Iterable[Any]) -> None:
    """Append records as JSON lines and fsync, so a crash loses at most a torn last line."""
    payload = "".join(json.dumps(to_json(r), ensure_ascii=False) + "\n" for r in records)
    if not payload:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def write_records_atomic(path: Path, records: Iterable[Any]) -> None:
    """Replace a JSONL file through a temporary file and a rename: readers see the old or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(to_json(r), ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
