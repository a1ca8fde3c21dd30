"""Early rejection against full best-of-N at the same N, both as `bon run` with the demo's defaults.

SmolLM2-135M-Instruct samples N candidates per prompt; the Self-J template on the same model (chat
prompt) judges them, partial answers included. Full best-of-N judges every complete candidate;
early rejection judges the unfinished candidates every `--chunk` tokens and keeps the best
`keep_fraction` (Sun et al. 2024), their KV cache kept between rounds. For each setting: tokens
generated (rejected candidates' included), judge calls, wall time, and the mean full-judge score of
the selected candidates, each against full best-of-N. A free baseline is printed beside them:
"random k of N", the expected best full-judge score of k = ceil(keep_fraction * N) candidates kept
at random (exact, from full best-of-N's scores), which tells whether partial scores beat chance.

    .venv/bin/python benchmarks/early_rejection.py [--prompts 16] [--n 32] [--max-tokens 128] [--chunk 16] [--keep 0.25]
    .venv/bin/python benchmarks/early_rejection.py --demo   # the demo config as shipped, at n=4 and n=8

The defaults take ~5 minutes on this 2-core CPU. The last line is the headline (first --keep).
Prompts: the first --prompts of the 175 seed instructions in ../shared/data/selfj/seed_tasks.jsonl.
Each early-rejection row shows beside it what `bon check` estimated before the run. `--demo` runs the
demo's own 6 prompts (64 tokens, keep 0.5) at n=4 and n=8 and checks that early rejection was never
slower than full best-of-N unless bon had said it would not pay (~3 minutes).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT.parent / "shared" / "data" / "selfj" / "seed_tasks.jsonl"


def bon_run(src: Path, out: Path, args: argparse.Namespace, keep: float | None) -> dict:
    from bon.core.config import load_config
    from bon.core.judging import build_judge
    from bon.core.records import Candidate, Judgement
    from bon.pipeline.preflight import check
    from bon.pipeline.runner import run

    sets = [f"output_dir={out}", f"prompts.source={src}", f"n={args.n}", f"policy.max_tokens={args.max_tokens}"]
    if keep is not None:
        sets += [f"early_rejection.chunk_tokens={args.chunk}", f"early_rejection.keep_fraction={keep}"]
    cfg = load_config(ROOT / "configs" / "demo.yaml", sets)
    said = dict(check(cfg, build_judge(cfg.judge.name, cfg.judge.options)).rows).get("early rejection", "")
    judged = 0
    judge_cls = _judge_class()
    score = judge_cls.score

    def counting(self, prompts, candidates):  # every judge call, partial answers included
        nonlocal judged
        judged += len(candidates)
        return score(self, prompts, candidates)

    judge_cls.score = counting
    try:
        t0 = time.perf_counter()
        result = run(cfg)
        wall = time.perf_counter() - t0
    finally:
        judge_cls.score = score
    verdicts = result.run_dir.read(Judgement)
    by_prompt: dict[str, list[float | None]] = {}
    for j in verdicts:
        by_prompt.setdefault(j.prompt_id, []).append(j.score)
    picked = [s.score for s in result.selections if s.score is not None]
    return {
        "label": f"keep {keep:g}" if keep is not None else f"full best-of-{args.n}",
        "tokens": sum(c.completion_tokens for c in result.run_dir.read(Candidate)),
        "judged": judged,
        "wall": wall,
        "score": statistics.mean(picked),
        "all_scores": list(by_prompt.values()),
        "said": said,  # bon's estimate before the run
    }


def _judge_class():
    from bon.judges.selfj import SelfJudge

    return SelfJudge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--keep", type=float, nargs="+", default=[0.25])
    parser.add_argument("--demo", action="store_true", help="the demo config at n=4 and n=8 (see above)")
    args = parser.parse_args()
    if args.demo:
        return demo(args)
    if not SEEDS.exists():
        raise SystemExit(f"{SEEDS} not found: this benchmark needs the shared data beside a dev checkout")

    rows = [json.loads(line) for line in SEEDS.read_text().splitlines()[: args.prompts]]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "prompts.jsonl"
        src.write_text("".join(json.dumps({"id": r["id"], "instruction": r["instruction"]}) + "\n" for r in rows))
        results = [bon_run(src, Path(tmp) / "full", args, None)]
        print(f"done: {results[-1]['label']} in {results[-1]['wall']:.1f} s", flush=True)
        for keep in args.keep:
            results.append(bon_run(src, Path(tmp) / f"keep{keep}", args, keep))
            print(f"done: {results[-1]['label']} in {results[-1]['wall']:.1f} s", flush=True)
    full = results[0]
    print(f"\n{len(rows)} prompts, N={args.n}, max_tokens {args.max_tokens}, a cut every {args.chunk} tokens")
    print(
        f"{'setting':<18}{'gen tokens':>11}{'fewer':>8}{'judged':>8}{'wall s':>8}{'wall':>8}"
        f"{'mean selected score':>21}{'vs full':>9}"
    )
    for r in results:
        print(
            f"{r['label']:<18}{r['tokens']:>11}{full['tokens'] / r['tokens']:>7.2f}x{r['judged']:>8}{r['wall']:>8.1f}"
            f"{r['wall'] / full['wall']:>7.2f}x{r['score']:>21.3f}{100 * (r['score'] / full['score'] - 1):>+8.1f}%"
        )
    for keep in args.keep:
        k = math.ceil(keep * args.n)
        score = statistics.mean(best_of_random_subset(s, k) for s in full["all_scores"])
        print(f"{f'random {k} of {args.n}':<61}{score:>21.3f}{100 * (score / full['score'] - 1):>+8.1f}%")
    for r in results[1:]:
        print(f"{r['label']}: bon estimated before the run: {r['said']}")
    head = results[1]
    print(
        f"early rejection keep {args.keep[0]:.2f}: wall {head['wall'] / full['wall']:.2f}x of full best-of-{args.n}, "
        f"{full['tokens'] / head['tokens']:.2f}x fewer generated tokens, "
        f"mean selected score {100 * head['score'] / full['score']:.1f}% of full"
    )


def demo(args: argparse.Namespace) -> None:
    """The demo config's prompts at n=4 and n=8, full best-of-N against early rejection (keep 0.5)."""
    src = ROOT / "configs" / "prompts" / "demo.jsonl"
    args.max_tokens, args.chunk, ok = 64, 16, True
    with tempfile.TemporaryDirectory() as tmp:
        for n in (4, 8):
            args.n = n
            full = bon_run(src, Path(tmp) / f"full{n}", args, None)
            cut = bon_run(src, Path(tmp) / f"cut{n}", args, 0.5)
            ratio, warned = cut["wall"] / full["wall"], cut["said"].startswith("early rejection will not")
            ok &= ratio <= 1 or warned
            walls = f"full {full['wall']:.1f} s, early rejection {cut['wall']:.1f} s ({ratio:.2f}x)"
            print(f"n={n}: {walls}; bon said: {cut['said']}")
    print("ok: never slower unless bon said so first" if ok else "FAIL: slower without a word from bon")


def best_of_random_subset(scores: list[float | None], k: int) -> float:
    """The expected best score of k of these candidates drawn at random without replacement (exact)."""
    ranked = sorted(-math.inf if s is None else s for s in scores)
    n = len(ranked)
    # the i-th smallest (1-based) is the best of the subset with probability C(i-1, k-1) / C(n, k)
    return sum(s * math.comb(i - 1, k - 1) / math.comb(n, k) for i, s in enumerate(ranked, start=1) if s != -math.inf)


if __name__ == "__main__":
    main()
