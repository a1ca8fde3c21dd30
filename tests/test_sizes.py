"""Sizes that drive memory have a bound from this machine and the model, and work beyond it is refused
before it starts, naming the key and the bound: the KV budget a user sets, a judge's forward batch."""

from __future__ import annotations

import pytest
import torch

from bon.core.errors import SizeError
from bon.engines import hf, memory
from bon.engines.memory import forward_bytes_per_token, memory_bytes
from tests.helpers import bon, one_clear_line

SMOL_KV = 46080  # SmolLM2-135M: 30 layers x 3 KV heads x 64 dims x 2 (keys, values) x 4 bytes (float32)


def _said(result) -> str:
    return " ".join((result.stdout + result.stderr).split())


@pytest.mark.parametrize("factor", [2, 1000])
def test_a_kv_budget_beyond_the_machines_memory_is_refused_before_the_run_directory_exists(tmp_path, factor):
    tokens = factor * memory_bytes(False, total=True) // SMOL_KV
    sets = ["--set", f"policy.max_kv_tokens={tokens}", "--set", f"output_dir={tmp_path / 'run'}"]
    sets += ["--set", "policy.device=cpu"]
    check = bon("check", "configs/demo.yaml", *sets)
    says = f"policy.max_kv_tokens {tokens:,} is more KV cache than this machine holds: at {SMOL_KV} bytes a token"
    assert check.returncode == 1 and says in _said(check), _said(check)
    one_clear_line(bon("run", "configs/demo.yaml", *sets), says)
    assert not (tmp_path / "run").exists()


def test_a_kv_budget_within_the_machines_memory_is_kept(tmp_path):
    sets = ["--set", "policy.max_kv_tokens=20000", "--set", f"output_dir={tmp_path / 'run'}"]
    check = bon("check", "configs/demo.yaml", *sets, "--set", "policy.device=cpu")
    assert check.returncode == 0 and "at most 20,000 tokens (policy.max_kv_tokens)" in _said(check), _said(check)


@pytest.mark.parametrize("size", ["100000", "1000000000000"])
def test_a_judge_batch_no_forward_pass_can_hold_is_refused_before_the_run_directory_exists(tmp_path, size):
    sets = ["--set", f"judge.options.batch_size={size}", "--set", f"output_dir={tmp_path / 'run'}"]
    sets += ["--set", "judge.options.device=cpu"]
    check = bon("check", "configs/demo.yaml", *sets)
    says = f"judge.options.batch_size {int(size):,} is more judge prompts than one forward pass can hold"
    assert check.returncode == 1 and says in _said(check) and "lower it to at most" in _said(check), _said(check)
    one_clear_line(bon("run", "configs/demo.yaml", *sets), says)
    assert not (tmp_path / "run").exists()


def test_a_judge_batch_that_fits_passes_the_check(tmp_path):
    sets = ["--set", "judge.options.batch_size=64", "--set", f"output_dir={tmp_path / 'run'}"]
    check = bon("check", "configs/demo.yaml", *sets, "--set", "judge.options.device=cpu")
    assert check.returncode == 0, _said(check)


def test_the_judge_batch_is_sized_at_most_at_the_judges_context(tmp_path):
    """A billion-token answer is the context's problem (reported as such), not a batch of billion-token prompts."""
    sets = ["--set", "policy.max_tokens=1000000000", "--set", f"output_dir={tmp_path / 'run'}"]
    said = _said(bon("check", "configs/demo.yaml", *sets))
    assert "leaves no room for a prompt" in said and "forward pass" not in said, said


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("logit_positions", [0, 50])
def test_the_engine_refuses_a_forward_pass_beyond_its_memory_share(monkeypatch, logit_positions):
    model = _tiny_llama()
    per_token = forward_bytes_per_token(model.config, 4) + (8 * 1000 if logit_positions else 0)
    monkeypatch.setattr(
        memory, "memory_share", lambda cuda, total=False, device=None: 100 * per_token * 50
    )  # 100 rows of 50 tokens
    plan = hf.memory_of(model, torch.device("cpu"))
    plan.check_forward(100, 50, 4096, logit_positions=logit_positions)  # exactly the share: kept
    with pytest.raises(SizeError, match=r"^batch_size 4,096: one forward pass of 101 sequences of 50 tokens") as e:
        plan.check_forward(101, 50, 4096, logit_positions=logit_positions)
    assert str(e.value).endswith("lower the judge's batch_size to at most 100")


@pytest.mark.slow
def test_perplexity_scoring_refuses_a_batch_of_logits_beyond_memory_and_scores_a_small_one(monkeypatch, tiny_lm):
    """The logits of every position that predicts an answer token (49,152 each for SmolLM2's vocabulary) are what a
    PPL batch costs."""
    from bon.core.config import ModelConfig

    model = hf.HFModel(ModelConfig(model=str(tiny_lm)))
    prompts, answers = [[1, 2, 3]] * 64, [[4, 5, 6, 7]] * 64
    monkeypatch.setattr(memory, "memory_share", lambda cuda, total=False, device=None: int(16 * 7 * 8 * 49152 * 1.1))
    with pytest.raises(SizeError, match=r"^batch_size 64: one forward pass of 64 sequences of 7 tokens"):
        model.continuation_logprobs(prompts, answers, batch_size=64)
    assert len(model.continuation_logprobs(prompts, answers, batch_size=8)) == 64


@pytest.mark.parametrize("folds, max_items", [("1000000000", None), ("7", None), ("3", 2)])
def test_more_folds_than_pairs_is_refused_before_any_judging(tmp_path, pair_file, pool_dir, folds, max_items):
    from tests.conftest import PAIRS
    from tests.conftest import compare_config as _config

    judges = [{"name": "length", "max_items": max_items}]
    cfg = _config(tmp_path, pair_file, pool_dir, judges=judges)
    pairs = max_items or len(PAIRS)
    says = f"folds {int(folds):,} is more held-out folds than the {pairs} pairs judge 'length' scores"
    one_clear_line(bon("compare", str(tmp_path / "compare.yaml"), "--set", f"folds={folds}"), says)
    assert not cfg.output_dir.exists()
