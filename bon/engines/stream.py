"""Continuous batching for the transformers engine: one decode loop that prompts join as rows free up.

A `DecodeSession` keeps up to ``max_rows`` sequences decoding at every step. A prompt is admitted
when its N rows fit (one prefill, written into N free slots of the preallocated `SlotCache`; no live
row is copied); its samples leave as soon as all N rows have finished, while the other prompts' rows
go on. The loop obeys one `MemoryPlan` (the one `bon check` prints): a prompt is admitted only when
the slot cache, as wide as its longest prompt plus ``max_tokens``, still fits the rows and KV tokens
(`MemoryPlan.admits`), and prompts prefilled together stay inside its bytes (`MemoryPlan.prefill_fits`).

Each candidate draws its tokens from the uniforms of its own seed, exactly as `HFModel.sample`
does; only float rounding (other padding, other neighbours) can differ from a wave-batched run.

A prompt added with ``pause_every`` stops after every so many tokens (early rejection): its rows
sit out the decode steps with their slots (parked), the caller looks at the partial answers and
`resume` lets the ones it keeps decode again, never re-prefilled; the others end ``"rejected"`` and
free their slots. Parked rows keep their slots, so resuming never overflows the budgets.

Every request has one status (`Status`); the rows held and their tensors belong to one `_Batch`,
which checks after every change that its rows, store, positions, logits and statuses agree.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from bon.engines.contract import (
    Confidence,
    EngineError,
    EngineInvariantError,
    Sample,
    SamplingSettings,
    derive_seed,
)
from bon.engines.kv import KVCache
from bon.engines.memory import MemoryPlan, kv_need
from bon.engines.sampling import left_padded, pick, uniforms
from bon.engines.slots import Forward, ModelCache, RowStore, SlotCache

CPU = torch.device("cpu")


class Forwarder(Forward, Protocol):
    """What the decode loop needs of a loaded causal LM (`bon.engines.hf.HFModel`)."""

    device: torch.device
    eos_ids: frozenset[int]  # every id that ends a sequence
    pad_id: int
    tokenizer: Any

    def check_fits(self, lengths: Sequence[int], generated: int) -> None: ...


class Status(enum.Enum):
    QUEUED = "queued"  # added, not prefilled yet
    DECODING = "decoding"  # its rows are in the batch (or rejoining it after a pause)
    PAUSED = "paused"  # its unfinished rows are parked, waiting for `resume`
    FINISHED = "finished"  # every row has ended; its samples wait for `result`


@dataclass(eq=False)
class _Request:
    key: Hashable
    ids: list[int]
    n: int
    seeds: list[int]
    every: int | None  # tokens between two pauses (None: never pauses)
    status: Status = Status.QUEUED
    uniforms: torch.Tensor | None = None  # (n, max_tokens) float64, one row per candidate, once admitted
    tokens: list[list[int]] = field(default_factory=list)
    finish: list[str] = field(default_factory=list)
    left: int = 0  # rows still going
    pause_at: int = 0  # the length at which its rows park next
    confidence: dict[int, Confidence] = field(default_factory=dict)  # per candidate, once its row has left


class _Batch:
    """The rows held now, decoding or parked: owner ``r`` is row ``r`` of the store, the positions, the logits and
    ``active`` (False while its prompt is paused).

    The only holder of those tensors; every change ends with `check`.
    """

    def __init__(self, store: RowStore) -> None:
        self.store = store
        self.owners: list[tuple[_Request, int]] = []
        self.pos = self.logits = torch.empty(0)
        self.active = torch.zeros(0, dtype=torch.bool)  # on the CPU, per row
        self.sums = torch.zeros((0, 3), dtype=torch.float64)  # per row, on the device: `Confidence`'s running sums

    def __len__(self) -> int:
        return len(self.owners)

    def decoding(self) -> list[int]:
        """The rows that decode at the next step."""
        return self.active.nonzero().flatten().tolist()

    def check(self) -> None:
        rows = len(self.owners)
        sizes = {self.pos.shape[0], self.logits.shape[0], self.active.shape[0], self.sums.shape[0]}
        _require(sizes == {rows}, "batch tensors out of order")
        _require(self.store.rows == rows, f"the KV store holds {self.store.rows} rows for {rows} owners")
        want = [Status.DECODING if a else Status.PAUSED for a in self.active.tolist()]
        agree = all(req.status is w for (req, _), w in zip(self.owners, want))
        _require(agree, "a row's status and its prompt's differ")

    def start(
        self,
        cache: KVCache,
        mask: torch.Tensor,
        counts: torch.Tensor,
        pos: torch.Tensor,
        logits: torch.Tensor,
        owners: list[tuple[_Request, int]],
        generated: int,
    ) -> None:
        """Append freshly prefilled rows: prompt ``j``'s cache and mask repeated ``counts[j]`` times, in order."""
        self.store.place(cache, mask, counts, generated)
        self.owners = self.owners + owners
        self.pos = torch.cat([self.pos.to(pos.device), pos]) if len(self.pos) else pos
        self.logits = torch.cat([self.logits, logits]) if len(self.logits) else logits
        self.active = torch.cat([self.active, torch.ones(len(owners), dtype=torch.bool)])
        fresh = torch.zeros((len(owners), 3), dtype=torch.float64, device=logits.device)
        self.sums = torch.cat([self.sums.to(logits.device), fresh])
        self.check()

    def keep(self, rows: list[int]) -> list[int]:
        """Keep only ``rows`` (ascending); the store may reorder them: their old indices in the new order."""
        order = self.store.keep(rows)
        idx = torch.tensor(order, dtype=torch.long)
        self.owners = [self.owners[k] for k in order]
        self.pos, self.logits = self.pos[idx.to(self.pos.device)], self.logits[idx.to(self.logits.device)]
        self.active = self.active[idx]
        self.sums = self.sums[idx.to(self.sums.device)]
        self.check()
        return order

    def step(self, engine: Forwarder, picked: torch.Tensor) -> None:
        """Run the active rows one position on with their picked tokens (parked rows keep their logits)."""
        everyone = bool(self.active.all())
        logits = self.store.step(engine, picked[:, None], self.pos[:, None], self.active)
        if everyone:
            self.logits, self.pos = logits, self.pos + 1
        else:
            act = self.active.to(logits.device)
            self.logits = torch.where(act[:, None], logits, self.logits)
            self.pos = self.pos + act.to(self.pos.device)
        self.check()

    def park(self, rows: list[int]) -> None:
        """These rows sit out the coming steps, slot and logits kept (their prompts are paused)."""
        self.active[rows] = False
        self.check()

    def rejoin(self, rows: list[int]) -> None:
        """Parked rows decode again from where they stopped (their prompt resumed)."""
        self.store.rejoin(rows)
        self.active[rows] = True
        self.check()


