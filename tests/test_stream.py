"""The continuous decode loop on a tiny randomly initialised Llama: budgets at the headline's shape.

N=32 candidates for 64 queued prompts with max_tokens 512: the KV cache tensors themselves (not the
loop's own count) never hold more than ``max_kv_tokens`` tokens, however many prompts wait.
"""

from __future__ import annotations

import pytest

from bon.engines.contract import SamplingSettings
from bon.engines.stream import DecodeSession
from tests.helpers import prompts_of_random_tokens as _prompts
from tests.helpers import tiny_engine


class Watched(DecodeSession):
    """Measures the cache tensors after every change of the batch."""

    peak_tensor_tokens = 0

    def _measure(self) -> None:
        super()._measure()
        assert self.batch.cache is not None
        keys = self.batch.cache.layers()[0][0]  # tokens per layer: every layer holds the same
        held = keys.shape[0] * keys.shape[2]
        held += sum(rows.layers[0][0].shape[0] * rows.layers[0][0].shape[2] for rows in self._parked())
        self.peak_tensor_tokens = max(self.peak_tensor_tokens, held)


@pytest.mark.parametrize("pause_every", [None, 64])
def test_n32_with_64_prompts_queued_and_512_tokens_holds_the_kv_budget(pause_every):
    engine = tiny_engine()
    settings = SamplingSettings(temperature=1.0, top_p=1.0, max_tokens=512)
    prompts = _prompts(64)
    budget = 3 * 32 * (24 + 512)  # three prompts' rows at their longest: the queue of 61 others waits
    loop = Watched(engine, settings, engine.memory(256, budget))
    for k, ids in enumerate(prompts):
        loop.add(k, ids, 32, k, pause_every=pause_every)
    done = {}
    while len(done) < 64:
        loop.advance([k for k in range(64) if k not in done])
        for k in loop.paused():  # early rejection's shape: keep a quarter of each prompt's candidates
            part = loop.partial(k)
            loop.resume(k, sorted(part)[: max(1, len(part) // 4)])
        done.update((k, loop.result(k)) for k in loop.finished())
    assert all(len(done[k]) == 32 for k in range(64))
    assert all(len(s.token_ids) <= 512 for group in done.values() for s in group)
    assert 0 < loop.peak_tensor_tokens <= budget and loop.stats.peak_kv_tokens <= budget
    assert loop.stats.peak_rows <= 3 * 32 and loop.stats.prefills == 64
    assert loop.stats.most_prompts_in_a_step >= 2
    if pause_every:  # rejection frees rows: more prompts decode at once than the budget allows unpaused
        assert loop.stats.most_prompts_in_a_step > 3
        assert any(s.finish_reason == "rejected" for group in done.values() for s in group)
