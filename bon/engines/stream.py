"""Continuous batching for the transformers engine: one decode loop that prompts join as rows free up.

A `DecodeSession` keeps up to ``max_rows`` sequences decoding at every step. A prompt is admitted
when its N rows fit (one prefill, its KV cache expanded to N rows and merged into the live cache,
left-padded to a common width); its samples leave as soon as all N rows have finished, while the
other prompts' rows go on. The loop obeys one `MemoryPlan` (the one `bon check` prints): a prompt is
admitted only when every live row, grown by ``max_tokens``, still fits its rows and KV tokens
(`MemoryPlan.admits`), and prompts prefilled together stay inside its bytes (`MemoryPlan.prefill_fits`).

Each candidate draws its tokens from the uniforms of its own seed, exactly as `HFModel.sample`
does; only float rounding (other padding, other neighbours) can differ from a wave-batched run.

A prompt added with ``pause_every`` stops after every so many tokens (early rejection): its rows
leave the decode batch with their KV cache (parked), the caller looks at the partial answers and
`resume` puts the ones it keeps back into the batch, never re-prefilled; the others end
``"rejected"``. Parked rows count against both budgets, so resuming never overflows them.

Every request has one status (`Status`); the rows decoding now and their tensors belong to one
`_Batch`, which checks after every change that its rows, cache, mask, positions and logits agree.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from bon.engines.contract import EngineError, EngineInvariantError, Sample, SamplingSettings, derive_seed
from bon.engines.kv import KVCache, Layers
from bon.engines.memory import MemoryPlan, kv_need
from bon.engines.sampling import left_padded, pick, uniforms

CPU = torch.device("cpu")


class Forwarder(Protocol):
    """What the decode loop needs of a loaded causal LM (`bon.engines.hf.HFModel`)."""

    device: torch.device
    eos_ids: frozenset[int]  # every id that ends a sequence
    pad_id: int
    tokenizer: Any

    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, KVCache]:
        """(each row's last-position logits, the cache grown by ``ids``)."""
        ...

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
    parked: _Rows | None = None  # its rows out of the batch, KV kept, while paused


@dataclass
class _Rows:
    """Rows out of the decode batch with everything needed to put them back without a prefill."""

    owners: list[tuple[_Request, int]]
    layers: Layers
    mask: torch.Tensor
    pos: torch.Tensor
    logits: torch.Tensor

    def take(self, rows: list[int]) -> _Rows:
        idx = torch.tensor(rows, dtype=torch.long)
        return _Rows(
            [self.owners[r] for r in rows],
            [(k[idx.to(k.device)], v[idx.to(v.device)]) for k, v in self.layers],
            self.mask[idx.to(self.mask.device)],
            self.pos[idx.to(self.pos.device)],
            self.logits[idx.to(self.logits.device)],
        )

    def trimmed(self) -> _Rows:
        """These rows without the leading columns none of them attends to."""
        start = _first_used(self.mask)
        if start == 0:
            return self
        layers = [(k[:, :, start:], v[:, :, start:]) for k, v in self.layers]
        return _Rows(self.owners, layers, self.mask[:, start:], self.pos, self.logits)

    def tokens(self) -> int:
        return self.mask.shape[0] * self.mask.shape[1]


class _Batch:
    """The rows decoding now: owner ``r`` is row ``r`` of the cache, the mask, the positions and the logits.

    The only holder of those tensors; every change ends with `check`.
    """

    def __init__(self) -> None:
        self.owners: list[tuple[_Request, int]] = []
        self.cache: KVCache | None = None  # the first prefill's cache object carries every later row
        self.mask = self.pos = self.logits = torch.empty(0)

    def __len__(self) -> int:
        return len(self.owners)

    @property
    def width(self) -> int:
        return int(self.mask.shape[1]) if self.owners else 0

    def check(self) -> None:
        rows = len(self.owners)
        _require(self.mask.shape[0] == self.pos.shape[0] == self.logits.shape[0] == rows, "batch tensors out of order")
        if self.cache is not None:
            _require(self.cache.rows == rows, f"the KV cache holds {self.cache.rows} rows for {rows} owners")
            _require(rows == 0 or self.cache.sliding or self.cache.width == self.width, "cache and mask widths differ")
        _require(all(req.status is Status.DECODING for req, _ in self.owners), "a row of a request not decoding")

    def live(self) -> KVCache:
        """The cache object, which exists once a first prefill made it."""
        if self.cache is None:
            raise EngineInvariantError("the decode batch has no KV cache yet (no prompt was prefilled)")
        return self.cache

    def start(self, cache: KVCache, mask: torch.Tensor, pos: torch.Tensor, logits: torch.Tensor, owners) -> None:
        """Append freshly prefilled rows (their cache expanded to one row per owner)."""
        if self.cache is None or not self.owners:  # a fresh cache object for an empty batch (sliding layers too)
            self.cache = cache
        self.append(_Rows(owners, cache.layers(), mask, pos, logits))

    def append(self, rows: _Rows) -> None:
        """Rows join the batch (an empty one included): the narrower side is left-padded (masked)."""
        cache = self.live()
        if not self.owners:
            cache.set(rows.layers)
            self.mask, self.pos, self.logits = rows.mask, rows.pos, rows.logits
        else:
            width = max(self.width, rows.mask.shape[1])
            pad = [(_pad_time(k, width), _pad_time(v, width)) for k, v in cache.layers()]
            new = [(_pad_time(k, width), _pad_time(v, width)) for k, v in rows.layers]
            cache.set([(torch.cat([k, k2]), torch.cat([v, v2])) for (k, v), (k2, v2) in zip(pad, new)])
            self.mask = torch.cat([_pad_mask(self.mask, width), _pad_mask(rows.mask, width)])
            self.pos = torch.cat([self.pos, rows.pos])
            self.logits = torch.cat([self.logits, rows.logits])
        self.owners = self.owners + rows.owners
        self.check()

    def select(self, keep: list[int]) -> None:
        """Keep these rows, in this order; with none left the cache is emptied, its object kept for later rows."""
        cache = self.live()
        rows = torch.tensor(keep, dtype=torch.long)
        self.owners = [self.owners[k] for k in keep]
        if keep:
            cache.select(rows.to(self.mask.device))
            self.mask, self.pos, self.logits = self.mask[rows], self.pos[rows], self.logits[rows]
        else:
            cache.clear()
            self.mask, self.pos, self.logits = self.mask[:0, :0], self.pos[:0], self.logits[:0]
        self.check()

    def take(self, rows: list[int]) -> _Rows:
        """Copies of ``rows`` with their keys, values, mask, positions and logits (the batch unchanged)."""
        cache = self.live()
        idx = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        owners = [self.owners[r] for r in rows]
        return _Rows(owners, cache.take(idx), self.mask[idx], self.pos[idx], self.logits[idx]).trimmed()

    def step(self, engine: Forwarder, picked: torch.Tensor) -> None:
        """Run every row one position on with its picked token."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.owners), 1))], dim=1)
        ids = picked[:, None]  # sampled on the model's device
        self.logits, self.cache = engine.forward(ids, self.mask, self.pos[:, None], self.cache)
        self.pos = self.pos + 1
        self.check()

    def trim(self) -> None:
        """Drop leading cache columns that no row attends to (padding of rows that have left)."""
        cache = self.live()
        if cache.sliding:
            return  # a sliding window's cache is not aligned with the mask: those models decode in waves
        start = _first_used(self.mask)
        if start > 0:
            self.mask = self.mask[:, start:]
            cache.drop_columns(start)
            self.check()


@dataclass
class SessionStats:
    steps: int = 0
    peak_rows: int = 0
    peak_kv_tokens: int = 0  # rows x cache width, at its largest
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
        self.resuming: deque[_Rows] = deque()  # kept rows of resumed prompts, rejoining the batch before any new one
        self.batch = _Batch()
        self.stats = SessionStats()

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
        if req.parked is None:
            raise EngineInvariantError(f"paused prompt {key!r} has no parked rows")
        return {i: list(req.tokens[i]) for _, i in req.parked.owners}

    def resume(self, key: Hashable, keep: Sequence[int], pause: bool = True) -> None:
        """Let candidates ``keep`` of a paused prompt go on from where they are; its other parked ones end rejected.
        With ``pause`` False the prompt decodes to its end without pausing again."""
        req = self._in(key, Status.PAUSED)
        rows, req.parked = req.parked, None
        if rows is None:
            raise EngineInvariantError(f"paused prompt {key!r} has no parked rows")
        wanted = set(keep)
        kept = [r for r, (_, i) in enumerate(rows.owners) if i in wanted]
        for _, i in rows.owners:
            if i not in wanted:
                req.finish[i] = "rejected"
                req.left -= 1
        if not pause:
            req.every = None
        req.pause_at += req.every or 0
        req.status = Status.DECODING
        if kept:
            self.resuming.append(rows.take(kept))
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
        self.resuming.clear()
        self.batch = _Batch()

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
        return bool(self.batch or self.queue or self.resuming)

    @torch.inference_mode()
    def _step(self) -> None:
        if self.batch:
            self._decode()
        self._admit()

    def _decode(self) -> None:
        """Sample one token for every live row, drop finished rows, and run the rest one position on."""
        s, eos, batch = self.settings, self.engine.eos_ids, self.batch
        self.stats.steps += 1
        self.stats.tokens_sampled += len(batch)
        self.stats.most_prompts_in_a_step = max(
            self.stats.most_prompts_in_a_step, len({id(r) for r, _ in batch.owners})
        )
        u = None
        if s.temperature > 0:  # each row's next uniform, from its own CPU generator: rows x 8 bytes to the device
            u = torch.stack([req.uniforms[i, len(req.tokens[i])] for req, i in batch.owners])  # type: ignore[index]
            u = self._moved(u, batch.logits.device)
        picked = pick(batch.logits.float(), u, s)  # on the model's device: its logits never leave it
        keep: list[int] = []
        park: list[int] = []  # rows decoding on; of those, rows that park once this step's token is in the cache
        for row, ((req, i), t) in enumerate(zip(batch.owners, self._moved(picked, CPU).tolist())):
            if t in eos:
                req.finish[i] = "stop"
            else:
                req.tokens[i].append(t)
                if len(req.tokens[i]) < s.max_tokens:
                    if req.every and len(req.tokens[i]) == req.pause_at:
                        park.append(len(keep))
                    keep.append(row)
                    continue
            req.left -= 1
            if req.left == 0:
                self._finish(req)
        if len(keep) < len(batch):  # finished rows leave the batch and its cache
            batch.select(keep)
            picked = picked[torch.tensor(keep, dtype=torch.long, device=picked.device)]
        if not batch:
            return
        batch.step(self.engine, picked)
        if park:
            self._park(park)
        batch.trim()
        self._measure()

    def _moved(self, t: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``t`` on ``device``, its bytes counted (`SessionStats.moved_bytes`): the decode loop's only transfers."""
        self.stats.moved_bytes += t.numel() * t.element_size()
        return t.to(device)

    def _finish(self, req: _Request) -> None:
        req.status, req.uniforms = Status.FINISHED, None

    def _park(self, rows: list[int]) -> None:
        """Take ``rows`` out of the batch, KV cache and next-token logits kept; their prompts pause."""
        by_prompt: dict[int, list[int]] = {}
        for r in rows:
            by_prompt.setdefault(id(self.batch.owners[r][0]), []).append(r)
        for mine in by_prompt.values():  # a prompt's rows advance in step: all its unfinished rows park at once
            req = self.batch.owners[mine[0]][0]
            req.parked = self.batch.take(mine)
        leaving = set(rows)
        for req in {id(r): r for r, _ in (self.batch.owners[k] for k in rows)}.values():
            req.status = Status.PAUSED
        self.batch.select([r for r in range(len(self.batch)) if r not in leaving])

    def _parked(self) -> list[_Rows]:
        out = [r.parked for r in self.requests.values() if r.parked is not None]
        return out + list(self.resuming)

    def _admit(self) -> None:
        """Put kept rows back, then prefill the queued prompts whose rows fit, in order, and merge them in."""
        while self.resuming:  # their rows were counted while parked: they always fit
            self.batch.append(self.resuming.popleft())
        if self.waves and self.batch:
            return
        parked = self._parked()
        rows = len(self.batch) + sum(len(p.owners) for p in parked)
        width = max([self.batch.width] + [p.mask.shape[1] for p in parked])
        group: list[_Request] = []
        prefill = 0  # the group's padded prompt width
        while self.queue:
            req = self.queue[0]
            new_rows, new_width = rows + req.n, max(width, len(req.ids))
            if not self.memory.admits(new_rows, new_width, self.settings.max_tokens):
                break
            if not self.memory.prefill_fits(len(group) + 1, max(prefill, len(req.ids))):
                break
            group.append(self.queue.popleft())
            rows, width, prefill = new_rows, new_width, max(prefill, len(req.ids))
        if not group:
            return
        ids, mask, positions = left_padded([r.ids for r in group], self.engine.pad_id)
        device = self.engine.device
        logits, cache = self.engine.forward(ids.to(device), mask.to(device), positions.to(device))
        self.stats.prefills += len(group)
        self.stats.peak_prefill_logits = max(self.stats.peak_prefill_logits, logits.numel())
        counts = torch.tensor([r.n for r in group])
        cache.repeat(counts)
        owners = []
        for req in group:
            if self.settings.temperature > 0:  # made at admission: a long queue holds token ids only
                req.uniforms = uniforms(req.seeds, self.settings.max_tokens)
            req.status = Status.DECODING
            owners += [(req, i) for i in range(req.n)]
        self.batch.start(
            cache,
            mask.repeat_interleave(counts, dim=0).to(device),
            (positions[:, -1] + 1).repeat_interleave(counts).to(device),
            logits.repeat_interleave(counts.to(logits.device), dim=0),
            owners,
        )
        self._measure()

    def _measure(self) -> None:
        """Update the peaks, and check that every row held (decoding, parked, rejoining) is inside both budgets."""
        parked = self._parked()
        held = len(self.batch) + sum(len(p.owners) for p in parked)
        kv = len(self.batch) * self.batch.width + sum(p.tokens() for p in parked)
        _require(held <= self.max_rows, f"{held} rows held, more than max_rows {self.max_rows}")
        _require(kv <= self.max_kv_tokens, f"{kv} KV tokens held, more than max_kv_tokens {self.max_kv_tokens}")
        self.stats.peak_rows = max(self.stats.peak_rows, held)
        self.stats.peak_kv_tokens = max(self.stats.peak_kv_tokens, kv)

    def _samples(self, req: _Request) -> list[Sample]:
        return [
            Sample(
                text=self.engine.tokenizer.decode(req.tokens[i], skip_special_tokens=True),
                prompt_tokens=len(req.ids),
                completion_tokens=len(req.tokens[i]) + (req.finish[i] == "stop"),
                finish_reason=req.finish[i],
                seed=req.seeds[i],
                token_ids=tuple(req.tokens[i]),
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


def _first_used(mask: torch.Tensor) -> int:
    used = mask.any(dim=0).nonzero()
    return int(used[0]) if len(used) else 0


def _require(holds: bool, what: str) -> None:
    """An engine invariant, checked under `python -O` too (an assert would vanish there)."""
    if not holds:
        raise EngineInvariantError(what)


def _pad_time(t: torch.Tensor, width: int) -> torch.Tensor:
    return t if t.shape[2] == width else torch.nn.functional.pad(t, (0, 0, width - t.shape[2], 0))


def _pad_mask(m: torch.Tensor, width: int) -> torch.Tensor:
    return m if m.shape[1] == width else torch.nn.functional.pad(m, (width - m.shape[1], 0))
