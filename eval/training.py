"""Training data out of a run: preference pairs and rejection-sampling SFT rows as Hugging Face datasets.

Rows follow TRL's dataset formats (conversational by default: lists of ``{"role", "content"}`` messages,
so a conversation keeps its history). A folder holds the same rows twice, for both loaders
(``load_dataset("parquet", data_dir=DIR)`` reads ``data/train-*.parquet``, ``load_from_disk(DIR)`` the
arrow files), and a dataset card (README.md) saying where the rows come from. The folder is written
beside its destination and renamed into place, so a refusal or a crash leaves nothing half-written, and
`--overwrite` replaces only bon's earlier export of the same kind (`bon.core.outputs`).
"""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, field_validator

from bon.core.config import RunConfig, SelectionConfig, Strict, validate_options
from bon.core.errors import BonError, did_you_mean
from bon.core.outputs import check_folder, replace_folder
from bon.core.records import Candidate, Judgement, Prompt, Selection
from bon.core.rundir import config_digest, load_run
from bon.engines.contract import derive_seed
from bon.pipeline.rejudge import judgements_of, run_candidates, run_prompts, selections_for

STRATEGIES = ("best-worst", "best-random", "margin")
SHARD = "data/train-00000-of-00001.parquet"
EXPORTS = {"preferences": "preferences export", "sft": "SFT export"}  # the kind an export's folder is marked with


class TrainingExportError(BonError, ValueError):
    """Nothing can be exported as asked; the message says why and nothing was written."""


def _did_you_mean(value: str, known: Sequence[str], what: str) -> str:
    hint = did_you_mean(value, known, n=1, cutoff=0.5)
    return f"unknown {what} {value!r}{'; ' + hint if hint else ''} (known: {', '.join(known)})"


class PreferenceOptions(Strict):
    """The options of `bon export preferences`, checked like any config."""

    strategy: str = Field("best-worst", description="best-worst, best-random (seeded) or margin (every pair)")
    margin: float = Field(0.0, ge=0.0, description="the least score difference of a pair (any strategy)")
    seed: int = Field(0, description="best-random: the seed of each prompt's rejected candidate")
    max_length_ratio: float | None = Field(
        None, gt=1.0, description="drop pairs whose chosen answer is more than this many times longer"
    )
    format: Literal["conversational", "standard"] = Field(
        "conversational", description="conversational: message lists; standard: plain strings (single turns)"
    )
    keep_truncated: bool = Field(False, description="also use candidates cut at max_tokens (left out by default)")
    token_ids: bool = Field(False, description="add chosen_ids and rejected_ids: the answers' tokens as sampled")

    @field_validator("strategy")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in STRATEGIES:
            raise ValueError(_did_you_mean(value, STRATEGIES, "strategy"))
        return value


class SFTOptions(Strict):
    """The options of `bon export sft`."""

    top_k: int = Field(1, ge=1, description="rows per prompt: the kept answer (1) or the k best-scored answers")
    min_score: float | None = Field(None, description="leave out answers scored below this")
    format: Literal["messages", "prompt-completion"] = Field(
        "messages", description="messages: one conversation per row; prompt-completion: two message lists"
    )
    keep_truncated: bool = Field(False, description="also use answers cut at max_tokens (left out by default)")
    token_ids: bool = Field(False, description="add completion_ids: the answer's tokens as the policy sampled them")


@dataclass(frozen=True)
class Exported:
    """What an export wrote: the folder, its rows, and what was left out (reason -> count)."""

    path: Path
    rows: int
    left_out: dict[str, int]
    prompts: int  # prompts that gave at least one row
    selection: str  # which selection it used: "judge cosine, threshold 0.5 (bon select's)"
    with_truncated: int | None = None  # the rows --keep-truncated would give, when it would give more


@dataclass(frozen=True)
class _Run:
    path: Path
    config: RunConfig
    label: str
    prompts: list[Prompt]  # every turn's prompt, in run order
    candidates: dict[str, dict[int, Candidate]]
    judged: dict[tuple[str, int], Judgement]
    skipped: set[str]
    selections: dict[str, Selection]  # the label's selections
    selection: dict[str, Any]  # how they were made (judge, threshold, coverage, λ, tie-break, where from)


