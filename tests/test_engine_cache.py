"""Loaded models have one owner (`bon.engines.cache.EngineCache`): shared within a run, released per judge in
`bon compare`, so a comparison of several model judges holds the largest one, not their sum."""

from __future__ import annotations

import gc

import pytest

from bon.engines.cache import ENGINES, EngineCache

pytestmark = pytest.mark.slow  # the checkpoints take SmolLM2's tokenizer (bon prepare)


def _weight_bytes(models: list) -> int:
    """Bytes of the weights of the transformers models among ``models``."""
    from bon.engines.hf import HFModel

    return sum(p.numel() * p.element_size() for m in models if isinstance(m, HFModel) for p in m.model.parameters())


def test_a_scope_releases_what_it_loaded_and_keeps_what_was_there():
    cache = EngineCache()

    class Model:
        pass

    outside = cache.get("a", Model)
    with cache.scope():
        assert cache.get("a", Model) is outside  # shared, not loaded again
        inside = cache.get("b", Model)
        assert len(cache.alive()) == 2
    del inside
    gc.collect()
    assert cache.alive() == [outside] and cache.loads == 2
    assert cache.get("b", Model) is not None and cache.loads == 3  # released: a later use loads it again
    cache.close()
    del outside
    gc.collect()
    assert cache.alive() == []


def test_compare_holds_one_judges_model_at_a_time(tmp_path, pair_file, pool_dir, monkeypatch):
    """Two perplexity judges on checkpoints of different sizes: while the second one loads, the first one's
    weights are gone; the peak is the larger model's bytes, not the sum; nothing stays loaded after."""
    from bon.eval.compare import run_compare
    from tests.conftest import compare_config, tiny_checkpoint

    small, big = tiny_checkpoint(tmp_path / "small", 16), tiny_checkpoint(tmp_path / "big", 64)
    judges = [
        {"name": "ppl", "label": "ppl_small", "options": {"model": str(small)}},
        {"name": "ppl", "label": "ppl_big", "options": {"model": str(big)}},
    ]
    cfg = compare_config(tmp_path, pair_file, pool_dir, judges=judges)
    gc.collect()
    before = _weight_bytes(ENGINES.alive())  # what this test session holds already (SmolLM2, say)
    held: list[int] = []  # bytes of every model alive, after each load of the comparison
    real_get = ENGINES.get

    def watched(key, make):
        model = real_get(key, make)
        gc.collect()
        held.append(_weight_bytes(ENGINES.alive()) - before)
        return model

    monkeypatch.setattr(ENGINES, "get", watched)
    run_compare(cfg, note=lambda m: None)
    monkeypatch.undo()
    gc.collect()
    from bon.core.config import ModelConfig
    from bon.engines.hf import HFModel

    small_bytes, big_bytes = (_weight_bytes([HFModel(ModelConfig(model=str(p)))]) for p in (small, big))
    assert big_bytes > 2 * small_bytes
    assert max(held) == big_bytes  # the largest judge alone: the small one was gone when the big one loaded
    assert _weight_bytes(ENGINES.alive()) == before  # both released when their judge was done
