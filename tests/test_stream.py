"""The continuous decode loop on a tiny randomly initialised Llama: budgets at the headline's shape.

N=32 candidates for 64 queued prompts with max_tokens 512: the KV cache tensors themselves (not the
loop's own count) never hold more than ``max_kv_tokens`` tokens, however many prompts wait.
"""

from __future__ import annotations

import pytest
import torch

from bon.engines.contract import SamplingSettings
from bon.engines.slots import SlotCache
from bon.engines.stream import DecodeSession
from tests.helpers import prompts_of_random_tokens as _prompts
from tests.helpers import tiny_engine


class Watched(DecodeSession):
    """Measures the cache tensors after every change of the batch."""

    peak_tensor_tokens = 0

    def _measure(self) -> None:
        super()._measure()
        store = self.batch.store
        assert isinstance(store, SlotCache)
        keys = store.keys[0]  # tokens per layer: every layer holds the same (one spare column a slot, never attended)
        held = keys.shape[0] * (keys.shape[2] - 1)
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
    assert loop.stats.peak_rows <= budget // (4 + 512) and loop.stats.prefills == 64  # rows x ring width
    assert loop.stats.most_prompts_in_a_step >= 2
    if pause_every:  # rejection frees rows: more prompts decode at once than the budget allows unpaused
        assert loop.stats.most_prompts_in_a_step > 3
        assert any(s.finish_reason == "rejected" for group in done.values() for s in group)


def _alone(engine, settings, ids: list[int], n: int, seed: int) -> list[tuple[int, ...]]:
    loop = engine.session(settings, max_rows=64, max_kv_tokens=100_000)
    loop.add("alone", ids, n, seed)
    return [s.token_ids for s in loop.result("alone")]


def test_the_slot_cache_gives_each_prompt_its_own_tokens_as_rows_end_move_and_the_ring_widens():
    engine = tiny_engine()
    engine.eos_ids = frozenset({5, 6, 7})  # common tokens: rows end at different steps, their slots refilled
    settings = SamplingSettings(temperature=1.0, top_p=1.0, max_tokens=30)
    prompts = sorted(_prompts(12), key=len)  # each wider than the last: the ring is re-laid out as they join
    loop = DecodeSession(engine, settings, engine.memory(8, 100_000))
    store = loop.batch.store
    assert isinstance(store, SlotCache)
    widths, moved = set(), []
    keep = store.keep
    store.keep = lambda rows, _keep=keep: (lambda order: (moved.append(order != rows), order)[1])(_keep(rows))  # type: ignore[method-assign]
    for k, ids in enumerate(prompts):
        loop.add(k, ids, 4, k)
    got = {}
    for k in range(len(prompts)):
        got[k] = [s.token_ids for s in loop.result(k)]
        widths.add(store.width)
    assert any(moved), "a finished row's slot was refilled by moving a later row into it"
    assert len(widths) > 1, "wider prompts re-laid the ring out"
    for k, ids in enumerate(prompts):
        assert got[k] == _alone(engine, settings, ids, 4, k), f"prompt {k}"


def test_admitting_a_prompt_writes_only_its_own_slots():
    engine = tiny_engine()
    engine.eos_ids = frozenset({64})  # outside the vocabulary: rows run to max_tokens
    settings = SamplingSettings(temperature=1.0, top_p=1.0, max_tokens=40)
    a, b = _prompts(2)
    loop = DecodeSession(engine, settings, engine.memory(16, 100_000))
    store = loop.batch.store
    assert isinstance(store, SlotCache)
    loop.add("a", a + a, 4, 0)  # the wider prompt first: the second fits the ring as it is
    loop.add("x", a, 4, 2, pause_every=1)  # 8 slots made at once; x's 4 leave once it pauses
    loop._step()
    loop._step()
    loop.resume("x", [])  # all of x's candidates rejected: slots 4..7 free
    before = [t.clone() for t in store.keys]
    pointers = [t.data_ptr() for t in store.keys]
    loop.add("b", b, 4, 1)
    loop._step()  # a's rows decode one step, then b is prefilled into slots 4..7
    assert [s.finish_reason for s in loop.result("x")] == ["rejected"] * 4
    assert len(loop.batch) == 8 and [t.data_ptr() for t in store.keys] == pointers, "no new cache tensors"
    written = (store.head - 1) % store.width
    for old, now in zip(before, store.keys):
        same = torch.ones(old.shape[2], dtype=torch.bool)
        same[written] = False  # a's rows wrote their step's column; nothing else of theirs changed
        assert torch.equal(old[:4, :, same], now[:4, :, same])


def test_rows_parked_while_others_decode_rejoin_the_ring_with_their_own_tokens():
    engine = tiny_engine()
    engine.eos_ids = frozenset({64})
    settings = SamplingSettings(temperature=1.0, top_p=1.0, max_tokens=24)
    a, b = _prompts(2)
    loop = DecodeSession(engine, settings, engine.memory(16, 100_000))
    loop.add("a", a, 3, 0, pause_every=6)
    loop.add("b", b, 3, 1)
    loop.advance(["a"])  # a pauses after 6 tokens
    assert loop.paused() == ["a"]
    loop.result("b")  # b decodes to its end while a's rows sit out: a's columns fall behind the head
    store = loop.batch.store
    assert isinstance(store, SlotCache) and max(store.behind) >= 10
    while loop.paused() or "a" not in loop.finished():
        for k in loop.paused():
            loop.resume(k, sorted(loop.partial(k)))
        loop.advance(["a"])
    assert [s.token_ids for s in loop.result("a")] == _alone(engine, settings, a, 3, 0)


def test_the_plan_counts_the_slot_caches_peak():
    engine = tiny_engine()
    settings = SamplingSettings(temperature=1.0, top_p=1.0, max_tokens=16)
    memory = engine.memory(64, 4_000)
    assert memory.layers == 2 and memory.kv_peak_tokens == 6_000  # one of two layers re-laid out at a time
    loop = DecodeSession(engine, settings, memory)
    for k, ids in enumerate(sorted(_prompts(10), key=len)):  # one a step, each wider: the ring grows as they join
        loop.add(k, ids, 4, k)
        loop._step()
    for k in range(10):
        loop.result(k)
    assert loop.stats.peak_kv_tokens <= memory.kv_tokens
    assert loop.stats.peak_kv_tokens < loop.stats.peak_kv_transient <= memory.kv_peak_tokens  # it was re-laid out
