"""The data a judge comparison runs on, read into records where it enters.

Three kinds, each a set of prompts with candidates a scalar judge can score:
- ``pairwise``: Auto-J's pairwise test format (prompt, two responses, a human label with ties);
- ``pool``: a folder of AlpacaEval annotation files, the released verdict of every candidate known;
- ``scores``: a JSON/JSONL file of (instruction, response, numeric score) rows, e.g. GPT-4 ratings;
- ``leaderboard``: a folder of per-model AlpacaEval ``model_outputs.json`` files and a leaderboard CSV.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from bon.core.io import DataFileError, present, read_json_rows, read_text
from bon.core.prompts import prompt_id
from bon.core.records import Candidate, Prompt
from bon.eval.pool import Pool, load_pool

T = TypeVar("T")


@cache
def scenario_groups() -> dict[str, str]:
    """Auto-J scenario -> its leaderboard group (a data file copied from the Auto-J repo's table)."""
    table = json.loads(
        resources.files("bon.eval").joinpath("data", "autoj_scenario_groups.json").read_text(encoding="utf-8")
    )
    return {scenario: group for group, members in table.items() if not group.startswith("_") for scenario in members}


def group_order(group: str) -> int:
    """Position of a scenario group in the Auto-J leaderboard's tables ("Others" last)."""
    order = list(dict.fromkeys(scenario_groups().values()))
    return order.index(group) if group in order else len(order)


def spread_order(n: int) -> list[int]:
    """0..n-1 in van der Corput order: every prefix is spread evenly over the range, and a shorter
    prefix is part of every longer one (so judges with different budgets share their items)."""
    levels = max(1, (n - 1).bit_length())
    order, seen = [], set()
    for j in range(2**levels):
        x = int(f"{j:0{levels}b}"[::-1], 2) / 2**levels  # bit reversal: 0, 1/2, 1/4, 3/4, 1/8, ...
        i = int(x * n)
        if i not in seen:
            seen.add(i)
            order.append(i)
    return order


def spread_subset(items: Sequence[T], k: int | None) -> list[T]:
    """``k`` items spread evenly over the sequence, in their order (all of them when k is None or too large)."""
    if k is None or k >= len(items):
        return list(items)
    return [items[i] for i in sorted(spread_order(len(items))[:k])]


def _candidate(pid: str, index: int, text: str, source: str) -> Candidate:
    return Candidate(pid, index, text, None, 0, 0, "stop", source)


def _field(path: Path, lineno: int | None, row: dict, key: str, kind: type | tuple) -> Any:
    value = row.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataFileError(
            path, lineno, f"field {key!r}: expected {getattr(kind, '__name__', 'a number')}, found {value!r}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise DataFileError(path, lineno, f"field {key!r}: {value} is not a finite number")
    return value


@dataclass(frozen=True)
class PairItem:
    """One human-labelled comparison; ``label`` 0 = response 1 better, 1 = response 2 better, 2 = tie."""

    id: str
    scenario: str
    group: str
    label: int
    prompt: str
    response_1: str
    response_2: str


@dataclass(frozen=True)
class Benchmark:
    """Prompts with candidates for scalar judges, plus what the kind's metrics need."""

    name: str
    kind: str  # pairwise | pool | scores
    source: str
    prompts: list[Prompt]
    candidates: dict[str, list[Candidate]]  # prompt id -> its candidates, by index
    pairs: list[PairItem] = field(default_factory=list)  # pairwise: one per prompt, same order
    pool: Pool | None = None  # pool: the released annotations
    values: dict[str, list[float]] = field(default_factory=dict)  # scores: prompt id -> value per candidate
    board: dict[str, dict[str, float | None]] = field(default_factory=dict)  # leaderboard: model -> column -> value

    @property
    def has_references(self) -> bool:
        return any(p.reference for p in self.prompts)

    def subset(self, k: int | None) -> list[Prompt]:
        return spread_subset(self.prompts, k)


def load_pairwise(path: Path | str, name: str = "pairwise") -> Benchmark:
    path = Path(path)
    groups = scenario_groups()
    items = []
    for i, (lineno, row) in enumerate(read_json_rows(path)):
        label = _field(path, lineno, row, "label", int)
        if label not in (0, 1, 2):
            raise DataFileError(path, lineno, f"field 'label': expected 0, 1 or 2, found {label!r}")
        scenario = str(row.get("scenario", "unknown"))
        items.append(
            PairItem(
                f"pair-{(lineno or i + 1):05d}",
                scenario,
                groups.get(scenario, "Others"),
                label,
                _field(path, lineno, row, "prompt", str),
                _field(path, lineno, row, "response 1", str),
                _field(path, lineno, row, "response 2", str),
            )
        )
    if not items:
        raise DataFileError(path, None, "is empty (no items)")
    prompts = [Prompt(it.id, it.prompt, it.scenario) for it in items]
    candidates = {
        it.id: [_candidate(it.id, 0, it.response_1, "response 1"), _candidate(it.id, 1, it.response_2, "response 2")]
        for it in items
    }
    return Benchmark(name, "pairwise", str(path), prompts, candidates, pairs=items)


def load_pool_benchmark(folder: Path | str, name: str = "pool") -> Benchmark:
    """Every instruction of an annotation pool; the baseline's output is the prompt's reference."""
    pool = load_pool(folder)
    prompts = pool.prompts("baseline")
    return Benchmark(
        name, "pool", str(folder), prompts, {p.id: pool.candidates(p.instruction) for p in prompts}, pool=pool
    )


def load_leaderboard(folder: Path | str, name: str = "leaderboard") -> Benchmark:
    """Every model's output per instruction (``folder/outputs/<model>.json``) and ``folder/leaderboard.csv``.

    A prompt's candidates are the models' outputs (``Candidate.policy`` names the model); the CSV's
    numeric columns (e.g. ``v1_win_rate``) are what judges' per-model means are ranked against.
    """
    import csv
    import io

    folder = Path(folder)
    table = folder / "leaderboard.csv"
    rows = list(csv.DictReader(io.StringIO(read_text(table), newline="")))
    if not rows or "model" not in rows[0]:
        raise DataFileError(table, 1, "expected a header with a 'model' column")
    board: dict[str, dict[str, float | None]] = {}
    for lineno, row in enumerate(rows, start=2):
        values: dict[str, float | None] = {}
        for column, raw in row.items():
            if column == "model":
                continue
            try:
                value = float(raw) if raw not in (None, "") else None
            except ValueError:
                raise DataFileError(
                    table, lineno, f"field {column!r}: expected a number or empty, found {raw!r}"
                ) from None
            values[column] = value
            if value is not None and not math.isfinite(value):
                raise DataFileError(table, lineno, f"field {column!r}: expected a finite number, found {raw!r}")
        board[row["model"]] = values
    prompts: dict[str, Prompt] = {}
    candidates: dict[str, list[Candidate]] = {}
    for model in sorted(board):
        path = folder / "outputs" / f"{model}.json"
        if not present(path):
            raise DataFileError(path, None, f"no outputs for model {model!r} of {table.name}")
        for line, row in read_json_rows(path):
            q = _field(path, line, row, "instruction", str)
            pid = prompt_id(q)
            prompts.setdefault(pid, Prompt(pid, q, str(row.get("dataset", ""))))
            group = candidates.setdefault(pid, [])
            group.append(_candidate(pid, len(group), _field(path, line, row, "output", str), model))
    if not prompts:
        raise DataFileError(folder, None, "holds no outputs")
    return Benchmark(name, "leaderboard", str(folder), list(prompts.values()), candidates, board=board)


def load_scores(
    path: Path | str,
    name: str = "scores",
    instruction_field: str = "instruction",
    response_field: str = "output",
    score_field: str = "score",
    reference_field: str | None = None,
) -> Benchmark:
    """Rows of (instruction, response, score); rows sharing an instruction are one prompt's candidates."""
    path = Path(path)
    prompts: dict[str, Prompt] = {}
    candidates: dict[str, list[Candidate]] = {}
    values: dict[str, list[float]] = {}
    for lineno, row in read_json_rows(path):
        q = _field(path, lineno, row, instruction_field, str)
        text = _field(path, lineno, row, response_field, str)
        value = float(_field(path, lineno, row, score_field, (int, float)))
        pid = prompt_id(q)
        ref = row.get(reference_field) if reference_field else None
        prompts.setdefault(pid, Prompt(pid, q, str(row.get("dataset", "")), ref if isinstance(ref, str) else None))
        group = candidates.setdefault(pid, [])
        group.append(_candidate(pid, len(group), text, str(row.get("generator", ""))))
        values.setdefault(pid, []).append(value)
    if not prompts:
        raise DataFileError(path, None, "holds no rows")
    return Benchmark(name, "scores", str(path), list(prompts.values()), candidates, values=values)
