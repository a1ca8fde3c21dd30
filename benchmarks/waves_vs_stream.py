"""Waves (one decode batch per pipeline batch) vs one continuous stream, simulated at the headline sizes.

The headline job: the 805 AlpacaEval instructions, N=32, max_tokens 2048, batch_size 64 (the shipped
`configs/alpaca_eval_v2_bo32.yaml`). Answer lengths come from WizardLM-13B's released AlpacaEval
outputs (tokens of the real Llama-2 vocabulary in `../shared/data/tokenizers`; characters / 4 where
the folder is absent), each of a prompt's N samples drawn at +-35% of that length. A decode step of
a 13B model costs `--step-ms` + `--per-seq-ms` x live sequences (12 ms + 0.04 ms: memory-bound
weights reads plus the per-sequence KV reads). Prefill is the same work in both and left out.

- waves: 64 prompts x 32 = 2,048 sequences decode together until the longest ends; then the next wave.
- stream: `--slots` sequences decode at every step; a finished one is replaced at once from the queue.

Run on any machine (no model is loaded); a GPU user reruns it with their own step costs:

    .venv/bin/python benchmarks/waves_vs_stream.py [--slots 256 1024 2048] [--step-ms 12 --per-seq-ms 0.04]

The last line: `waves / stream decode time: 256 slots X.XXx, ...` (above 1: the stream is faster).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"


def answer_lengths() -> tuple[list[int], str]:
    """One length per AlpacaEval instruction, in tokens: WizardLM-13B's released answers."""
    path = SHARED / "alpaca_eval" / "annotations" / "v1" / "wizardlm-13b.json"
    if not path.is_file():
        rng = random.Random(0)  # no shared data: a long-tailed stand-in with AlpacaEval's mean length
        return [max(1, int(rng.lognormvariate(math.log(250), 0.7))) for _ in range(805)], "lognormal stand-in"
    outputs = [row["output_2"] for row in json.loads(path.read_text(encoding="utf-8"))]
    vocab = SHARED / "tokenizers" / "ggml-vocab-llama-spm.gguf"
    try:
        from bon.core.config import ModelConfig
        from bon.engines.tokens import TokenizerOnly

        tok = TokenizerOnly(ModelConfig(model=str(vocab))).tokenizer
        return [len(tok.encode(o, add_special_tokens=False)) + 1 for o in outputs], f"{path.name}, Llama-2 tokens"
    except Exception:  # the tokenizer could not load: characters / 4, the usual English ratio
        return [max(1, len(o) // 4) + 1 for o in outputs], f"{path.name}, characters / 4"


def sample_lengths(base: list[int], n: int, spread: float, cap: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[min(cap, max(1, round(b * rng.uniform(1 - spread, 1 + spread)))) for _ in range(n)] for b in base]


def waves(lengths: list[list[int]], batch: int, step_ms: float, per_seq_ms: float) -> tuple[float, int]:
    """(seconds, steps) of decoding ``batch`` prompts' sequences at a time, each wave until its longest ends."""
    total, steps = 0.0, 0
    for start in range(0, len(lengths), batch):
        wave = sorted(x for group in lengths[start : start + batch] for x in group)
        alive, k = len(wave), 0
        for t in range(1, wave[-1] + 1):
            total += step_ms + per_seq_ms * alive
            while k < len(wave) and wave[k] == t:  # these sequences emitted their last token at step t
                alive, k = alive - 1, k + 1
        steps += wave[-1]
    return total / 1000, steps


def stream(lengths: list[list[int]], slots: int, step_ms: float, per_seq_ms: float) -> tuple[float, int]:
    """(seconds, steps) of one stream keeping ``slots`` sequences decoding, refilled in prompt order."""
    queue = [x for group in lengths for x in group][::-1]
    ends: list[int] = []  # the step at which each live sequence ends
    total, t = 0.0, 0
    while queue or ends:
        while queue and len(ends) < slots:
            heapq.heappush(ends, t + queue.pop())
        t += 1
        total += step_ms + per_seq_ms * len(ends)
        while ends and ends[0] == t:
            heapq.heappop(ends)
    return total / 1000, t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per wave (the headline config's)")
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--spread", type=float, default=0.35, help="each sample's length: base x U(1-s, 1+s)")
    parser.add_argument("--slots", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--step-ms", type=float, default=12.0)
    parser.add_argument("--per-seq-ms", type=float, default=0.04)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    base, source = answer_lengths()
    lengths = sample_lengths(base, args.n, args.spread, args.max_tokens, args.seed)
    tokens = sum(map(sum, lengths))
    print(f"{len(base)} prompts x N={args.n} = {len(base) * args.n} sequences, {tokens:,} decoded tokens")
    print(f"answer lengths from {source}: mean {sum(base) / len(base):.0f}, max {max(base)} tokens")
    print(f"step cost {args.step_ms} ms + {args.per_seq_ms} ms x live sequences\n")
    wave_s, wave_steps = waves(lengths, args.batch_size, args.step_ms, args.per_seq_ms)
    print(f"{'schedule':<28}{'steps':>10}{'decode s':>12}{'seqs/step':>11}")
    print(f"{f'waves of {args.batch_size} prompts':<28}{wave_steps:>10,}{wave_s:>12.0f}{tokens / wave_steps:>11.0f}")
    ratios = []
    for slots in args.slots:
        s, steps = stream(lengths, slots, args.step_ms, args.per_seq_ms)
        print(f"{f'stream, {slots} slots':<28}{steps:>10,}{s:>12.0f}{tokens / steps:>11.0f}")
        ratios.append(f"{slots} slots {wave_s / s:.2f}x")
    print(f"\nwaves / stream decode time: {', '.join(ratios)}")


if __name__ == "__main__":
    main()
