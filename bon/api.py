"""bon from Python: configs, runs, judging, selection and exports, by the same code the CLI calls.

`import bon` loads none of this (nor torch): each public name is imported on first use (`bon.__getattr__`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bon.core.config import DEFAULT_MODEL, ModelConfig, RunConfig, config_from
from bon.core.config import load_config as _load_file
from bon.core.errors import ConfigError
from bon.core.io import write_jsonl_atomic
from bon.core.records import Candidate, Judgement, Prompt, Selection
from bon.core.rundir import load_run

if TYPE_CHECKING:
    import datasets
    import pandas

    from bon.core.judging import Judge
    from bon.eval.training import Exported
    from bon.pipeline.policy import Policy
    from bon.pipeline.runner import Progress

INPUT_PROMPTS = "input_prompts.jsonl"  # prompts given as a Python list, kept in the run directory


def load_config(
    source: str | Path | Mapping[str, Any] | None = None, overrides: Sequence[str] = (), **fields: Any
) -> RunConfig:
    """A validated run config from a YAML file, a mapping, or keyword fields (``n=4, judge={"name": "length"}``,
    over the defaults or over ``source``), with ``--set``-style ``overrides`` ("policy.temperature=0.7") last. A bad
    field is a `ConfigError` naming it (with the file and line, for a file), as `bon run` says it."""
    sets = [*(f"{key}={json.dumps(value)}" for key, value in fields.items()), *overrides]
    if source is None or isinstance(source, (str, Path)):
        return _load_file(source, sets)
    made = config_from(source, sets)
    assert isinstance(made, RunConfig)
    return made


def load_model(model: str = DEFAULT_MODEL, **options: Any) -> tuple[Any, Any]:
    """(a transformers causal LM, its tokenizer) for a model as a config names it (``embedded:<name>``, a local
    directory or .gguf file, a hub id; ``options``: the policy's ``gguf_file``, ``dtype``, ``device``, ``adapter``...),
    loaded as bon's transformers engine loads it but as a copy of your own: to train, or to give to `BestOfN`."""
    from bon.engines.hf import HFModel

    cfg = config_from({"model": model, **options}, [], ModelConfig)
    assert isinstance(cfg, ModelConfig)
    engine = HFModel(cfg)
    return engine.model, engine.tokenizer


def prompt_rows(prompts: Iterable[Any]) -> list[dict[str, Any]]:
    """Rows of a prompt file from strings (instructions), mappings (a prompt file's rows) or a `datasets.Dataset`."""
    rows = []
    for i, item in enumerate(prompts):
        if isinstance(item, str):
            rows.append({"instruction": item})
        elif isinstance(item, Mapping):
            rows.append(dict(item))
        else:
            raise ConfigError(
                f"prompts[{i}]: expected an instruction (str) or a row (dict), found {type(item).__name__}"
            )
    if not rows:
        raise ConfigError("prompts: the list is empty")
    return rows


class Run:
    """A run directory, read: its config, prompts and records, and what can be done with it (judge, select, export).

    ``Run(path)`` opens one made by `bon run` or `bon.run`; nothing is cached, so it reads what is there now.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._rd, self.manifest, self.config = load_run(self.path)

    def __repr__(self) -> str:
        return f"bon.Run({str(self.path)!r})"

    def prompts(self) -> list[Prompt]:
        """The prompts the run was given, in run order (a conversation's first turns)."""
        return self._rd.prompts(self.config)

    def candidates(self) -> list[Candidate]:
        return self._rd.read(Candidate)

    def judgements(self, judge: str | None = None) -> list[Judgement]:
        """Every judgement, or those of one judge label."""
        return [j for j in self._rd.read(Judgement) if judge is None or j.judge == judge]

    def selections(self, judge: str | None = None) -> list[Selection]:
        """Every selection, or those of one judge label."""
        return [s for s in self._rd.read(Selection) if judge is None or s.judge == judge]

    def judge(
        self,
        name: str,
        options: Mapping[str, Any] | None = None,
        label: str | None = None,
        *,
        allow_unjudged: bool = False,
        progress: Progress | None = None,
    ) -> int:
        """Score every candidate with another judge (``bon judge`` calls this); returns the judgements made. A judge
        that scores none of some prompt's candidates is an error unless ``allow_unjudged``."""
        from bon.pipeline.rejudge import judge_run

        return judge_run(self.path, name, dict(options or {}), label, progress, allow_unjudged)

    def select(
        self,
        judge: str,
        decline_below: float | None = None,
        coverage: float | None = None,
        length_penalty: float = 0.0,
        tie_break: str = "lowest_index",
        allow_unjudged: bool = False,
    ) -> list[Selection]:
        """Re-select every prompt with one judge's scores and rewrite the outputs (as `bon select`)."""
        from bon.pipeline.rejudge import select_run

        done = select_run(self.path, judge, decline_below, tie_break, allow_unjudged, coverage, length_penalty)
        return done.selections

    def export_preferences(
        self,
        out: str | Path,
        judge: str | None = None,
        overwrite: bool = False,
        selection: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Exported:
        """Preference pairs as a dataset folder (``bon export preferences`` calls this; options by their long names:
        ``strategy``, ``margin``, ``max_length_ratio``...). ``selection`` (``decline_below``, ``coverage``,
        ``length_penalty``, ``tie_break``) selects afresh in memory; by default the judge's stored selections decide."""
        from bon.eval.training import export_preferences

        return export_preferences(self.path, Path(out), judge, overwrite, _selection(selection), **options)

    def export_sft(
        self,
        out: str | Path,
        judge: str | None = None,
        overwrite: bool = False,
        selection: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Exported:
        """SFT rows as a dataset folder (``bon export sft`` calls this; ``top_k``, ``min_score``, ``format``...);
        ``selection`` as for `export_preferences`."""
        from bon.eval.training import export_sft

        return export_sft(self.path, Path(out), judge, overwrite, _selection(selection), **options)

    def rows(self) -> list[dict[str, Any]]:
        """One row per candidate: its prompt, text and finish, every judge's score (a column per label, None where it
        failed) and whether each judge's selection chose it (``chosen:LABEL``)."""
        prompts = {p.id: p for p in _every_turn(self)}
        scores: dict[tuple[str, int], dict[str, float | None]] = {}
        for j in self.judgements():
            scores.setdefault(j.key, {})[j.judge] = j.score
        chosen = {(s.prompt_id, s.judge): s.chosen_index for s in self.selections()}
        labels = sorted({j.judge for j in self.judgements()})
        picked = sorted({s.judge for s in self.selections()})
        out = []
        for c in self.candidates():
            p = prompts.get(c.prompt_id)
            row: dict[str, Any] = {
                "prompt_id": c.prompt_id,
                "instruction": p.instruction if p else None,
                "index": c.index,
                "text": c.text,
                "finish_reason": c.finish_reason,
                "completion_tokens": c.completion_tokens,
            }
            row.update({label: scores.get(c.key, {}).get(label) for label in labels})
            row.update({f"chosen:{label}": chosen.get((c.prompt_id, label)) == c.index for label in picked})
            out.append(row)
        return out

    def to_pandas(self) -> pandas.DataFrame:
        """`rows` as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.rows())

    def to_dataset(self) -> datasets.Dataset:
        """`rows` as a `datasets.Dataset`."""
        import datasets

        return datasets.Dataset.from_list(self.rows())


def _selection(selection: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if selection is None else dict(selection)


def _every_turn(run: Run) -> list[Prompt]:
    from bon.pipeline.rejudge import run_prompts

    return run_prompts(run._rd, run.config)[0]


def run(
    config: RunConfig | str | Path | Mapping[str, Any],
    prompts: Iterable[Any] | None = None,
    *,
    policy: Policy | None = None,
    judge: Judge | None = None,
    progress: Progress | None = None,
) -> Run:
    """Run (or resume) a best-of-N job, as `bon run` does, and open its directory.

    ``prompts`` (instructions, prompt-file rows, or a `datasets.Dataset`) replaces the config's prompt source: they are
    written to ``output_dir/input_prompts.jsonl``, which the stored config names, so `bon run` resumes it too.
    ``policy`` and ``judge`` are objects of your own (the `Policy` and `Judge` protocols) in place of the config's.
    """
    from bon.pipeline.runner import run as run_pipeline

    cfg = config if isinstance(config, RunConfig) else load_config(config)
    if prompts is not None:
        source = Path(cfg.output_dir) / INPUT_PROMPTS
        write_jsonl_atomic(source, prompt_rows(prompts))
        cfg = cfg.model_copy(update={"prompts": cfg.prompts.model_copy(update={"source": str(source)})})
    run_pipeline(cfg, progress=progress, policy=policy, judge=judge)
    return Run(cfg.output_dir)
