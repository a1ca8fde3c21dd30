"""Pipelined (Ray actors: judge batch k while sampling batch k+1) vs strictly sequential.

Sequential = sample every prompt, then judge every candidate, in one process (the whole machine
for each stage). Pipelined = `bon run` with engine: ray, one policy and one judge actor.
Both use SmolLM2-135M-Instruct as policy and Self-J judge, N=8, 20 prompts, the same seeds.

    .venv/bin/python benchmarks/pipelining.py [--max-tokens 48] [--n 8]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=2, help="prompts per pipeline batch")
    args = parser.parse_args()

    from bon.core.config import load_config
    from bon.core.prompts import load_prompts
    from bon.judges import build_judge
    from bon.pipeline.policy import EnginePolicy
    from bon.pipeline.runner import run

    work = Path(tempfile.mkdtemp(prefix="bon-bench-"))
    overrides = [
        f"n={args.n}",
        f"policy.max_tokens={args.max_tokens}",
        f"batch_size={args.batch_size}",
        f"prompts.source={ROOT / 'benchmarks' / 'prompts20.jsonl'}",
    ]
    cfg = load_config(ROOT / "configs" / "demo.yaml", [*overrides, f"output_dir={work / 'seq'}"])
    prompts = load_prompts(cfg.prompts)
    print(f"{len(prompts)} prompts x N={cfg.n}, max_tokens={cfg.policy.max_tokens}, batch_size={cfg.batch_size}")

    t0 = time.perf_counter()
    policy = EnginePolicy(cfg.policy)
    judge = build_judge(cfg.judge.name, cfg.judge.options)
    candidates = policy.generate(prompts, cfg.n, cfg.seed)
    t_sample = time.perf_counter() - t0
    judgements = []
    for i in range(0, len(prompts), cfg.batch_size):
        batch = prompts[i : i + cfg.batch_size]
        ids = {p.id for p in batch}
        judgements += judge.score(batch, [c for c in candidates if c.prompt_id in ids])
    sequential = time.perf_counter() - t0
    print(f"sequential: {sequential:7.1f} s  (sample {t_sample:.1f} s, judge {sequential - t_sample:.1f} s)")

    ray_cfg = load_config(ROOT / "configs" / "demo.yaml", [*overrides, "engine=ray", f"output_dir={work / 'ray'}"])
    t0 = time.perf_counter()
    result = run(ray_cfg)
    pipelined = time.perf_counter() - t0
    print(
        f"pipelined:  {pipelined:7.1f} s  (Ray start and actor start-up included; actors computed "
        f"sample {result.seconds['sample']:.1f} s, judge {result.seconds['judge']:.1f} s)"
    )
    same = [c.text for c in candidates] == [line for line in _texts(work / "ray" / "candidates.jsonl")]
    print(f"same candidates in both: {same}")
    print(f"ratio sequential / pipelined: {sequential / pipelined:.2f}x")
    shutil.rmtree(work, ignore_errors=True)


def _texts(path: Path) -> list[str]:
    import json

    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


if __name__ == "__main__":
    main()
