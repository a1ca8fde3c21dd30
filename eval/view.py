"""`bon view`: one self-contained HTML page of a run (no server, no network): its data as JSON inside the page,
rendered on demand by the page's own script (eval/data/view.html).

Every string from a run is model or user text: it travels as JSON (with `<`, `>`, `&` escaped, so no text can
close the script element) and the page only ever sets it as text, never as HTML.
"""

from __future__ import annotations

import base64
import json
from collections import defaultdict
from importlib import resources
from pathlib import Path
from typing import Any

from bon.core.errors import BonError, ConfigError
from bon.core.io import present, read_json, write_text_atomic
from bon.core.outputs import check_file, head
from bon.core.prompts import PromptSourceError
from bon.core.records import Candidate, Comparison, Judgement, Selection
from bon.core.rundir import RunDir, RunDirError, load_run, read_manifest
from bon.pipeline.rejudge import run_prompts

IMAGES = ("gain/gain.png",)  # plots `bon eval` leaves in a run directory, shown in the overview when present


def page_json(data: Any) -> str:
    """JSON that is safe inside <script type="application/json">: no '<', '>', '&' or line separators as such."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    for char in "<>&\u2028\u2029":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


def run_data(run_dir: Path | str) -> dict[str, Any]:
    """What the page shows of a run: overview fields, prompts with their candidates, every judge's scores."""
    rd, manifest, config = load_run(run_dir)
    candidates = rd.read(Candidate)
    judgements = rd.read(Judgement)
    selections = rd.read(Selection)
    note = None
    try:  # every turn of a conversation run: later turns hold the kept answers
        prompts = {p.id: p for p in run_prompts(rd, config)[0]}
    except PromptSourceError as e:  # a run copied without its prompt file: ids stand in for instructions
        prompts, note = {}, f"prompt texts not shown: {e}"
    by_prompt: dict[str, list[Candidate]] = defaultdict(list)
    for c in candidates:
        by_prompt[c.prompt_id].append(c)
    judged: dict[tuple[str, str], dict[int, Judgement]] = defaultdict(dict)
    for j in judgements:
        judged[(j.judge, j.prompt_id)][j.candidate_index] = j
    chosen: dict[str, dict[str, Selection]] = defaultdict(dict)
    for s in selections:
        chosen[s.prompt_id][s.judge] = s
    judges = list(dict.fromkeys([config.judge.name, *(j.judge for j in judgements)]))
    main = (manifest.get("selected_with") or {}).get("judge") or config.judge.name
    order = list(prompts) or list(dict.fromkeys([c.prompt_id for c in candidates] + [s.prompt_id for s in selections]))
    done = {s.prompt_id for s in selections if s.judge == config.judge.name}
    if unfinished := [pid for pid in order if pid not in done]:
        note = "; ".join(
            filter(
                None,
                [
                    note,
                    f"the run is unfinished: {len(unfinished)} of {len(order)} prompts have no selection yet (rerun "
                    "`bon run` with its config to finish it); this page shows what is there",
                ],
            )
        )
    rows = []
    for pid in order:
        cands = sorted(by_prompt.get(pid, []), key=lambda c: c.index)
        p = prompts.get(pid)
        rows.append(
            {
                "id": pid,
                "instruction": p.instruction if p else pid,
                "reference": p.reference if p else None,
                "history": [[m.role, m.content] for m in p.history] if p else [],
                "candidates": [_candidate(c) for c in cands],
                "judgements": {
                    judge: [_judgement(judged[(judge, pid)].get(c.index)) for c in cands]
                    for judge in judges
                    if judged.get((judge, pid))
                },
                "selections": {
                    judge: {
                        "chosen": s.chosen_index,
                        "declined": s.declined,
                        "score": s.score,
                        "reason": s.reason,
                        "skipped": s.skipped,
                    }  # fmt: skip
                    for judge, s in chosen.get(pid, {}).items()
                },
            }
        )
    return {
        "kind": "run",
        "title": Path(run_dir).resolve().name,
        "overview": {
            "judge": main,
            "judge_description": manifest.get("judge_description", ""),
            "policy": config.policy.model,
            "n": config.n,
            "generator": manifest.get("generator", ""),
            "created": manifest.get("created", ""),
            "decline_below": config.selection.decline_below,
        },
        "judges": judges,
        "main": main,
        "note": note,
        "images": _images(rd.path),
        "prompts": rows,
    }


