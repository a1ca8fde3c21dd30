"""`bon eval alpaca-eval`: annotate a run's outputs against the v1/v2 baseline with alpaca-eval.

Annotators: an official alpaca-eval config (needs OPENAI_API_KEY), ``local:MODEL`` (a local model
through alpaca-eval's own config mechanism: its v2 classification prompt, scored by the model's
next-token probabilities of "m" and "M"), or ``precomputed:FILE`` (annotations already made).
Annotations are cached in the run directory, so a rerun costs nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bon.core.config import ModelConfig, validate_options
from bon.core.errors import BonError, did_you_mean
from bon.core.io import VERBOSE, DataFileError, held_stderr, read_json
from bon.core.prompts import PromptSourceError
from bon.core.rundir import read_outputs
from bon.eval.ae import WinRate, alpaca_eval, check_lc_data, environment_has_openai_key, full_winrate
from bon.eval.annotations import Annotation, read_annotations

VERSIONS = {
    1: {"annotator": "alpaca_eval_gpt4", "baseline": "text_davinci_003", "hub": "alpaca_eval.json"},
    2: {
        "annotator": "weighted_alpaca_eval_gpt4_turbo",
        "baseline": "gpt4_turbo",
        "hub": "alpaca_eval_gpt4_baseline.json",
    },
}


class AnnotatorError(BonError, ValueError):
    """An annotator cannot run here; one line saying what is missing."""


@dataclass(frozen=True)
class EvalResult:
    annotator: str
    version: int
    winrate: WinRate
    annotations: list[Annotation]
    note: str | None  # e.g. that a local CPU annotator is a plumbing test, not a verdict


def reference_rows(version: int, reference_outputs: Path | None) -> list[dict[str, Any]]:
    """The baseline outputs (a list of AlpacaEval rows) from a local file or the hub."""
    if reference_outputs is not None:
        rows = read_json(reference_outputs)
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DataFileError(reference_outputs, None, "expected a JSON list of AlpacaEval rows (objects)")
        if not rows:
            raise DataFileError(reference_outputs, None, "is empty (a list of 0 rows): no baseline answers")
        for i, row in enumerate(rows):
            for key in ("instruction", "output"):
                if not isinstance(row.get(key), str):
                    raise DataFileError(
                        reference_outputs, None, f"row {i}: field {key!r}: expected a string, found {row.get(key)!r}"
                    )
        return rows
    import datasets

    url = f"hf://datasets/tatsu-lab/alpaca_eval/{VERSIONS[version]['hub']}"
    try:
        return list(datasets.load_dataset("json", data_files=url, split="train"))
    except Exception as e:  # offline: ConnectionError, httpx errors, OSError
        raise PromptSourceError(
            f"could not load the AlpacaEval {VERSIONS[version]['baseline']} baseline outputs from the hub "
            f"({type(e).__name__}); pass --reference-outputs "
            f"../shared/data/alpaca_eval/reference_outputs_v{version}.json"
        ) from None


def match_baseline(
    outputs: Sequence[dict], reference: Sequence[dict], source: Any = "model_outputs.json"
) -> list[dict]:
    """The baseline row of each output's instruction; ``source`` names where the outputs came from in errors."""
    by_q = {r["instruction"]: r for r in reference}
    missing = sorted({o["instruction"] for o in outputs if o["instruction"] not in by_q})
    if missing:
        asked = len({o["instruction"] for o in outputs})  # distinct: gain asks several picks per instruction
        raise DataFileError(
            source,
            None,
            f"{len(missing)} of {asked} instructions have no baseline output (e.g. {missing[0][:60]!r}); "
            "AlpacaEval compares answers to its own instructions (prompts.source: an AlpacaEval set)",
        )
    return [by_q[o["instruction"]] for o in outputs]


class LocalAnnotator:
    """alpaca-eval's `fn_completions` for a local model: top logprobs of "m" and "M" after the prompt."""

    def __init__(self, cfg: ModelConfig):
        from bon.engines import load_engine

        self.engine = load_engine(cfg)
        self.tokens = {}
        for t in ("m", "M"):
            ids = self.engine.tokenizer.encode(t, add_special_tokens=False)
            if len(ids) != 1:
                raise AnnotatorError(f"the local annotator's tokenizer splits {t!r} into {len(ids)} tokens")
            self.tokens[t] = ids[0]

    def __call__(self, prompts: Sequence[str], **_: Any) -> dict[str, list]:
        # the prompt is ChatML text ending with the user turn; the assistant answers next
        ids = [self.engine.text_ids(p + "\n<|im_start|>assistant\n") for p in prompts]
        logprobs = self.engine.next_token_logprobs(ids, list(self.tokens.values()))
        completions = [
            {
                "logprobs": {
                    "content": [
                        {
                            "token": "m",
                            "logprob": lp.get(self.tokens["m"], -math.inf),
                            "top_logprobs": [
                                {"token": t, "logprob": lp.get(i, -math.inf)} for t, i in self.tokens.items()
                            ],
                        }
                    ]
                },
                "text": "m",
            }
            for lp in logprobs
        ]
        return {
            "completions": ["m"] * len(prompts),
            "completions_all": completions,
            "price_per_example": [0.0] * len(prompts),
            "time_per_example": [0.0] * len(prompts),
        }


