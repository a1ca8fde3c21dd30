"""The one module that imports alpaca-eval; win rates always come from its own metrics."""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bon.core.io import DataFileError, read_text
from bon.eval.annotations import Annotation, AnnotationError

LC_REPO = "tatsu-lab/alpaca_eval"
LC_FILE = "df_gamed.csv"
LC_COLUMNS = ("model", "index", "instruction_difficulty", "not_gamed_baseline")  # what alpaca-eval's GLM reads


def alpaca_eval():
    """alpaca_eval, imported without its side effects on this process's logging."""
    root = logging.getLogger()
    level = root.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its pkg_resources import warns on every start
        import alpaca_eval
        import alpaca_eval.metrics  # noqa: F401
    root.setLevel(level)  # alpaca_eval sets the root logger to INFO on import
    return alpaca_eval


def frame(annotations: Sequence[Annotation]):
    """A DataFrame in alpaca-eval's column names, for its metric functions only."""
    import pandas as pd

    return pd.DataFrame([asdict(a) for a in annotations])


@dataclass(frozen=True)
class WinRate:
    """alpaca-eval's head-to-head metrics, under its own key names (percent)."""

    win_rate: float
    standard_error: float
    discrete_win_rate: float
    n_total: int
    n_wins: float
    n_wins_base: float
    n_draws: float
    length_controlled_winrate: float | None = None
    lc_note: str | None = None  # why the length-controlled win rate is missing

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def winrate(annotations: Sequence[Annotation], source: str = "the annotations") -> dict[str, float]:
    """`alpaca_eval.metrics.get_winrate` on these annotations (``source`` names them in an error)."""
    if not any(a.preference is not None for a in annotations):  # alpaca-eval would fail deep inside pandas
        raise AnnotationError(
            f"{source}: none of {len(annotations)} annotations holds a preference, so there is no win rate; "
            "annotate them first (bon eval alpaca-eval)"
        )
    return alpaca_eval().metrics.get_winrate(frame(annotations))


def check_lc_data(path: Path | str) -> None:
    """Refuse a --lc-data file that is not AlpacaEval's df_gamed.csv (its header), naming the missing columns."""
    header = next(csv.reader(read_text(path).splitlines()[:1]), [])
    missing = [c for c in LC_COLUMNS if c not in header]
    if missing:
        raise DataFileError(path, 1, f"not AlpacaEval's {LC_FILE}: no column {', '.join(map(repr, missing))}")


def _lc_source(lc_data: Path | None) -> tuple[str | None, str | None]:
    """(path to df_gamed.csv or None to let alpaca-eval download it, or a note why LC is unavailable)."""
    if lc_data is not None:
        if Path(lc_data).is_dir():  # a folder is a misreading, never a quiet note (a missing file is offline LC)
            raise DataFileError(lc_data, None, f"is a directory; --lc-data takes the file {LC_FILE}")
        if not Path(lc_data).is_file():
            return None, f"length-controlled win rate unavailable: --lc-data {lc_data} does not exist"
        check_lc_data(lc_data)
        return str(lc_data), None
    from huggingface_hub import try_to_load_from_cache

    from bon.engines.models import hub_reachable

    ae = alpaca_eval()
    cached = try_to_load_from_cache(LC_REPO, LC_FILE, cache_dir=ae.constants.DEFAULT_CACHE_DIR, repo_type="dataset")
    if isinstance(cached, str):
        return cached, None
    if hub_reachable():
        return None, None
    return None, (
        f"length-controlled win rate unavailable: it needs {LC_FILE} of the hub data set {LC_REPO}, which is not "
        "in the Hugging Face cache and the hub cannot be reached; pass --lc-data PATH/df_gamed.csv"
    )


@contextlib.contextmanager
def _lc_file(path: str | None) -> Iterator[None]:
    """Make alpaca-eval read df_gamed.csv from ``path`` instead of downloading it."""
    if path is None:
        yield
        return
    glm = alpaca_eval().metrics.glm_winrate
    original = glm.hf_hub_download

    def local(repo_id: str, filename: str, **kwargs: Any) -> str:
        return path if filename == LC_FILE else original(repo_id=repo_id, filename=filename, **kwargs)

    glm.hf_hub_download = local
    try:
        yield
    finally:
        glm.hf_hub_download = original


def full_winrate(
    annotations: Sequence[Annotation], lc: bool = True, lc_data: Path | None = None, source: str = "the annotations"
) -> WinRate:
    """Win rate, standard error, discrete win rate and, when its data is at hand, the LC win rate.

    The LC win rate assumes the rows follow AlpacaEval's 805-instruction order.
    """
    base = winrate(annotations, source)
    fields: dict[str, Any] = {
        k: float(base[k])
        for k in ("win_rate", "standard_error", "discrete_win_rate", "n_wins", "n_wins_base", "n_draws")
    }
    fields["n_total"] = int(base["n_total"])
    if not lc:
        return WinRate(**fields, lc_note="length-controlled win rate not requested")
    path, note = _lc_source(lc_data)
    if note:
        return WinRate(**fields, lc_note=note)
    with _lc_file(path), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            lc_metrics = alpaca_eval().metrics.get_length_controlled_winrate(
                frame(annotations), save_weights_dir=None, is_add_glm_preference_inplace=False
            )
        except (KeyError, ValueError, TypeError) as e:  # a df_gamed.csv with the right header but other values
            if lc_data is None:
                raise
            raise DataFileError(
                lc_data, None, f"alpaca-eval cannot fit its length-controlled model on it ({type(e).__name__}: {e})"
            ) from None
    return WinRate(**fields, length_controlled_winrate=float(lc_metrics["length_controlled_winrate"]))


def leaderboard_row(version: int, model: str) -> dict[str, float] | None:
    """The published row of ``model`` in the leaderboard CSV shipped inside alpaca-eval."""
    import pandas as pd

    ae = alpaca_eval()
    csv = {
        1: "data_AlpacaEval/alpaca_eval_gpt4_leaderboard.csv",
        2: "data_AlpacaEval_2/weighted_alpaca_eval_gpt4_turbo_leaderboard.csv",
    }[version]
    board = pd.read_csv(Path(ae.__file__).parent / "leaderboards" / csv, index_col=0)
    return board.loc[model].to_dict() if model in board.index else None


def environment_has_openai_key() -> bool:
    return bool(os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_API_KEYS"))
