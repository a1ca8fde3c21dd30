"""`bon view` at the headline size: 805 prompts x 32 candidates (25,760 answers), two judges, in headless Chromium.

    .venv/bin/python benchmarks/view_size.py

Builds a synthetic run directory (answers of ~1,200 characters, Self-J digit distributions and a second judge),
writes its page, and reports the file size, the time to write it, and in the browser the time to first paint,
to the first page of prompts, and to a search over every candidate; the same for the 6-prompt demo shape, as the
baseline measured in the same run (the page renders one page of prompts, so paint should not grow with the run).
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = "the a model answer prompt judge score because first then which would could sample rank".split()


def synthetic_run(folder: Path, prompts: int, n: int) -> Path:
    from bon.core.config import load_config
    from bon.core.prompts import load_prompts
    from bon.core.records import Candidate, Judgement, Selection
    from bon.core.rundir import RunDir

    rng = random.Random(0)
    source = folder / "prompts.jsonl"
    source.write_text(
        "".join(f'{{"id": "q{i}", "instruction": "Question {i}: explain topic {i}."}}\n' for i in range(prompts))
    )
    cfg = load_config(None, [f"prompts.source={source}", f"n={n}", f"output_dir={folder / 'run'}", "judge.name=selfj"])
    rd, _ = RunDir.open(cfg, {"judge_description": "synthetic"}, load_prompts(cfg.prompts))
    cands, judged, selected = [], [], []
    for i in range(prompts):
        scores = []
        for k in range(n):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(120, 280)))
            cands.append(Candidate(f"q{i}", k, text, k, 20, len(text) // 5, "stop", "synthetic"))
            probs = [rng.random() for _ in range(10)]
            mass = sum(probs)
            score = sum(d * p for d, p in enumerate(probs)) / mass
            scores.append(score)
            details = {"digit_probs": [p / mass * 0.3 for p in probs], "digit_mass": 0.3}
            judged.append(Judgement(f"q{i}", k, "selfj", score, details=details))
            judged.append(Judgement(f"q{i}", k, "length", float(len(text))))
        best = max(range(n), key=lambda k: scores[k])
        selected.append(Selection(f"q{i}", best, False, scores[best], "selfj"))
    rd.append(cands)
    rd.append(judged)
    rd.append(selected)
    return rd.path


def measure(run_dir: Path) -> dict[str, float]:
    from bon.eval.view import write_view
    from tests.browser import Browser, find_chromium

    t0 = time.perf_counter()
    page = write_view(run_dir)
    out = {"write_s": time.perf_counter() - t0, "size_mb": page.stat().st_size / 2**20}
    chromium = find_chromium()
    if chromium is None:
        return out
    with Browser(chromium, timeout=300) as b:
        t0 = time.perf_counter()
        b.open(page)
        out["load_s"] = time.perf_counter() - t0
        out["first_paint_ms"] = b.js(
            "new Promise(r => setTimeout(() => r(performance.getEntriesByType('paint').map(e => e.startTime)"
            ".reduce((a, b) => Math.max(a, b), 0)), 100))"
        )
        out["prompts_on_page"] = b.js("document.querySelectorAll('.prompt').length")
        out["search_ms"] = b.js(
            "(() => { const t = performance.now(); const s = document.getElementById('search');"
            " s.value = 'because rank'; update(); return performance.now() - t; })()"
        )
        out["console_errors"] = len(b.console_errors())
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows = {}
        for name, prompts, n in (("demo shape (6 x 8)", 6, 8), ("headline (805 x 32)", 805, 32)):
            folder = Path(tmp) / name.split()[0]
            folder.mkdir()
            rows[name] = measure(synthetic_run(folder, prompts, n))
        for name, m in rows.items():
            print(f"{name}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items()))
        small, big = rows["demo shape (6 x 8)"], rows["headline (805 x 32)"]
        if "first_paint_ms" in big and small.get("first_paint_ms"):
            print(f"first paint, headline / demo shape: {big['first_paint_ms'] / small['first_paint_ms']:.2f}x")


if __name__ == "__main__":
    main()
