"""Why `dtype: auto` is float32 on a CPU: bfloat16's speed against the determinism contract, measured.

For each dtype, SmolLM2-135M-Instruct (the demo's policy) samples N candidates for each prompt with the demo's
sampling settings (timed; float32 is the baseline), then the contract is checked as
`tests/test_engine_hf.py::test_batched_sampler_equals_one_candidate_at_a_time` checks it: each batched
candidate against a plain loop that recomputes the whole sequence for it alone with the same uniforms. The last
line is bfloat16's speed-up and how many candidates it changes.

    .venv/bin/python benchmarks/cpu_dtype.py [--prompts 6] [--n 8] [--max-tokens 64] [--contract-tokens 40]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--prompts", type=int, default=6)
    args.add_argument("--n", type=int, default=8)
    args.add_argument("--max-tokens", type=int, default=64)
    args.add_argument("--contract-tokens", type=int, default=40)
    a = args.parse_args()

    import torch

    from bon.core.config import ModelConfig
    from bon.engines.contract import SamplingSettings
    from bon.engines.hf import HFModel
    from tests.helpers import plain_loop_text  # the oracle of the determinism test

    rows = [json.loads(line) for line in (ROOT / "configs" / "prompts" / "demo.jsonl").read_text().splitlines()]
    instructions = [r["instruction"] for r in rows][: a.prompts]
    demo = SamplingSettings(temperature=0.7, top_p=0.95, max_tokens=a.max_tokens)  # configs/demo.yaml's policy
    flags = next((x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags")), "").split()
    print(
        f"SmolLM2-135M-Instruct, {len(instructions)} prompts x {a.n} candidates, {a.max_tokens} tokens\n"
        f"{torch.get_num_threads()} threads; the CPU has avx512_bf16: {'avx512_bf16' in flags}"
    )
    walls: dict[str, float] = {}
    for dtype in ("float32", "bfloat16"):
        model = HFModel(ModelConfig(dtype=dtype))
        prompts = [model.chat_ids([{"role": "user", "content": q}]) for q in instructions]
        seeds = list(range(len(prompts)))
        model.sample(prompts[:1], 1, [0], demo)  # warm-up: first-call allocations
        t0 = time.perf_counter()
        out = model.sample(prompts, a.n, seeds, demo)
        walls[dtype] = time.perf_counter() - t0
        tokens = sum(s.completion_tokens for group in out for s in group)

        s = SamplingSettings(temperature=1.0, top_p=0.9, max_tokens=a.contract_tokens)
        batched = model.sample(prompts[:2], 3, [11, 12], s)
        differ = sum(
            got.text != plain_loop_text(model, ids, seed, i, s)
            for ids, seed, group in zip(prompts[:2], [11, 12], batched)
            for i, got in enumerate(group)
        )
        print(
            f"{dtype:>9}: sampled {tokens} tokens in {walls[dtype]:.1f} s ({tokens / walls[dtype]:.0f}/s)\n"
            f"{'':>11}batched vs alone at {a.contract_tokens} tokens: {differ} of 6 candidates differ"
        )
    print(
        f"bfloat16 / float32 wall: {walls['bfloat16'] / walls['float32']:.2f}x\n"
        "(float32 is the baseline, measured in this run)"
    )


if __name__ == "__main__":
    main()
