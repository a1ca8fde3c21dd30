"""Three judges on one run, side by side: how far they agree on which candidate is best.

    .venv/bin/python examples/compare_judges.py runs/demo    # after the README's command 1

The judges: bon's `length` and `cosine`, and a reward function of your own in TRL's convention (`keyword_overlap`
below), which bon takes by its import path. Nothing is sampled again: the run's candidates are judged (a judge
already run is reused) and RUN/compare_judges.png shows the mean per-prompt Kendall tau of every pair of judges.
Only bon's public API is used (`import bon`).
"""

from __future__ import annotations

import sys
from itertools import combinations
from pathlib import Path

import bon


def keyword_overlap(prompts: list[str], completions: list[str], **kwargs: object) -> list[float]:
    """The share of the instruction's words that the answer repeats: a GRPO reward function, as TRL calls it."""
    out = []
    for prompt, completion in zip(prompts, completions):
        asked = {w.strip(".,?!").lower() for w in prompt.split()}
        said = {w.strip(".,?!").lower() for w in completion.split()}
        out.append(len(asked & said) / max(1, len(asked)))
    return out


JUDGES = {  # label -> (judge name or import path, options)
    "length": ("length", {}),
    "cosine": ("cosine", {"against": "instruction"}),
    "overlap": (f"{__name__}:keyword_overlap", {}),
}


def agreement(run: bon.Run) -> dict[tuple[str, str], float | None]:
    """Per pair of judges, the mean over prompts of Kendall's tau between their scores of the prompt's candidates
    (prompts where either judge gives every candidate the same score are left out)."""
    frame = run.to_pandas()
    out: dict[tuple[str, str], float | None] = {}
    for a, b in combinations(JUDGES, 2):
        taus = []
        for _, group in frame.groupby("prompt_id"):
            if group[a].nunique() > 1 and group[b].nunique() > 1:
                taus.append(group[a].corr(group[b], method="kendall"))
        out[(a, b)] = sum(taus) / len(taus) if taus else None
    return out


def main(run_dir: str, out: str | None = None) -> Path:
    run = bon.Run(run_dir)
    for label, (name, options) in JUDGES.items():
        if not run.judgements(label):
            run.judge(name, options, label=label)
    taus = agreement(run)
    for (a, b), tau in taus.items():
        print(f"{a:>8} ~ {b:<8} Kendall tau {'—' if tau is None else f'{tau:+.2f}'}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(JUDGES)
    grid = [[1.0 if a == b else taus.get((a, b), taus.get((b, a))) or 0.0 for b in labels] for a in labels]
    fig, ax = plt.subplots(figsize=(4, 3.4))
    image = ax.imshow(grid, vmin=-1, vmax=1, cmap="RdBu")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(labels)):
            dark = abs(grid[i][j]) > 0.6  # white on the deep colours
            ax.text(j, i, f"{grid[i][j]:+.2f}", ha="center", va="center", fontsize=8, color="w" if dark else "k")
    fig.colorbar(image, ax=ax, label="mean per-prompt Kendall tau")
    ax.set_title(f"judges on {Path(run_dir).name}", fontsize=9)
    fig.tight_layout()
    path = Path(out) if out else Path(run_dir) / "compare_judges.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/demo")