def _candidate(c: Candidate) -> dict[str, Any]:
    return {"i": c.index, "text": c.text, "tokens": c.completion_tokens, "finish": c.finish_reason, "flag": c.flag}


def _judgement(j: Judgement | None) -> dict[str, Any] | None:
    if j is None:
        return None
    return {"score": j.score, "flag": j.flag, "raw": j.raw, "details": dict(j.details)}


def _images(run_dir: Path) -> dict[str, str]:
    found = {}
    for name in IMAGES:
        path = run_dir / name
        if present(path):
            found[name] = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    return found


HUMAN = "human"  # the benchmark's own verdict, shown as one more judge: label, released preference or score


def compare_data(compare_dir: Path | str) -> dict[str, Any]:
    """What the page shows of a `bon compare` directory: per benchmark, its items with every judge's scores beside
    the human verdict, so the items where judges and humans disagree can be read side by side."""
    from bon.eval.compare import CompareConfig, load_benchmark, store_name

    folder = Path(compare_dir)
    manifest = read_manifest(folder / "manifest.json")
    try:
        cfg = CompareConfig.model_validate(manifest["config"])
    except (KeyError, ValueError) as e:
        raise RunDirError(f"{folder}/manifest.json: not a bon compare manifest ({str(e).splitlines()[0]})") from None
    results = read_json(folder / "results.json") if present(folder / "results.json") else {}
    thresholds = {
        (b["name"], r["judge"]): r.get("tie_threshold") for b in results.get("benchmarks", []) for r in b["results"]
    }
    benchmarks = []
    for spec in cfg.benchmarks:
        try:
            bench = load_benchmark(spec)
        except (BonError, OSError) as e:  # data moved since the comparison ran: say so, show the others
            missing: dict[str, Any] = {"name": spec.name, "kind": spec.kind, "note": f"not shown: {e}", "prompts": []}
            benchmarks.append(missing | {"judges": [], "main": None, "source": spec.path})
            continue
        labels = [j.key for j in cfg.judges]
        scores: dict[str, dict[tuple[str, int], Judgement]] = {}
        verdicts: dict[str, list[Comparison]] = {}
        rd = RunDir(folder)
        for label in labels:
            if scored := rd.read_at(store_name(spec.name, label, False), Judgement):
                scores[label] = {j.key: j for j in scored}
            if compared := rd.read_at(store_name(spec.name, label, True), Comparison):
                verdicts[label] = compared
        rows = [_compare_row(bench, p, scores, verdicts, thresholds, spec.name) for p in bench.prompts]
        judged = [label for label in labels if label in scores or label in verdicts]
        kept = [r for r in rows if any(j in r["judgements"] or j in r["selections"] for j in judged)]
        benchmarks.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "source": bench.source,
                "judges": [HUMAN, *judged] if bench.prompts and _human_scores(bench, bench.prompts[0]) else judged,
                "main": judged[0] if judged else HUMAN,
                "prompts": kept,
                "note": None,
            }
        )
    return {"kind": "compare", "title": folder.resolve().name, "benchmarks": benchmarks, "images": {}}


def _human_scores(bench: Any, prompt: Any) -> list[float | None] | None:
    """The benchmark's verdict per candidate: a pair's label (1 the better, 0.5 a tie), a released preference
    (the model's win share) or the reference score; None where the kind has none (a leaderboard)."""
    if bench.kind == "pairwise":
        item = next(it for it in bench.pairs if it.id == prompt.id)
        return [{0: 1.0, 1: 0.0, 2: 0.5}[item.label], {0: 0.0, 1: 1.0, 2: 0.5}[item.label]]
    if bench.kind == "pool" and bench.pool is not None:
        return [a.win() for a in bench.pool.table[prompt.instruction]]
    if bench.kind == "scores":
        return list(bench.values[prompt.id])
    return None


