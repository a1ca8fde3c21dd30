"""Prompt sources: local .json / .jsonl / .parquet files and Hugging Face hub data sets."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bon.core.config import PromptsConfig
from bon.core.errors import BonError
from bon.core.io import DataFileError, present, read_json_rows
from bon.core.records import ROLES, TURN_SEP, Message, Prompt

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


def _strings(value: Any, field: str, what: str, allow_none: bool = False) -> tuple[Any, ...]:
    """``value`` as a tuple of non-empty strings (None entries too where allowed); a ValueError names ``field``."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"field {field!r}: expected a non-empty list of {what}, found {value!r}")
    for i, item in enumerate(value):
        if allow_none and (item is None or item == ""):  # MT-Bench leaves some turns' reference empty
            continue
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"field '{field}[{i}]': expected a non-empty string, found {item!r}")
    return tuple(value)


def _messages(value: Any, field: str) -> tuple[tuple[Message, ...], str]:
    """(history, last user message) of an OpenAI-style messages list; a ValueError names the bad entry."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"field {field!r}: expected a non-empty list of messages, found {value!r}")
    out = []
    for i, m in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(m, dict):
            raise ValueError(f"field {where!r}: expected a message object, found {m!r}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES or (role == "system" and i != 0):
            raise ValueError(f"field '{where}.role': expected {' / '.join(ROLES)} (system first only), found {role!r}")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"field '{where}.content': expected a non-empty string, found {content!r}")
        out.append(Message(role, content))
    if out[-1].role != "user":
        raise ValueError(
            f"field '{field}[{len(out) - 1}].role': the conversation must end with a user turn to answer, "
            f"found {out[-1].role!r}"
        )
    return tuple(out[:-1]), out[-1].content


def _one_of_each(row: dict[str, Any], cfg: PromptsConfig) -> None:
    """Refuse a row that says one thing twice (as a YAML key given twice is): two ways to give the prompt, or two
    different ids; naming both fields."""
    ways = [
        f for f in dict.fromkeys((cfg.instruction_field, cfg.turns_field, cfg.messages_field)) if row.get(f) is not None
    ]
    if len(ways) > 1:
        raise ValueError(f"fields {ways[0]!r} and {ways[1]!r} both give the prompt; keep one of them")
    ids = [f for f in dict.fromkeys((cfg.id_field, "question_id")) if row.get(f) not in (None, "")]
    if len(ids) > 1 and str(row[ids[0]]) != str(row[ids[1]]):
        raise ValueError(
            f"fields {ids[0]!r} and {ids[1]!r} give two ids ({row[ids[0]]!r} and {row[ids[1]]!r}); keep one of them"
        )


def prompt_from_row(row: dict[str, Any], cfg: PromptsConfig, dataset_default: str) -> Prompt:
    """One prompt from a source row: an instruction, MT-Bench ``turns``, or a ``messages`` conversation.

    Raises ValueError naming the field when the row is none of them or malformed.
    """
    history: tuple[Message, ...] = ()
    turns: tuple[str, ...] = ()
    references: tuple[str | None, ...] = ()
    _one_of_each(row, cfg)
    instruction = row.get(cfg.instruction_field)
    reference = row.get(cfg.reference_field) if cfg.reference_field else None
    if instruction is None and cfg.turns_field in row:
        turns = _strings(row[cfg.turns_field], cfg.turns_field, "user turns (strings)")
        instruction = turns[0]
        if reference is not None:  # MT-Bench: a gold answer per turn
            references = tuple(
                r or None for r in _strings(reference, str(cfg.reference_field), "reference answers", allow_none=True)
            )
            reference = references[0]
            if len(references) > len(turns):
                raise ValueError(
                    f"field {cfg.reference_field!r}: {len(references)} reference answers for the {len(turns)} turns "
                    f"of field {cfg.turns_field!r}: a reference for a turn that does not exist"
                )
    elif instruction is None and cfg.messages_field in row:
        history, instruction = _messages(row[cfg.messages_field], cfg.messages_field)
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(
            f"field {cfg.instruction_field!r}: expected a non-empty string (or a {cfg.turns_field!r} or "
            f"{cfg.messages_field!r} list), found {instruction!r}"
        )
    if reference is not None and not isinstance(reference, str):
        raise ValueError(f"field {cfg.reference_field!r}: expected a string, found {reference!r}")
    id_key = cfg.id_field if cfg.id_field in row else "question_id"  # MT-Bench names its ids question_id
    raw_id = row.get(id_key)
    if raw_id is not None and (isinstance(raw_id, bool) or not isinstance(raw_id, (str, int))):
        raise ValueError(f"field {id_key!r}: expected a string or an integer id, found {raw_id!r}")
    dataset, category = row.get(cfg.dataset_field), row.get(cfg.category_field)
    return Prompt(
        id=str(raw_id) if raw_id not in (None, "") else prompt_id(instruction),
        instruction=instruction,
        dataset=str(dataset) if dataset not in (None, "") else dataset_default,
        reference=reference or None,
        history=history,
        turn=1 + sum(m.role == "user" for m in history),
        turns=turns,
        references=references,
        category=str(category) if category not in (None, "") else "",
    )


def load_prompts(cfg: PromptsConfig) -> list[Prompt]:
    """Read prompts from ``cfg.source``; bad rows and duplicate ids are errors naming the row."""
    path = Path(cfg.source)
    there = present(path)  # a path that is there but unreadable is an error naming why, not "not found"
    is_local = there or path.suffix.lower() in LOCAL_SUFFIXES
    if is_local and not there:
        raise PromptSourceError(f"{path}: prompt file not found")
    rows = _rows_from_file(path) if is_local else _rows_from_hub(cfg)
    dataset_default = path.stem if is_local else cfg.source
    wanted = None if cfg.ids is None else [str(i) for i in cfg.ids]
    prompts: list[Prompt] = []
    seen: dict[str, str] = {}
    for loc, row in rows:
        src, line, prefix = _where(cfg.source, loc)
        if not isinstance(row, dict):
            raise DataFileError(src, line, f"{prefix}expected a JSON object, found {type(row).__name__}")
        try:
            prompt = prompt_from_row(row, cfg, dataset_default)
        except ValueError as e:
            raise DataFileError(src, line, f"{prefix}{e}") from None
        if prompt.id in seen:
            raise DataFileError(
                src, line, f"{prefix}duplicate prompt id {prompt.id!r}, first seen at {seen[prompt.id]}"
            )
        if TURN_SEP in prompt.id:
            raise DataFileError(src, line, f"{prefix}prompt id {prompt.id!r}: {TURN_SEP!r} marks later turns' ids")
        seen[prompt.id] = f"line {loc}" if loc.isdigit() else loc
        if wanted is None or prompt.id in wanted:
            prompts.append(prompt)
        if cfg.limit is not None and len(prompts) >= cfg.limit:
            break
    else:  # read to the end: an id never seen is not in the source
        if wanted is not None and (absent := [i for i in wanted if i not in seen]):
            raise PromptSourceError(f"{cfg.source}: prompts.ids {absent[:5]} are not in the source")
    if not seen:
        raise PromptSourceError(f"{cfg.source}: is empty (no prompt rows)")
    if not prompts:
        raise PromptSourceError(f"{cfg.source}: none of its {len(seen)} prompts is selected (prompts.ids)")
    return prompts