def _read(run_dir: Path, label: str | None, selection: dict[str, Any] | None = None) -> _Run:
    """The run as an export reads it; ``selection`` (options of `bon select`) picks afresh in memory, else the
    stored selections of ``label`` are used, as the last `bon select` with it (or `bon run`) made them."""
    rd, manifest, config = load_run(run_dir)
    stored = manifest.get("selected_with", {})
    label = label or stored.get("judge") or config.judge.name
    built = run_prompts(rd, config)
    sampled, cands, skipped = run_candidates(rd, config, built)
    judged = judgements_of(rd, rd.read(Judgement), label, sampled, config.n)
    given = {k: v for k, v in (selection or {}).items() if v is not None}
    if given:
        options = validate_options(SelectionConfig, given)
        picks = selections_for(rd, config, label, options)
        said = {**options.model_dump(exclude={"decline_message"}), "source": "given to this export"}
    else:
        picks = [s for s in built[1] if s.judge == label]
        said = _stored_selection(stored, config, label, picks)
    thresholds = {s.threshold for s in picks if not s.skipped}
    said["threshold"] = thresholds.pop() if len(thresholds) == 1 else None
    mine = {s.prompt_id: s for s in picks}
    return _Run(Path(run_dir), config, label, built[0], cands, judged, set(skipped), mine, {"judge": label, **said})


def _stored_selection(stored: dict[str, Any], config: RunConfig, label: str, picks: list[Selection]) -> dict[str, Any]:
    """How the stored selections of ``label`` were made, as far as the manifest says."""
    keys = ("decline_below", "coverage", "length_penalty", "tie_break")
    if stored.get("judge") == label:
        return {**{k: stored.get(k) for k in keys}, "source": "the last bon select"}
    if label == config.judge.name and not stored:
        return {**config.selection.model_dump(include=set(keys)), "source": "bon run"}
    return {"source": f"stored selections of {label!r}" if picks else "none (no selection by this judge)"}


def selection_text(said: dict[str, Any]) -> str:
    """``judge cosine, threshold 0.5, coverage 0.5 (the last bon select)``: the options that shaped the picks."""
    parts = [f"judge {said['judge']}"]
    for key, name in (("threshold", "threshold"), ("coverage", "coverage"), ("length_penalty", "λ")):
        if isinstance(said.get(key), (int, float)) and said[key] != 0:
            parts.append(f"{name} {said[key]:g}")
    if said.get("tie_break") not in (None, "lowest_index"):
        parts.append(f"tie-break {said['tie_break']}")
    return ", ".join(parts) + f" ({said['source']})"


TRUNCATED = "truncated candidates (max_tokens reached)"


def _usable(run: _Run, p: Prompt, left_out: Counter, keep_truncated: bool) -> list[tuple[float, Candidate]] | None:
    """A prompt's (score, candidate) that can train, best first (lowest index on ties); None when the prompt
    gives no row (skipped, declined), counting why in ``left_out``."""
    if p.id in run.skipped:
        left_out["skipped prompts (never sampled)"] += 1
        return None
    if (s := run.selections.get(p.id)) is not None and s.declined:
        left_out["declined prompts"] += 1
        return None
    out = []
    for i in range(run.config.n):
        c, j = run.candidates[p.id][i], run.judged[(p.id, i)]
        if j.score is None:
            left_out["candidates without a score (failed judgements)"] += 1
        elif c.finish_reason == "length" and not keep_truncated:
            left_out[TRUNCATED] += 1
        else:
            out.append((j.score, c))
    return sorted(out, key=lambda sc: (-sc[0], sc[1].index))


def _messages(run: _Run, p: Prompt) -> list[dict[str, str]]:
    return p.messages(run.config.policy.system_prompt)


def _answer(c: Candidate) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": c.text}]


def preference_rows(run: _Run, opts: PreferenceOptions) -> tuple[list[dict[str, Any]], Counter]:
    """TRL preference rows (prompt, chosen, rejected and where they come from), in run order."""
    if opts.format == "standard" and any(p.history or p.conversation for p in run.prompts):
        raise TrainingExportError(
            "format 'standard' holds plain strings and this run holds conversations; use format conversational"
        )
    rows: list[dict[str, Any]] = []
    left_out: Counter = Counter()
    for p in run.prompts:
        usable = _usable(run, p, left_out, opts.keep_truncated)
        if usable is None:
            continue
        if len(usable) < 2:
            left_out["prompts with fewer than two scored candidates"] += 1
            continue
        for (s1, chosen), (s2, rejected) in _pairs(usable, opts, p.id):
            if s1 == s2:
                left_out["ties (equal scores)"] += 1
            elif s1 - s2 < opts.margin:
                left_out[f"pairs under the margin {opts.margin:g}"] += 1
            elif opts.max_length_ratio and len(chosen.text) > opts.max_length_ratio * len(rejected.text):
                left_out[f"pairs whose chosen answer is over {opts.max_length_ratio:g}x longer"] += 1
            else:
                rows.append(_preference_row(run, p, opts, (s1, chosen), (s2, rejected)))
    return rows, left_out


def _pairs(usable: list[tuple[float, Candidate]], opts: PreferenceOptions, prompt_id: str) -> list[tuple[Any, Any]]:
    if opts.strategy == "best-worst":
        return [(usable[0], usable[-1])]
    if opts.strategy == "best-random":
        return [(usable[0], random.Random(derive_seed(opts.seed, prompt_id)).choice(usable[1:]))]
    return [(a, b) for i, a in enumerate(usable) for b in usable[i + 1 :]]  # every pair, best first


