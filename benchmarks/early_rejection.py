"""Early rejection against full best-of-N at the same N: generated tokens against the selected score.

SmolLM2-135M-Instruct samples N candidates per prompt; the Self-J template on the same model
(chat prompt) judges them, partial answers included. Full best-of-N judges every complete
candidate; early rejection judges partial candidates every `chunk` tokens and keeps the best
`keep_fraction` (Sun et al. 2024). For each setting: tokens generated, judge calls, wall time, the
mean score of the selected candidates under the full judge, and both as ratios to full best-of-N.

    .venv/bin/python benchmarks/early_rejection.py [--prompts 50] [--n 32] [--max-tokens 16] [--chunk 4] [--keep 0.25]

On this 2-core CPU the defaults take ~9 minutes (full best-of-32 ~300 s, one early-rejection setting
~210 s); `--keep 0.125 0.25 0.5` prints the curve in ~17 minutes. Every round re-reads each
surviving candidate's prompt and partial answer (policy prefill) and judges it, so the partial
judging costs about what full judging does here. A free baseline is printed beside each setting:
"random k of N", the expected best full-judge score of k = ceil(keep_fraction * N) candidates
kept at random (computed exactly from full best-of-N's scores), which tells whether the partial
scores choose better than chance.

Prompts: the 175 seed instructions of ../shared/data/selfj/seed_tasks.jsonl (first --prompts).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT.parent / "shared" / "data" / "selfj" / "seed_tasks.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=4)
    parser.add_argument("--keep", type=float, nargs="+", default=[0.25])
    args = parser.parse_args()
    if not SEEDS.exists():
        raise SystemExit(f"{SEEDS} not found: this benchmark needs the shared data beside a dev checkout")

    from bon.core.config import EarlyRejectionConfig, PolicyConfig
    from bon.core.records import Prompt, by_key
    from bon.pipeline.early_rejection import EarlyRejectionPolicy, rejected_judgements
    from bon.pipeline.policy import EnginePolicy
    from bon.pipeline.selection import select
    from judges.selfj import SelfJOptions, SelfJudge

    rows = [json.loads(line) for line in SEEDS.read_text().splitlines()[: args.prompts]]
    prompts = [Prompt(str(r["id"]), r["instruction"]) for r in rows]
    policy = EnginePolicy(PolicyConfig(max_tokens=args.max_tokens))
    judge = SelfJudge(SelfJOptions(prompt_format="chat", batch_size=args.n), engine=policy.engine)

    class Counting:  # counts what the judge is asked, partial answers included
        name = judge.name

        def __init__(self):
            self.calls = 0

        def score(self, ps, cs):
            self.calls += len(cs)
            return judge.score(ps, cs)

    def best_of_n(make_policy, label: str) -> dict:
        counting = Counting()
        pol = make_policy(counting)
        t0 = time.perf_counter()
        tokens, picked, all_scores = 0, [], []
        for start in range(0, len(prompts), 10):  # ten prompts per engine call
            batch = prompts[start : start + 10]
            cands = pol.generate(batch, args.n, 0)
            tokens += getattr(pol, "generated_tokens", 0) or sum(c.completion_tokens for c in cands)
            if hasattr(pol, "generated_tokens"):
                pol.generated_tokens = 0
            scoreable, failed = rejected_judgements(cands, judge.name)
            verdicts = by_key(counting.score(batch, scoreable)) | failed
            for p in batch:
                s = select(p.id, [verdicts[(p.id, i)] for i in range(args.n)])
                picked.append(s.score)
                all_scores.append([verdicts[(p.id, i)].score for i in range(args.n)])
        wall = time.perf_counter() - t0
        scores = [s for s in picked if s is not None]
        return {
            "label": label,
            "tokens": tokens,
            "judged": counting.calls,
            "wall": wall,
            "score": statistics.mean(scores),
            "all_scores": all_scores,
        }

    results = [best_of_n(lambda _: policy, f"full best-of-{args.n}")]
    print(f"done: {results[-1]}", flush=True)
    for keep in args.keep:
        cfg = EarlyRejectionConfig(chunk_tokens=args.chunk, keep_fraction=keep)
        results.append(
            best_of_n(lambda counting, cfg=cfg: EarlyRejectionPolicy(policy, counting, cfg), f"keep {keep:g}")
        )
        print(f"done: {results[-1]}", flush=True)
    full = results[0]
    randoms = {
        keep: statistics.mean(best_of_random_subset(s, math.ceil(keep * args.n)) for s in full["all_scores"])
        for keep in sorted({0.125, 0.25, 0.5, *args.keep})
    }
    print(f"\n{len(prompts)} prompts, N={args.n}, max_tokens {args.max_tokens}, chunk {args.chunk} tokens")
    print(
        f"{'setting':<18}{'gen tokens':>11}{'fewer':>8}{'judged':>8}{'wall s':>8}{'speed-up':>9}"
        f"{'mean selected score':>21}{'vs full':>9}"
    )
    for r in results:
        print(
            f"{r['label']:<18}{r['tokens']:>11}{full['tokens'] / r['tokens']:>7.2f}x{r['judged']:>8}{r['wall']:>8.1f}"
            f"{full['wall'] / r['wall']:>8.2f}x{r['score']:>21.3f}{100 * (r['score'] / full['score'] - 1):>+8.1f}%"
        )
    for keep, score in randoms.items():
        k = math.ceil(keep * args.n)
        print(
            f"{f'random {k} of {args.n}':<18}{'':>11}{'':>8}{'':>8}{'':>8}{'':>9}"
            f"{score:>21.3f}{100 * (score / full['score'] - 1):>+8.1f}%"
        )


def best_of_random_subset(scores: list[float | None], k: int) -> float:
    """The expected best score of k of these candidates drawn at random without replacement (exact)."""
    ranked = sorted(-math.inf if s is None else s for s in scores)
    n = len(ranked)
    # the i-th smallest (1-based) is the best of the subset with probability C(i-1, k-1) / C(n, k)
    return sum(s * math.comb(i - 1, k - 1) / math.comb(n, k) for i, s in enumerate(ranked, start=1) if s != -math.inf)


if __name__ == "__main__":
    main()
