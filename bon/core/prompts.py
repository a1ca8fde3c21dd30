"""Prompt sources: local .json / .jsonl / .parquet files and Hugging Face hub data sets."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bon.core.config import PromptsConfig
from bon.core.errors import BonError
from bon.core.io import DataFileError, read_json_rows
from bon.core.records import Prompt

LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")

# Hub data sets whose loading script current `datasets` refuses: read their data file directly.
HUB_FILES = {"tatsu-lab/alpaca_eval": "hf://datasets/tatsu-lab/alpaca_eval/alpaca_eval.json"}


class PromptSourceError(BonError, ValueError):
    """A prompt source cannot be read; one line saying what and what to do."""


def prompt_id(instruction: str) -> str:
    """A stable id derived from the instruction text."""
    return "p" + hashlib.sha256(instruction.encode("utf-8")).hexdigest()[:16]


def _rows_from_file(path: Path) -> Iterable[tuple[str, Any]]:
    """(location, row) pairs; the location is 'N' (a line) for JSONL, 'row N' otherwise."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        for i, (lineno, row) in enumerate(read_json_rows(path)):
            yield (f"{lineno}" if lineno is not None else f"row {i}"), row
    elif suffix == ".parquet":
        import pyarrow
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pyarrow.ArrowException, OSError) as e:
            raise DataFileError(path, None, f"not a readable parquet file ({str(e).splitlines()[0]})") from None
        for i, row in enumerate(table.to_pylist()):
            yield f"row {i}", row
    else:
        raise PromptSourceError(f"{path}: unsupported prompt file type {suffix!r}; use one of {LOCAL_SUFFIXES}")


def _rows_from_hub(cfg: PromptsConfig) -> Iterable[tuple[str, dict[str, Any]]]:
    import datasets

    try:
        if cfg.source in HUB_FILES:
            ds = datasets.load_dataset("json", data_files=HUB_FILES[cfg.source], split="train")
        else:
            ds = datasets.load_dataset(cfg.source, cfg.subset, split=cfg.split)
    except Exception as e:  # datasets raises many types offline (ConnectionError, httpx errors, OSError)
        raise PromptSourceError(
            f"could not load the data set {cfg.source!r} from the Hugging Face hub "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'}); "
            "offline, pass a local file instead, e.g. "
            "--set prompts.source=../shared/data/alpaca_eval/reference_outputs_v2.json"
        ) from None
    for i, row in enumerate(ds):
        yield f"row {i}", row


def _where(source: str, loc: str) -> tuple[str, int | None, str]:
    return (source, int(loc), "") if loc.isdigit() else (source, None, f"{loc}: ")


def load_prompts(cfg: PromptsConfig) -> list[Prompt]:
    """Read prompts from ``cfg.source``; bad rows and duplicate ids are errors naming the row."""
    path = Path(cfg.source)
    is_local = path.exists() or path.suffix.lower() in LOCAL_SUFFIXES
    if is_local and not path.exists():
        raise PromptSourceError(f"{path}: prompt file not found")
    rows = _rows_from_file(path) if is_local else _rows_from_hub(cfg)
    dataset_default = path.stem if is_local else cfg.source
    prompts: list[Prompt] = []
    seen: dict[str, str] = {}
    for loc, row in rows:
        src, line, prefix = _where(cfg.source, loc)
        if not isinstance(row, dict):
            raise DataFileError(src, line, f"{prefix}expected a JSON object, found {type(row).__name__}")
        instruction = row.get(cfg.instruction_field)
        if not isinstance(instruction, str) or not instruction.strip():
            raise DataFileError(
                src,
                line,
                f"{prefix}field {cfg.instruction_field!r}: expected a non-empty string, found {instruction!r}",
            )
        raw_id = row.get(cfg.id_field)
        pid = str(raw_id) if raw_id not in (None, "") else prompt_id(instruction)
        if pid in seen:
            raise DataFileError(src, line, f"{prefix}duplicate prompt id {pid!r}, first seen at {seen[pid]}")
        seen[pid] = f"line {loc}" if loc.isdigit() else loc
        reference = row.get(cfg.reference_field) if cfg.reference_field else None
        if reference is not None and not isinstance(reference, str):
            raise DataFileError(
                src, line, f"{prefix}field {cfg.reference_field!r}: expected a string, found {reference!r}"
            )
        dataset = row.get(cfg.dataset_field)
        prompts.append(
            Prompt(
                id=pid,
                instruction=instruction,
                dataset=str(dataset) if dataset not in (None, "") else dataset_default,
                reference=reference or None,
            )
        )
        if cfg.limit is not None and len(prompts) >= cfg.limit:
            break
    if not prompts:
        raise PromptSourceError(f"{cfg.source}: no prompts found")
    return prompts