def _pick(scores: list[float | None], tie: float | None = None) -> dict[str, Any]:
    """A selection from scores: the best (lowest index on ties), or a tie when two scores differ by less than
    ``tie`` (a pairwise benchmark's threshold for scalar judges)."""
    usable = [(s, i) for i, s in enumerate(scores) if s is not None]
    if not usable:
        return {"chosen": None, "declined": True, "score": None, "reason": "no score", "skipped": False}
    score, best = max(usable, key=lambda si: (si[0], -si[1]))
    if tie is not None and len(usable) == 2 and abs(usable[0][0] - usable[1][0]) < tie:
        return {
            "chosen": None,
            "declined": True,
            "score": score,
            "reason": f"a tie (scores within {tie})",
            "skipped": False,
        }
    return {"chosen": best, "declined": False, "score": score, "reason": None, "skipped": False}


def _compare_row(bench, prompt, scores, verdicts, thresholds, name) -> dict[str, Any]:
    cands = bench.candidates[prompt.id]
    judgements: dict[str, list] = {}
    selections: dict[str, dict[str, Any]] = {}
    human = _human_scores(bench, prompt)
    if human is not None:
        judgements[HUMAN] = [{"score": h, "flag": None, "raw": None, "details": {}} for h in human]
        selections[HUMAN] = _pick(human, 0.5 if bench.kind == "pairwise" else None)
    for label, table in scores.items():
        row = [_judgement(table.get((prompt.id, c.index))) for c in cands]
        if any(row):
            judgements[label] = row
            selections[label] = _pick([j["score"] if j else None for j in row], thresholds.get((name, label)))
    for label, comparisons in verdicts.items():
        mine = [c for c in comparisons if c.prompt_id == prompt.id and c.first == 0]  # the pair in its given order
        if mine and mine[0].winner is not None:
            selections[label] = _pick(
                [1.0, 0.0] if mine[0].winner == 0 else [0.0, 1.0] if mine[0].winner == 1 else [0.5, 0.5], 0.5
            )
    return {
        "id": prompt.id,
        "instruction": prompt.instruction,
        "reference": prompt.reference,
        "candidates": [_candidate(c) for c in cands],
        "judgements": judgements,
        "selections": selections,
    }


GENERATOR = b'<meta name="generator" content="bon view">'  # in every page: what bon may write over


def render(data: dict[str, Any]) -> str:
    """The page: the template with the data in place (the template holds exactly one `__BON_DATA__`)."""
    template = resources.files("bon.eval").joinpath("data/view.html").read_text(encoding="utf-8")
    return template.replace("__BON_DATA__", page_json(data), 1)


def write_view(run_dir: Path | str, out: Path | str | None = None, notes: list[str] | None = None) -> Path:
    """`bon view RUN` (or a `bon compare` directory): RUN/view.html (or ``out``), one file that opens from disk.
    ``notes`` gets the page's note (e.g. that the run is unfinished), for the command to say too."""
    path = Path(out) if out is not None else Path(run_dir) / "view.html"
    if out is not None and not path.parent.is_dir():
        raise ConfigError(f"--out {path}: the folder {path.parent} does not exist")
    check_file(path, "view page", lambda p: GENERATOR in head(p), overwrite=True, flag="")  # redone in place
    is_compare = (Path(run_dir) / "results.json").is_file() or (Path(run_dir) / "judgements").is_dir()
    data = compare_data(run_dir) if is_compare else run_data(run_dir)
    if notes is not None and data.get("note"):
        notes.append(data["note"])
    html = render(data)
    write_text_atomic(path, html)
    return path