def _local_config(folder: Path, name: str) -> Path:
    ae_dir = Path(alpaca_eval().__file__).parent / "evaluators_configs"
    entry = {
        name: {
            "prompt_template": str(ae_dir / "alpaca_eval_clf_gpt4_turbo" / "alpaca_eval_clf.txt"),
            "fn_completion_parser": "logprob_parser",
            "completion_parser_kwargs": {
                "numerator_token": "m",
                "denominator_tokens": ["m", "M"],
                "is_binarize": False,
            },
            "completion_key": "completions_all",
            "batch_size": 1,
        }
    }
    path = (folder / name / "configs.yaml").resolve()  # alpaca-eval reads relative paths from its own folder
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(entry, sort_keys=False), encoding="utf-8")
    return path


class _Held(logging.Handler):
    """Keeps log records instead of printing them."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _held_logs() -> Iterator[None]:
    """While the block runs, log records (alpaca-eval logs on the root logger) are held back.

    If the block fails, its one-line error is all the user sees; with `bon --verbose` the held warnings are
    printed after it, without tracebacks (else nothing: alpaca-eval's notes are not a user's to act on).
    """
    root, held = logging.getLogger(), _Held()
    handlers = root.handlers[:]
    root.handlers = [held]
    try:
        yield
    finally:
        root.handlers = handlers
    for record in held.records if VERBOSE.get() else []:
        if record.levelno >= logging.WARNING:
            record.exc_info, record.exc_text = None, None
            root.handle(record)


@contextlib.contextmanager
def _openai_server(base_url: str | None) -> Iterator[None]:
    """While the block runs, OpenAI clients built without a base URL (alpaca-eval's) use ``base_url``.

    A local server needs no key: a placeholder is set when the environment has none.
    """
    if base_url is None:
        yield
        return
    saved = {k: os.environ.get(k) for k in ("OPENAI_BASE_URL", "OPENAI_API_KEY")}
    os.environ["OPENAI_BASE_URL"] = base_url
    os.environ.setdefault("OPENAI_API_KEY", "EMPTY")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def annotator_config(annotator: str) -> Path:
    """An alpaca-eval annotator's configs.yaml, refused with did-you-mean when no config has that name."""
    configs = Path(alpaca_eval().__file__).parent / "evaluators_configs"
    config_path = configs / annotator / "configs.yaml"
    if not config_path.exists():
        hint = did_you_mean(annotator, sorted(p.name for p in configs.iterdir() if (p / "configs.yaml").exists()))
        raise AnnotatorError(
            f"unknown annotator {annotator!r}: use an alpaca-eval config name, local:MODEL or precomputed:FILE"
            + (f"; {hint}" if hint else "")
        )
    return config_path


def check_annotator(annotator: str) -> None:
    """Refuse a misspelt alpaca-eval annotator name before any run file is read or anything is annotated."""
    if annotator.partition(":")[0] not in ("local", "precomputed"):
        annotator_config(annotator)


def annotate(
    pairs: Sequence[tuple[dict, dict]],
    annotator: str,
    cache_dir: Path,
    backend: str = "transformers",
    base_url: str | None = None,
) -> tuple[list[Annotation], str | None]:
    """alpaca-eval annotations of (baseline row, model row) pairs; cached under ``cache_dir``.

    ``base_url`` points an official (OpenAI-client) annotator at any OpenAI-compatible server; its
    verdicts are cached apart from other servers'.
    """
    import pandas as pd

    kind, _, arg = annotator.partition(":")
    note = None
    kwargs: dict[str, Any] = {}
    if kind == "local":
        flags = {"model": "--annotator local:MODEL", "backend": "--backend"}
        cfg = validate_options(ModelConfig, {"model": arg, "backend": backend}, flags)
        safe = "local_" + "".join(ch if ch.isalnum() else "_" for ch in arg)
        config_path = _local_config(cache_dir, safe)
        kwargs["fn_completions"] = LocalAnnotator(cfg)
        if "SmolLM2" in arg:
            note = (
                "local annotator SmolLM2-135M: a plumbing smoke test of the annotation path, not a meaningful verdict"
            )
    else:
        config_path = annotator_config(annotator)
        if base_url:
            cache_dir = cache_dir / ("server-" + hashlib.sha256(base_url.encode()).hexdigest()[:10])
        elif "openai" in config_path.read_text() and not environment_has_openai_key():
            raise AnnotatorError(
                f"annotator {annotator!r} calls the OpenAI API: set OPENAI_API_KEY (nothing was annotated)"
            )
    ae = alpaca_eval()
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        with (
            _held_logs(),
            held_stderr(),  # its tqdm bars: shown after a success, never around a failure's one line
            _openai_server(base_url),
        ):  # alpaca-eval logs API failures with logging.exception
            annotator_obj = ae.annotators.PairwiseAnnotator(
                annotators_config=str(config_path),
                caching_path=str((cache_dir / "annotations_cache.json").resolve()),
                **kwargs,
            )
            df = annotator_obj.annotate_head2head(
                outputs_1=pd.DataFrame([b for b, _ in pairs]), outputs_2=pd.DataFrame([m for _, m in pairs])
            )
    except Exception as e:  # openai's errors (unreachable server, refused key) are not ours to print as a traceback
        if type(e).__module__.split(".")[0] != "openai":
            raise
        detail = str(e).splitlines()[0] if str(e) else "no detail"
        raise AnnotatorError(
            f"annotator {annotator!r}: the API could not be reached "
            f"or refused the request ({type(e).__name__}: {detail}); "
            "nothing new was annotated or cached"
        ) from None
    rows = df if isinstance(df, list) else df.to_dict("records")
    out = []
    for r in rows:
        p = r.get("preference")
        out.append(
            Annotation(
                r["instruction"],
                r["output_1"],
                str(r.get("generator_1", "")),
                r["output_2"],
                str(r.get("generator_2", "")),
                None if p is None or (isinstance(p, float) and math.isnan(p)) else float(p),
                annotator,
                str(r.get("dataset", "")),
            )
        )
    return out, note


def precomputed(pairs: Sequence[tuple[dict, dict]], path: Path) -> list[Annotation]:
    table = {(a.instruction, a.output_2): a for a in read_annotations(path)}
    looked_up = [table.get((m["instruction"], m["output"])) for _, m in pairs]
    found = [a for a in looked_up if a is not None]
    missing = len(looked_up) - len(found)
    if missing:
        raise DataFileError(
            path, None, f"holds no annotation for {missing} of {len(pairs)} (instruction, output) pairs of this run"
        )
    if all(a.preference is None for a in found):
        raise DataFileError(path, None, f"holds no preference (all null) for the {len(pairs)} pairs of this run")
    return found


def annotations_for(
    pairs: Sequence[tuple[dict, dict]],
    annotator: str,
    cache_dir: Path,
    backend: str = "transformers",
    base_url: str | None = None,
) -> tuple[list[Annotation], str | None]:
    """Annotations of (baseline row, model row) pairs by any annotator kind, and a note on its meaning."""
    kind, colon, arg = annotator.partition(":")
    if colon and kind in ("precomputed", "local") and not arg.strip():  # Path("") would read the current directory
        what = "an annotations file" if kind == "precomputed" else "a model"
        raise AnnotatorError(
            f"--annotator {annotator!r} names no {what}: use {kind}:{'FILE' if kind == 'precomputed' else 'MODEL'}"
        )
    if kind == "precomputed":
        return precomputed(pairs, Path(arg)), None
    annotations, note = annotate(pairs, annotator, cache_dir, backend, base_url)
    if all(a.preference is None for a in annotations):
        raise AnnotatorError(
            f"annotator {annotator!r} gave no preference for any of the {len(pairs)} pairs; nothing to score"
        )
    return annotations, note


def run_alpaca_eval(
    run_dir: Path,
    version: int,
    annotator: str | None = None,
    reference_outputs: Path | None = None,
    lc_data: Path | None = None,
    backend: str = "transformers",
    max_instances: int | None = None,
    base_url: str | None = None,
) -> EvalResult:
    run_dir = Path(run_dir)
    if lc_data is not None and Path(lc_data).is_file():
        check_lc_data(lc_data)  # before any annotation is paid for
    annotator = annotator or VERSIONS[version]["annotator"]
    check_annotator(annotator)
    outputs = read_outputs(run_dir)[:max_instances]
    baseline = match_baseline(outputs, reference_rows(version, reference_outputs), run_dir / "model_outputs.json")
    pairs = list(zip(baseline, outputs))
    annotations, note = annotations_for(pairs, annotator, run_dir / "alpaca_eval" / f"v{version}", backend, base_url)
    lc = len(outputs) == 805  # the LC model assumes AlpacaEval's 805-instruction order
    result = full_winrate(annotations, lc=lc, lc_data=lc_data)
    if not lc:
        result = WinRate(
            **{
                **result.as_json(),
                "lc_note": f"length-controlled win rate needs all 805 instructions; this run has {len(outputs)}",
            }
        )
    return EvalResult(annotator, version, result, annotations, note)
