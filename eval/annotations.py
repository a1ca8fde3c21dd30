"""AlpacaEval annotation files, read into frozen records where they enter."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from bon.core.errors import BonError
from bon.core.io import DataFileError, read_json


class AnnotationError(BonError, ValueError):
    """Annotations that cannot give what was asked of them (e.g. a win rate without any preference)."""


@dataclass(frozen=True)
class Annotation:
    """One head-to-head verdict: ``output_1`` is the baseline, ``output_2`` the model."""

    instruction: str
    output_1: str
    generator_1: str
    output_2: str
    generator_2: str
    preference: float | None  # 1 baseline wins, 2 model wins, 0 or 1.5 draw; v2 weighted in [1, 2]
    annotator: str = ""
    dataset: str = ""

    def win(self) -> float | None:
        """The model's share of this verdict (a draw counts half), as alpaca-eval scores it."""
        p = self.preference
        if p is None:
            return None
        return 0.5 if p == 0 else p - 1.0


def _preference(value: object, path: Path, row: int) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise DataFileError(path, None, f"row {row}: field 'preference': expected a number, found {value!r}")
    try:
        p = float(value)  # type: ignore[arg-type]  # released v1 files hold strings and numbers
    except (TypeError, ValueError):
        raise DataFileError(path, None, f"row {row}: field 'preference': expected a number, found {value!r}") from None
    if math.isnan(p):
        return None
    if math.isinf(p):
        raise DataFileError(path, None, f"row {row}: field 'preference': {p} is not a finite number")
    if not (p == 0 or 1 <= p <= 2):
        raise DataFileError(path, None, f"row {row}: field 'preference': {p} is outside 0 or [1, 2]")
    return p


def read_annotations(path: Path | str) -> list[Annotation]:
    """Annotations from an alpaca-eval `annotations.json` (a list of objects)."""
    path = Path(path)
    rows = read_json(path, allow_nan=True)  # pandas-written files mark a missing preference NaN
    if rows == []:
        raise DataFileError(path, None, "is empty (a list of 0 annotations): nothing to read a win rate from")
    if not isinstance(rows, list):
        raise DataFileError(
            path, None, f"expected a non-empty JSON list of annotations, found {type(rows).__name__} {str(rows)[:40]}"
        )
    first = rows[0]
    if isinstance(first, dict) and "output" in first and "output_1" not in first:  # the usual mix-up
        raise DataFileError(
            path,
            None,
            "this is a model_outputs file (instruction, output), not annotations (output_1, output_2, preference); "
            "annotate the run first (bon eval alpaca-eval RUN_DIR), "
            "then read RUN_DIR/alpaca_eval/v2/annotations_cache.json",
        )
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataFileError(path, None, f"row {i}: expected a JSON object, found {type(row).__name__}")
        for key in ("instruction", "output_1", "output_2"):
            if not isinstance(row.get(key), str):
                raise DataFileError(path, None, f"row {i}: field {key!r}: expected a string, found {row.get(key)!r}")
        out.append(
            Annotation(
                instruction=row["instruction"],
                output_1=row["output_1"],
                generator_1=str(row.get("generator_1", "")),
                output_2=row["output_2"],
                generator_2=str(row.get("generator_2", "")),
                preference=_preference(row.get("preference"), path, i),
                annotator=str(row.get("annotator", "")),
                dataset=str(row.get("dataset", "")),
            )
        )
    return out