def _ids(run: _Run, c: Candidate) -> list[int]:
    """A candidate's token ids as sampled, for `token_ids` exports; refused where the run has none for it."""
    if c.token_ids is None:
        raise TrainingExportError(
            f"{run.path / 'candidates.jsonl'}: candidate {c.index} of {c.prompt_id!r} has no token_ids (sampled "
            "before bon kept them, or by a served model, whose tokens bon cannot vouch for); export without "
            "--token-ids"
        )
    return list(c.token_ids)


def _preference_row(run: _Run, p: Prompt, opts: PreferenceOptions, best: Any, other: Any) -> dict[str, Any]:
    (s1, chosen), (s2, rejected) = best, other
    if opts.format == "conversational":
        texts: dict[str, Any] = {"prompt": _messages(run, p), "chosen": _answer(chosen), "rejected": _answer(rejected)}
    else:
        texts = {"prompt": p.instruction, "chosen": chosen.text, "rejected": rejected.text}
    if opts.token_ids:
        texts |= {"chosen_ids": _ids(run, chosen), "rejected_ids": _ids(run, rejected)}
    return {
        **texts,
        "prompt_id": p.id,
        "judge": run.label,
        "score_chosen": s1,
        "score_rejected": s2,
        "chosen_index": chosen.index,
        "rejected_index": rejected.index,
        "chosen_length": len(chosen.text),
        "rejected_length": len(rejected.text),
    }


def sft_rows(run: _Run, opts: SFTOptions) -> tuple[list[dict[str, Any]], Counter]:
    """Rejection-sampling SFT rows: each prompt's kept answer (top_k 1: the selection's pick) or its k best."""
    rows: list[dict[str, Any]] = []
    left_out: Counter = Counter()
    missing = [p.id for p in run.prompts if p.id not in run.selections and p.id not in run.skipped]
    if opts.top_k == 1 and missing:
        raise TrainingExportError(
            f"{len(missing)} prompts have no selection by {run.label!r} (e.g. {missing[0]!r}); "
            f"select with it first (bon select RUN --judge {run.label}) or give --top-k"
        )
    for p in run.prompts:
        usable = _usable(run, p, left_out, opts.keep_truncated)
        if usable is None:
            continue
        if opts.top_k == 1:
            kept = run.selections[p.id].chosen_index
            usable = [sc for sc in usable if sc[1].index == kept]
            if not usable:
                left_out["kept answers that cannot train (unscored or truncated)"] += 1
        for score, c in usable[: opts.top_k]:
            if opts.min_score is not None and score < opts.min_score:
                left_out[f"answers scored below {opts.min_score:g}"] += 1
                continue
            texts: dict[str, Any] = (
                {"messages": _messages(run, p) + _answer(c)}
                if opts.format == "messages"
                else {"prompt": _messages(run, p), "completion": _answer(c)}
            )
            if opts.token_ids:
                texts["completion_ids"] = _ids(run, c)
            rows.append({**texts, "prompt_id": p.id, "judge": run.label, "score": score, "index": c.index})
    return rows, left_out


def export_preferences(
    run_dir: Path,
    out: Path,
    label: str | None = None,
    overwrite: bool = False,
    selection: dict[str, Any] | None = None,
    **options: Any,
) -> Exported:
    """Preference pairs of ``label``'s scores; ``selection`` (`bon select`'s options) decides which prompts are
    declined, else the run's stored selections do."""
    opts = validate_options(PreferenceOptions, options)
    what = f"strategy {opts.strategy}" + (f", margin {opts.margin:g}" if opts.strategy == "margin" else "")
    return _export("preferences", opts, preference_rows, what, run_dir, out, label, overwrite, selection)


def export_sft(
    run_dir: Path,
    out: Path,
    label: str | None = None,
    overwrite: bool = False,
    selection: dict[str, Any] | None = None,
    **options: Any,
) -> Exported:
    """SFT rows of ``label``'s picks (top_k 1) or best scores; ``selection`` as for `export_preferences`."""
    opts = validate_options(SFTOptions, options)
    what = "the kept answer per prompt" if opts.top_k == 1 else f"the {opts.top_k} best-scored answers per prompt"
    return _export("sft", opts, sft_rows, what, run_dir, out, label, overwrite, selection)


Opts = TypeVar("Opts", PreferenceOptions, SFTOptions)