@dataclass
class SessionStats:
    steps: int = 0
    peak_rows: int = 0
    peak_kv_tokens: int = 0  # KV tokens the cache tensors held, at their most (the plan's ``kv_tokens`` bounds it)
    peak_kv_transient: int = 0  # the same with a re-layout's spare layer (`MemoryPlan.kv_peak_tokens` bounds it)
    most_prompts_in_a_step: int = 0  # distinct prompts whose rows shared one decode step
    prefills: int = 0  # prompts prefilled (each once: resumed rows keep their cache)
    peak_prefill_logits: int = 0  # logits held by one prefill (rows x vocabulary), at its largest
    tokens_sampled: int = 0  # rows sampled, summed over steps (a token each)
    moved_bytes: int = 0  # bytes the decode steps moved between the model's device and the CPU (uniforms, token ids)


class DecodeSession:
    """A continuous decode loop over an `HFModel` (a `bon.engines.contract.PausableLoop`).

    ``waves``: admit prompts only into an empty batch (models whose sliding-window caches cannot be merged
    across prompts): the budgets hold as for continuous batching; pausing is refused.
    """

    def __init__(self, engine: Forwarder, settings: SamplingSettings, memory: MemoryPlan, waves: bool = False):
        self.engine, self.settings, self.memory, self.waves = engine, settings, memory, waves
        self.requests: dict[Hashable, _Request] = {}  # every request added and not yet returned by `result`
        self.queue: deque[_Request] = deque()  # QUEUED, in admission order
        self.batch = _Batch(ModelCache() if waves else SlotCache(memory))
        self.stats = SessionStats()
        self._eos_ids: torch.Tensor | None = None

    @property
    def max_rows(self) -> int:
        return self.memory.rows

    @property
    def max_kv_tokens(self) -> int:
        return self.memory.kv_tokens

    def add(self, key: Hashable, ids: list[int], n: int, seed: int, pause_every: int | None = None) -> None:
        """Queue ``n`` samples of one prompt; candidate ``i`` uses the uniforms of ``derive_seed(seed, i)``.

        With ``pause_every``, the prompt pauses after every so many tokens (see `paused`, `resume`).
        """
        s = self.settings
        if key in self.requests:
            raise EngineError(f"prompt {key!r} is already in this decode session ({self.requests[key].status.value})")
        if pause_every is not None and self.waves:
            raise EngineError("this model decodes in waves (a sliding-window cache): its rows cannot pause")
        self.engine.check_fits([len(ids)], s.max_tokens)
        if not self.memory.admits(n, len(ids), s.max_tokens) or not self.memory.prefill_fits(1, len(ids)):
            m = self.memory
            raise EngineError(
                f"one prompt of {len(ids)} tokens with n={n} and max_tokens={s.max_tokens} needs {n} rows, "
                f"{kv_need(n, len(ids), s.max_tokens)} KV tokens and a {m.prefill_bytes(1, len(ids)):,}-byte prefill; "
                f"the engine allows {m.rows} rows, {m.kv_tokens} tokens (policy.max_rows, policy.max_kv_tokens) and "
                f"{m.bound:,} bytes ({m.share_name})"
            )
        seeds = [derive_seed(seed, i) for i in range(n)]
        req = _Request(key, list(ids), n, seeds, pause_every, tokens=[[] for _ in range(n)], finish=["length"] * n)
        req.left, req.pause_at = n, pause_every or 0
        self.requests[key] = req
        self.queue.append(req)

    def paused(self) -> list[Hashable]:
        """The prompts waiting for `resume`, in the order they were added."""
        return [k for k, r in self.requests.items() if r.status is Status.PAUSED]

    def partial(self, key: Hashable) -> dict[int, list[int]]:
        """A paused prompt's parked candidates: index -> tokens so far."""
        req = self._in(key, Status.PAUSED)
        return {i: list(req.tokens[i]) for owner, i in self.batch.owners if owner is req}

    @torch.inference_mode()
    def resume(self, key: Hashable, keep: Sequence[int], pause: bool = True) -> None:
        """Let candidates ``keep`` of a paused prompt go on from where they are; its other parked ones end rejected.
        With ``pause`` False the prompt decodes to its end without pausing again."""
        req = self._in(key, Status.PAUSED)
        wanted = set(keep)
        gone = set()
        for r, (owner, i) in enumerate(self.batch.owners):
            if owner is req and i not in wanted:
                req.finish[i] = "rejected"
                req.left -= 1
                gone.add(r)
        if gone:
            self._record(sorted(gone))
            self.batch.keep([r for r in range(len(self.batch)) if r not in gone])
        if not pause:
            req.every = None
        req.pause_at += req.every or 0
        req.status = Status.DECODING
        mine = [r for r, (owner, _) in enumerate(self.batch.owners) if owner is req]
        if mine:
            self.batch.rejoin(mine)
        elif req.left == 0:
            self._finish(req)

    def advance(self, keys: Collection[Hashable]) -> None:
        """Decode until every prompt of ``keys`` is done or some prompt is paused."""
        while not self.paused() and not all(self._status(k) is Status.FINISHED for k in keys):
            if not self._working():
                missing = [k for k in keys if self._status(k) is not Status.FINISHED]
                raise KeyError(f"prompts {missing[:3]} ({len(missing)} in all) are not in this decode session")
            self._step()

    def result(self, key: Hashable) -> list[Sample]:
        """Decode until prompt ``key`` is finished (other prompts progress meanwhile); its ``n`` samples."""
        while self._status(key) is not Status.FINISHED:
            if not self._working():
                paused = self._status(key) is Status.PAUSED
                state = "is paused (resume it)" if paused else "was never added to this decode session"
                raise KeyError(f"prompt {key!r} {state}")
            self._step()
        return self._samples(self.requests.pop(key))

    def finished(self) -> list[Hashable]:
        """Prompts whose samples wait for `result`."""
        return [k for k, r in self.requests.items() if r.status is Status.FINISHED]

    def close(self) -> None:
        """Drop every prompt still here, its rows and its cache (nothing outside this process holds them)."""
        self.requests.clear()
        self.queue.clear()
        self.batch = _Batch(ModelCache() if self.waves else SlotCache(self.memory))

    def _status(self, key: Hashable) -> Status | None:
        req = self.requests.get(key)
        return None if req is None else req.status

    def _in(self, key: Hashable, status: Status) -> _Request:
        req = self.requests.get(key)
        if req is None or req.status is not status:
            now = req.status.value if req else "not in this decode session"
            raise KeyError(f"prompt {key!r} is {now}, not {status.value}")
        return req

    def _working(self) -> bool:
        return bool(self.queue or self.batch.decoding())

    @torch.inference_mode()
    def _step(self) -> None:
        steps, prefills = self.stats.steps, self.stats.prefills
        self._decode()
        self._admit()
        if (steps, prefills) == (self.stats.steps, self.stats.prefills):  # queued prompts wait on parked rows' room
            raise EngineError(
                f"{len(self.queue)} queued prompts cannot start while paused prompts {self.paused()[:3]} hold the "
                "rows and KV budget: resume them (or reject their candidates) first"
            )

    def _decode(self) -> None:
        """Sample one token for every decoding row, drop finished rows, and run the rest one position on."""
        s, eos, batch = self.settings, self.engine.eos_ids, self.batch
        rows = batch.decoding()
        if not rows:
            return
        self.stats.steps += 1
        self.stats.tokens_sampled += len(rows)
        prompts = len({id(batch.owners[r][0]) for r in rows})
        self.stats.most_prompts_in_a_step = max(self.stats.most_prompts_in_a_step, prompts)
        everyone = len(rows) == len(batch)
        idx = torch.tensor(rows, dtype=torch.long, device=batch.logits.device)
        logits = batch.logits if everyone else batch.logits[idx]
        u = None
        if s.temperature > 0:  # each row's next uniform, from its own CPU generator: rows x 8 bytes to the device
            owners = [batch.owners[r] for r in rows]
            u = torch.stack([req.uniforms[i, len(req.tokens[i])] for req, i in owners])  # type: ignore[index]
            u = self._moved(u, logits.device)
        picked = pick(logits.float(), u, s)  # on the model's device: its logits never leave it
        sums = confidence_terms(logits, picked) * ~torch.isin(picked, self._eos(picked.device))[:, None]
        if everyone:
            batch.sums += sums
        else:
            batch.sums.index_add_(0, idx, sums)
        ended: set[int] = set()
        park: set[tuple[int, int]] = set()  # (prompt, candidate) that park once this step's token is in the cache
        for row, t in zip(rows, self._moved(picked, CPU).tolist()):
            req, i = batch.owners[row]
            if t in eos:
                req.finish[i] = "stop"
            else:
                req.tokens[i].append(t)
                if len(req.tokens[i]) < s.max_tokens:
                    if req.every and len(req.tokens[i]) == req.pause_at:
                        park.add((id(req), i))
                    continue
            ended.add(row)
            req.left -= 1
            if req.left == 0:
                self._finish(req)
        self._record(sorted(ended))
        if not everyone:  # parked rows feed a token too; their columns stay untouched
            picked = torch.zeros(len(batch), dtype=picked.dtype, device=picked.device).index_copy_(0, idx, picked)
        if ended:  # finished rows leave the batch and free their slots
            order = batch.keep([r for r in range(len(batch)) if r not in ended])
            picked = picked[torch.tensor(order, dtype=torch.long, device=picked.device)]
        if not batch.decoding():
            return
        batch.step(self.engine, picked)
        if park:
            self._park(park)
        self._measure()

    def _eos(self, device: torch.device) -> torch.Tensor:
        """The end-of-sequence ids as a tensor on ``device`` (made once)."""
        if self._eos_ids is None or self._eos_ids.device != device:
            self._eos_ids = torch.tensor(sorted(self.engine.eos_ids), dtype=torch.long, device=device)
        return self._eos_ids

    def _record(self, rows: list[int]) -> None:
        """The confidence of ``rows``, which leave the batch: their sums come to the CPU once (24 bytes a row)."""
        if not rows:
            return
        index = torch.tensor(rows, dtype=torch.long, device=self.batch.sums.device)
        sums = self._moved(self.batch.sums[index], CPU).tolist()
        for r, (logprob, entropy, certainty) in zip(rows, sums):
            req, i = self.batch.owners[r]
            req.confidence[i] = Confidence(len(req.tokens[i]), logprob, entropy, certainty)

    def _moved(self, t: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``t`` on ``device``, its bytes counted (`SessionStats.moved_bytes`): the decode loop's only transfers."""
        self.stats.moved_bytes += t.numel() * t.element_size()
        return t.to(device)

    def _finish(self, req: _Request) -> None:
        req.status, req.uniforms = Status.FINISHED, None

    def _park(self, rows: set[tuple[int, int]]) -> None:
        """These (prompt, candidate) rows sit out the coming steps, KV cache and next-token logits kept; their prompts
        pause (a prompt's rows advance in step: all its unfinished rows park at once)."""
        where = [r for r, (req, i) in enumerate(self.batch.owners) if (id(req), i) in rows]
        for r in where:
            self.batch.owners[r][0].status = Status.PAUSED
        self.batch.park(where)

    def _admit(self) -> None:
        """Prefill the queued prompts whose rows fit, in order, and add them to the batch."""
        if self.waves and self.batch:
            return
        g = self.settings.max_tokens
        rows = len(self.batch)  # parked rows keep their slots: they count
        group: list[_Request] = []
        lengths: list[int] = []
        while self.queue:
            req = self.queue[0]
            widths = [*lengths, len(req.ids)]
            if not self.memory.admits(rows + req.n, self.batch.store.width_after(widths, g), g):
                break
            if not self.memory.prefill_fits(len(group) + 1, max(widths)):
                break
            group.append(self.queue.popleft())
            rows, lengths = rows + req.n, widths
        if not group:
            return
        ids, mask, positions = left_padded([r.ids for r in group], self.engine.pad_id)
        device = self.engine.device
        logits, cache = self.engine.forward(ids.to(device), mask.to(device), positions.to(device))
        self.stats.prefills += len(group)
        self.stats.peak_prefill_logits = max(self.stats.peak_prefill_logits, logits.numel())
        counts = torch.tensor([r.n for r in group])
        owners = []
        for req in group:
            if self.settings.temperature > 0:  # made at admission: a long queue holds token ids only
                req.uniforms = uniforms(req.seeds, self.settings.max_tokens)
            req.status = Status.DECODING
            owners += [(req, i) for i in range(req.n)]
        self.batch.start(
            cache,
            mask.to(device),
            counts,
            (positions[:, -1] + 1).repeat_interleave(counts).to(device),
            logits.repeat_interleave(counts.to(logits.device), dim=0),
            owners,
            g,
        )
        self._measure()

    def _measure(self) -> None:
        """Update the peaks, and check that the rows held (decoding, parked) and their KV tensors are inside both
        budgets."""
        held, kv, store = len(self.batch), self.batch.store.held(), self.batch.store
        _require(held <= self.max_rows, f"{held} rows held, more than max_rows {self.max_rows}")
        _require(kv <= self.max_kv_tokens, f"{kv} KV tokens held, more than max_kv_tokens {self.max_kv_tokens}")
        _require(store.peak <= self.memory.kv_peak_tokens, f"{store.peak} KV tokens held while the cache grew")
        self.stats.peak_rows = max(self.stats.peak_rows, held)
        self.stats.peak_kv_tokens = max(self.stats.peak_kv_tokens, kv)
        self.stats.peak_kv_transient = max(self.stats.peak_kv_transient, store.peak)

    def _samples(self, req: _Request) -> list[Sample]:
        return [
            Sample(
                text=self.engine.tokenizer.decode(req.tokens[i], skip_special_tokens=True),
                prompt_tokens=len(req.ids),
                completion_tokens=len(req.tokens[i]) + (req.finish[i] == "stop"),
                finish_reason=req.finish[i],
                seed=req.seeds[i],
                token_ids=tuple(req.tokens[i]),
                confidence=req.confidence.get(i),
            )
            for i in range(req.n)
        ]


class WaveLoop:
    """A `bon.engines.contract.DecodeLoop` (not pausable) for models whose caches cannot be merged across prompts:
    a `DecodeSession` in waves, within the same budgets."""

    def __init__(self, engine: Forwarder, settings: SamplingSettings, memory: MemoryPlan):
        self.session = DecodeSession(engine, settings, memory, waves=True)

    @property
    def max_rows(self) -> int:
        return self.session.max_rows

    @property
    def stats(self) -> SessionStats:
        return self.session.stats

    def add(self, key: Hashable, ids: list[int], n: int, seed: int) -> None:
        self.session.add(key, ids, n, seed)

    def result(self, key: Hashable) -> list[Sample]:
        return self.session.result(key)

    def close(self) -> None:
        self.session.close()


def confidence_terms(logits: torch.Tensor, picked: torch.Tensor) -> torch.Tensor:
    """Per row of ``logits`` (float64, on their device): the picked token's log-probability, the entropy and
    self-certainty's term -mean log(V p) of the model's own distribution (before temperature and top-p)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen = logp.gather(1, picked[:, None].to(logp.device))[:, 0]
    entropy = -(logp.exp() * logp).sum(-1)
    certainty = -logp.mean(-1) - math.log(logp.shape[-1])
    return torch.stack([chosen, entropy, certainty], dim=1).double()


def _require(holds: bool, what: str) -> None:
    """An engine invariant, checked under `python -O` too (an assert would vanish there)."""
    if not holds:
        raise EngineInvariantError(what)
