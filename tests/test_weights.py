"""Weights that are not there are never invented: every loader refuses a checkpoint that does not fill its model.

Tiny checkpoints are built here (SmolLM2's tokenizer, a 2-layer Llama) and then damaged: weights
removed, weights added, a causal LM read as a reward model; the vocabulary-only GGUFs of
../shared/data are real files a user may point `model` at by mistake.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from bon.core.config import ModelConfig
from bon.engines.models import ModelLoadError

pytestmark = pytest.mark.slow  # the tokenizer comes from the converted SmolLM2 (bon prepare)


def _damaged(src: Path, dst: Path, drop: tuple[str, ...] = (), add: dict | None = None) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(dst / "model.safetensors")
    weights = {k: v for k, v in weights.items() if not k.startswith(drop)} if drop else weights
    save_file({**weights, **(add or {})}, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_a_complete_checkpoint_loads(tiny_lm):
    from bon.engines.hf import HFModel

    assert HFModel(ModelConfig(model=str(tiny_lm))).model.config.num_hidden_layers == 2


@pytest.mark.parametrize(
    "drop, says",
    [
        (
            ("model.layers.1.",),
            r"lacks 9 weights the model needs \(it would run them randomly initialised\): model\.layers\.1",
        ),
        (("model.norm.",), r"lacks 1 weights the model needs .*: model\.norm\.weight"),
        (("model.embed_tokens.",), r"lacks \d+ weights .*embed_tokens"),
    ],
)
def test_missing_weights_are_refused_naming_the_model_and_the_first_keys(tiny_lm, tmp_path, drop, says):
    from bon.engines.hf import HFModel

    broken = _damaged(tiny_lm, tmp_path / "broken", drop=drop)
    with pytest.raises(
        ModelLoadError, match=f"model '{broken}' is not a complete checkpoint of its architecture: it {says}"
    ):
        HFModel(ModelConfig(model=str(broken)))


def test_weights_the_model_has_no_place_for_are_refused(tiny_lm, tmp_path):
    from bon.engines.hf import HFModel

    broken = _damaged(tiny_lm, tmp_path / "extra", add={"model.layers.7.mlp.up_proj.weight": torch.zeros(32, 16)})
    with pytest.raises(ModelLoadError, match=r"holds 1 weights the model has no place for: model\.layers\.7"):
        HFModel(ModelConfig(model=str(broken)))


def test_a_causal_lm_is_not_a_reward_model(tiny_lm):
    """Its classification head would be random: every reward would be noise."""
    from bon.engines.hf import HFRewardModel

    with pytest.raises(ModelLoadError, match=r"reward model '.*' is not a complete checkpoint.*lacks 1 weights.*score"):
        HFRewardModel(ModelConfig(model=str(tiny_lm)))


def test_a_causal_lm_is_refused_as_a_vllm_reward_model_before_vllm_adapts_it(tiny_lm, tmp_path):
    """vLLM's pooling runner would give the causal LM an untrained head; the architecture is read first."""
    from transformers import LlamaConfig

    from bon.engines.models import require_reward_head

    with pytest.raises(ModelLoadError, match=r"reward model 'rm' is a LlamaForCausalLM, which has no reward head"):
        require_reward_head(str(tiny_lm), "rm")
    for arch in ("LlamaForSequenceClassification", "InternLM2ForRewardModel"):
        LlamaConfig(architectures=[arch]).save_pretrained(tmp_path / arch)
        require_reward_head(str(tmp_path / arch), "rm")  # a reward head: kept
    require_reward_head(str(tmp_path / "absent"), "rm")  # no config: vLLM's own load error names it


def test_an_embedder_without_its_weights_is_refused(tmp_path):
    from bon.engines.hf import HFEmbedder
    from bon.engines.models import embedded_path

    minilm = embedded_path("all-MiniLM-L6-v2")
    assert HFEmbedder(str(minilm)).embed(["a"])  # the complete one loads
    files = {p.name for p in minilm.iterdir()}
    weights = next(n for n in ("model.safetensors", "pytorch_model.bin") if n in files)
    broken = (
        _damaged(minilm, tmp_path / "minilm", drop=("encoder.layer.5.",)) if weights == "model.safetensors" else None
    )
    if broken is None:
        pytest.skip("the embedded MiniLM ships .bin weights")
    with pytest.raises(ModelLoadError, match=r"embedding model '.*' is not a complete checkpoint.*encoder\.layer\.5"):
        HFEmbedder(str(broken))


@pytest.mark.parametrize("name", ["ggml-vocab-gpt-2.gguf", "ggml-vocab-llama-bpe.gguf", "ggml-vocab-phi-3.gguf"])
def test_a_vocabulary_only_gguf_is_refused_before_any_allocation(shared_data, name):
    """The Llama-3 vocabulary's config describes an 8B model: it must be refused before it is built."""
    from bon.engines.hf import HFModel

    path = shared_data / "tokenizers" / name
    with pytest.raises(ModelLoadError, match=r"holds no weights \(a vocabulary-only GGUF\)"):
        HFModel(ModelConfig(model=str(path)))


@pytest.mark.parametrize("content", [b"", b"GGML not a gguf file at all"])
def test_a_file_that_is_not_gguf_is_refused_naming_it(tmp_path, content):
    from bon.engines.hf import HFModel

    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=r"model .*model\.gguf is not a readable GGUF file \(no GGUF header\)"):
        HFModel(ModelConfig(model=str(path)))


@pytest.mark.parametrize("role", ["policy", "judge"])
def test_bon_run_on_a_vocabulary_only_gguf_exits_2_with_one_line_before_reading_it(
    shared_data, tmp_path, role, monkeypatch
):
    from tests.helpers import bon

    def never(*args):
        raise AssertionError(f"the tokenizer was read: {args}")

    monkeypatch.setattr("bon.engines.tokens._read_files", never)

    gguf = shared_data / "tokenizers" / "ggml-vocab-llama-bpe.gguf"  # ~10 s to parse: refused from its header
    sets = [f"output_dir={tmp_path / 'run'}"]
    if role == "policy":
        sets += [f"policy.model={gguf}", "policy.prompt_format=vicuna_v1.1", "judge.name=length", "judge.options={}"]
    else:
        sets += [f"judge.options.model={gguf}"]
    done = bon("run", "configs/demo.yaml", *[a for s in sets for a in ("--set", s)])
    assert done.returncode == 2, done.stderr[-2000:]
    said = (
        f"{'model' if role == 'policy' else 'judge model'} '{gguf}': {gguf} holds no weights (a vocabulary-only GGUF)"
    )
    assert said in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()
