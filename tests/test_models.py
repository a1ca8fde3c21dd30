import pytest

from bon.core.config import ModelConfig
from bon.engines.models import ModelLoadError, embedded_path, resolve


def test_resolve_forms(tmp_path):
    emb = resolve(ModelConfig())
    assert emb.convert_gguf and emb.name == "SmolLM2-135M-Instruct" and emb.gguf_file.endswith(".gguf")
    assert embedded_path("SmolLM2-135M-Instruct").is_file()
    gguf = tmp_path / "m.Q4.gguf"
    gguf.write_bytes(b"x")
    assert resolve(ModelConfig(model=str(gguf))) == type(emb)(name="m.Q4", path=str(tmp_path), gguf_file="m.Q4.gguf")
    assert resolve(ModelConfig(model=str(tmp_path))).path == str(tmp_path)
    hub = resolve(ModelConfig(model="oceanpty/Self-J"))
    assert (hub.name, hub.path, hub.convert_gguf) == ("Self-J", "oceanpty/Self-J", False)


def test_missing_local_models_are_clear(tmp_path):
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        resolve(ModelConfig(model=str(tmp_path / "nope.gguf")))
    with pytest.raises(ModelLoadError, match="model directory not found"):
        resolve(ModelConfig(model="./no/such/dir"))
    with pytest.raises(ModelLoadError, match="unknown embedded model 'Tiny'"):
        resolve(ModelConfig(model="embedded:Tiny"))


def test_hub_model_offline_fails_fast_with_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on this machine and in CI: no hub
    from bon.engines.hf import load

    with pytest.raises(ModelLoadError, match=r"could not load model 'oceanpty/Self-J'.*embedded:SmolLM2-135M-Instruct"):
        load(ModelConfig(model="oceanpty/Self-J"))
