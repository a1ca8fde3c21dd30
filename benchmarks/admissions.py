"""The transformers engine's decode loop under continuous admission: prompts join as rows free up.

SmolLM2-135M-Instruct samples N candidates for each of the 20 benchmark prompts (chat template)
through one `DecodeSession` at the shipped default `policy.max_rows` (128 on a CPU), so prompts
are admitted while others decode. Printed: wall seconds, admissions (prompts prefilled) per second,
generated tokens per second, the session's peak KV tokens and the process's peak resident memory
while it ran, and the share of the wall the decode loop spent recording each candidate's confidence
(`bon.engines.stream.confidence_terms`, timed in the same run). Compare two revisions by running it
in each (``PYTHONPATH=<checkout>``).

    .venv/bin/python benchmarks/admissions.py [--n 8] [--max-tokens 64] [--repeat 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bon_vs_naive import PeakRSS, load_prompts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2, help="the prompt set this many times (distinct keys)")
    args = parser.parse_args()

    from bon.core.config import ModelConfig
    from bon.engines import stream
    from bon.engines.contract import SamplingSettings
    from bon.engines.hf import load

    spent = [0.0]
    terms = getattr(stream, "confidence_terms", None)
    if terms is not None:  # the time the loop spends on it, measured where it runs

        def timed(*a, **k):
            t0 = time.perf_counter()
            out = terms(*a, **k)
            out.sum().item()  # wait for it (a GPU runs asynchronously)
            spent[0] += time.perf_counter() - t0
            return out

        stream.confidence_terms = timed
    engine = load(ModelConfig())
    ids = [engine.chat_ids([{"role": "user", "content": p.instruction}]) for p in load_prompts(20)] * args.repeat
    settings = SamplingSettings(temperature=0.7, top_p=0.95, max_tokens=args.max_tokens)
    with PeakRSS() as rss:
        loop = engine.session(settings)
        t0 = time.perf_counter()
        for k, prompt in enumerate(ids):
            loop.add(k, prompt, args.n, seed=k)
        samples = [loop.result(k) for k in range(len(ids))]
        wall = time.perf_counter() - t0
    stats = loop.stats
    tokens = sum(s.completion_tokens for group in samples for s in group)
    print(f"{len(ids)} prompts x n={args.n}, max_tokens {args.max_tokens}, max_rows {loop.max_rows}")
    head = ("wall s", 8), ("admissions/s", 14), ("tokens/s", 10), ("steps", 7), ("peak rows", 11), ("peak KV tok", 13)
    print("".join(f"{name:>{w}}" for name, w in head) + f"{'RSS GB':>8}")
    print(
        f"{wall:>8.1f}{stats.prefills / wall:>14.2f}{tokens / wall:>10.1f}{stats.steps:>7}{stats.peak_rows:>11}"
        f"{stats.peak_kv_tokens:>13}{rss.peak / 2**30:>8.2f}"
    )
    if terms is not None:
        print(f"confidence recording: {spent[0]:.2f} s of {wall:.1f} s ({100 * spent[0] / wall:.1f}% of the wall)")


if __name__ == "__main__":
    main()
