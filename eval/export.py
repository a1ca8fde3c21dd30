"""A submission a maintainer can reproduce: results/NAME/model_outputs.json and models_configs/NAME/configs.yaml."""

from __future__ import annotations

from pathlib import Path

import yaml

from bon.core.config import PromptsConfig
from bon.core.errors import BonError
from bon.core.io import DataFileError, write_json_atomic
from bon.core.names import check_name
from bon.core.outputs import check_file
from bon.core.prompts import load_prompts
from bon.core.rundir import OUTPUTS, load_run, read_outputs


class ExportError(BonError, ValueError):
    """The run's outputs do not cover the AlpacaEval set exactly; the message lists the difference."""


def alpaca_eval_instructions(reference_outputs: Path | None) -> list[str]:
    """The 805 AlpacaEval instructions, from a local file or the hub data set."""
    source = str(reference_outputs) if reference_outputs else "tatsu-lab/alpaca_eval"
    return [p.instruction for p in load_prompts(PromptsConfig(source=source, reference_field=None))]


def _show(items: list[str], k: int = 3) -> str:
    head = "; ".join(repr(x[:60]) for x in items[:k])
    return head + (f" and {len(items) - k} more" if len(items) > k else "")


TOOL = "bon run CONFIG (config below), then bon export alpaca-eval"  # in every config bon writes: its own mark


def _bon_config(path: Path, name: str) -> bool:
    """Whether ``path`` is a models_configs entry bon wrote for ``name`` (its ``reproduction.tool`` says so)."""
    try:
        entry = yaml.safe_load(path.read_text(encoding="utf-8")).get(name)
        return str(entry["reproduction"]["tool"]).startswith(TOOL)
    except (OSError, ValueError, yaml.YAMLError, AttributeError, KeyError, TypeError):
        return False


def export_alpaca_eval(
    run_dir: Path,
    name: str,
    out_dir: Path = Path("."),
    reference_outputs: Path | None = None,
    pretty_name: str | None = None,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    check_name(name, "--name")  # one folder under results/ and models_configs/
    outputs_path = out_dir / "results" / name / "model_outputs.json"
    config_path = out_dir / "models_configs" / name / "configs.yaml"
    what = f"AlpacaEval export of {name!r}"
    check_file(config_path, what, lambda p: _bon_config(p, name), overwrite)
    check_file(outputs_path, what, lambda _: _bon_config(config_path, name), overwrite)  # its card is the config
    run_dir = Path(run_dir)
    _, manifest, config = load_run(run_dir)
    rows = read_outputs(run_dir)
    by_instruction = {r["instruction"]: r for r in rows}
    if len(by_instruction) != len(rows):
        raise DataFileError(run_dir / OUTPUTS, None, "holds the same instruction twice")
    expected = alpaca_eval_instructions(reference_outputs)
    missing = [q for q in expected if q not in by_instruction]
    extra = [q for q in by_instruction if q not in set(expected)]
    if missing or extra:  # upstream, a mismatch turns the length-controlled win rate into NaN
        parts = []
        if missing:
            parts.append(f"{len(missing)} AlpacaEval instructions have no output: {_show(missing)}")
        if extra:
            parts.append(f"{len(extra)} outputs are not AlpacaEval instructions: {_show(extra)}")
        raise ExportError(f"{run_dir / OUTPUTS}: " + "; ".join(parts))

    outputs = [{**by_instruction[q], "generator": name} for q in expected]  # AlpacaEval's order
    write_json_atomic(outputs_path, outputs)
    selected = manifest.get("selected_with", {"judge": config.judge.name})
    entry = {
        "fn_completions": None,  # outputs are precomputed by bon; alpaca-eval only annotates them
        "pretty_name": pretty_name or name,
        "completions_kwargs": {
            "model_name": config.policy.model,
            "temperature": config.policy.temperature,
            "top_p": config.policy.top_p,
            "max_new_tokens": config.policy.max_tokens,
        },
        "best_of_n": {
            "n": config.n,
            "judge": selected["judge"],
            "judge_description": manifest.get("judge_description"),
            "decline_below": selected.get("decline_below", config.selection.decline_below),
            "tie_break": selected.get("tie_break", config.selection.tie_break),
            "coverage": selected.get("coverage", config.selection.coverage),
            "threshold": selected.get("threshold"),  # the τ a coverage chose, when one did
            "length_penalty": selected.get("length_penalty", config.selection.length_penalty),
        },
        "reproduction": {
            "tool": TOOL,
            "seed": config.seed,
            "seeds": manifest.get("seeds"),
            "packages": manifest.get("packages"),
            "config": manifest["config"],
        },
    }
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump({name: entry}, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return outputs_path, config_path
