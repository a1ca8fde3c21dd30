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

from bon.core.prompts import PromptSourceError, load_prompts
from bon.core.records import Candidate, Judgement, Selection
from bon.core.rundir import load_run

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
    try:
        prompts = {p.id: p for p in load_prompts(config.prompts)}
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
    rows = []
    for pid in order:
        cands = sorted(by_prompt.get(pid, []), key=lambda c: c.index)
        p = prompts.get(pid)
        rows.append(
            {
                "id": pid,
                "instruction": p.instruction if p else pid,
                "reference": p.reference if p else None,
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
        if path.is_file():
            found[name] = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    return found


def render(data: dict[str, Any]) -> str:
    """The page: the template with the data in place (the template holds exactly one `__BON_DATA__`)."""
    template = resources.files("eval").joinpath("data/view.html").read_text(encoding="utf-8")
    return template.replace("__BON_DATA__", page_json(data), 1)


def write_view(run_dir: Path | str, out: Path | str | None = None) -> Path:
    """`bon view RUN`: RUN/view.html (or ``out``), one file that opens from disk with no network."""
    path = Path(out) if out is not None else Path(run_dir) / "view.html"
    html = render(run_data(run_dir))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
    return path