def _export(
    kind: str,
    opts: Opts,
    rows_of: Callable[[_Run, Opts], tuple[list[dict[str, Any]], Counter]],
    what: str,
    run_dir: Path,
    out: Path,
    label: str | None,
    overwrite: bool,
    selection: dict[str, Any] | None,
) -> Exported:
    """One export of either kind: ``out`` checked before any work, the run read, its rows made (and, where
    truncated candidates were left out, counted as --keep-truncated would make them), the folder written."""
    check_folder(Path(out), EXPORTS[kind], overwrite, reading=[Path(run_dir)])
    run = _read(Path(run_dir), label, selection)
    rows, left_out = rows_of(run, opts)
    with_truncated = None
    if left_out.get(TRUNCATED):
        with_truncated = len(rows_of(run, opts.model_copy(update={"keep_truncated": True}))[0])
    card = _card(run, kind, what, opts.model_dump(), left_out)
    return _write(run, rows, left_out, out, overwrite, card, with_truncated)


def _card(run: _Run, kind: str, what: str, options: dict[str, Any], left_out: Counter) -> dict[str, Any]:
    return {
        "kind": kind,
        "what": what,
        "run": {
            "config_digest": config_digest(run.config),
            "policy": run.config.policy.model,
            "judge": run.label,
            "n": run.config.n,
            "prompts": run.config.prompts.source,
        },
        "options": options,
        "selection": run.selection,
        "left_out": dict(sorted(left_out.items())),
    }


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """datasets' progress bars off while writing (bon prints one line)."""
    from datasets.utils import logging as ds_logging

    was = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            ds_logging.enable_progress_bar()


def _write(
    run: _Run,
    rows: list[dict[str, Any]],
    left_out: Counter,
    out: Path,
    overwrite: bool,
    card: dict[str, Any],
    with_truncated: int | None,
) -> Exported:
    """The rows as a dataset folder at ``out`` (refused: no row; ``out`` occupied without ``overwrite``, or by
    anything but bon's earlier export of this kind)."""
    if not rows:
        said = "; ".join(f"{n} {why}" for why, n in sorted(left_out.items())) or "the run has no prompts"
        more = f" (--keep-truncated would give {with_truncated})" if with_truncated else ""
        raise TrainingExportError(
            f"no row to export from {run.label!r}'s judgements: left out {said}{more}; nothing written"
        )
    import datasets

    with replace_folder(Path(out), EXPORTS[card["kind"]], overwrite, reading=[run.path]) as tmp:
        with _quiet_datasets():
            ds = datasets.Dataset.from_list(rows)
            ds.save_to_disk(str(tmp))
            (tmp / "data").mkdir()
            ds.to_parquet(str(tmp / SHARD))
        (tmp / "README.md").write_text(_card_text(card, ds, len(rows)), encoding="utf-8")
    prompts = len({r["prompt_id"] for r in rows})
    extra = with_truncated if with_truncated and with_truncated > len(rows) else None
    return Exported(out, len(rows), dict(sorted(left_out.items())), prompts, selection_text(run.selection), extra)


def _card_text(card: dict[str, Any], ds: Any, rows: int) -> str:
    """A dataset card: YAML header (features, split, config) and a few lines saying what the rows are."""
    import datasets
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCardData

    info = ds.info.copy()
    info.splits = datasets.SplitDict({"train": datasets.SplitInfo("train", num_examples=rows)})
    data = DatasetCardData(
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
        tags=["bon", "best-of-n", "trl", card["kind"]],
        bon=card,
    )
    DatasetInfosDict({"default": info}).to_dataset_card_data(data)  # features and splits as the hub reads them
    run = card["run"]
    left = ", ".join(f"{n} {why}" for why, n in card["left_out"].items()) or "nothing"
    body = [
        f"# {card['kind']} from a bon run",
        "",
        f"{rows} rows: {card['what']}, scored by `{run['judge']}` over {run['n']} candidates per prompt sampled "
        f"from `{run['policy']}` on `{run['prompts']}` (run config digest `{run['config_digest']}`). "
        f"Selection: {selection_text(card['selection'])}. Left out: {left}.",
        "",
        'Load with `datasets.load_dataset("parquet", data_dir=DIR)` or `datasets.load_from_disk(DIR)`; the rows '
        "follow TRL's dataset formats.",
        "",
    ]
    return "---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(body)


def push_to_hub(folder: Path, repo: str) -> str:
    """Upload an exported folder as a dataset repository; offline, one clear error before anything is sent."""
    from huggingface_hub import HfApi

    from bon.engines.models import hub_reachable

    if not hub_reachable():
        raise TrainingExportError(
            f"--push-to-hub {repo}: the Hugging Face hub cannot be reached (offline); the dataset is complete in "
            f"{folder}, push it later with `huggingface-cli upload {repo} {folder} --repo-type dataset`"
        )
    api = HfApi()
    api.create_repo(repo, repo_type="dataset", exist_ok=True)
    api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="dataset")
    return f"https://huggingface.co/datasets/{repo}"
