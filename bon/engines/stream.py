"""Continuous batching for the transformers engine: one decode loop that prompts join as rows free up.

A `DecodeSession` keeps up to ``max_rows`` sequences decoding at every step. A prompt is admitted
when its N rows fit (one prefill, its KV cache expanded to N rows and merged into the live cache,
left-padded to a common width); its samples leave as soon as all N rows have finished, while the
other prompts' rows go on. The KV cache never holds more than ``max_kv_tokens`` tokens: a prompt is
admitted only when every live row, grown by ``max_tokens``, still fits.

Each candidate draws its tokens from the uniforms of its own seed, exactly as `HFModel.sample`
does; only float rounding (other padding, other neighbours) can differ from a wave-batched run.

A prompt added with ``pause_every`` stops after every so many tokens (early rejection): its rows
leave the decode batch with their KV cache (parked), the caller looks at the partial answers and
`resume` puts the ones it keeps back into the batch, never re-prefilled; the others end
``"rejected"``. Parked rows count against both budgets, so resuming never overflows them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from bon.engines.base import (
    EngineError,
    Sample,
    SamplingSettings,
    default_kv_tokens,
    derive_seed,
    kv_bytes_per_token,
)
from bon.engines.sampling import _left_padded, _pick, uniforms


def kv_tokens_for(model: torch.nn.Module, device: torch.device) -> int:
    """The default KV-token budget of a loaded model on ``device`` (`bon.engines.base.default_kv_tokens`)."""
    per_token = kv_bytes_per_token(model.config, next(model.parameters()).element_size())
    cuda = device.type == "cuda"
    return default_kv_tokens(per_token, cuda, device=device if cuda else None)  # the model's own GPU


@dataclass
class _Request:
    key: Hashable
    ids: list[int]
    n: int
    seeds: list[int]
    uniforms: torch.Tensor | None  # (n, max_tokens) float64, one row per candidate, once admitted
    tokens: list[list[int]] = field(default_factory=list)
    finish: list[str] = field(default_factory=list)
    left: int = 0  # rows still decoding
    every: int | None = None  # tokens between two pauses (None: never pauses)
    pause_at: int = 0  # the length at which its rows park next
    parked: _Rows | None = None  # its rows out of the batch, KV kept, while the caller decides


@dataclass
class _Rows:
    """Rows taken out of the decode batch with everything needed to put them back without a prefill."""

    owners: list[tuple[_Request, int]]
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # keys, values per layer
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

    def tokens(self) -> int:
        return self.mask.shape[0] * self.mask.shape[1]


@dataclass
class SessionStats:
    steps: int = 0
    peak_rows: int = 0
    peak_kv_tokens: int = 0  # rows x cache width, at its largest
    most_prompts_in_a_step: int = 0  # distinct prompts whose rows shared one decode step
    prefills: int = 0  # prompts prefilled (each once: resumed rows keep their cache)


class DecodeSession:
    """A continuous decode loop over an `HFModel`; `add` queues prompts, `result` returns one prompt's samples."""

    pauses = True  # prompts added with ``pause_every`` park between chunks (early rejection)

    def __init__(self, engine, settings: SamplingSettings, max_rows: int, max_kv_tokens: int):
        self.engine, self.settings = engine, settings
        self.max_rows, self.max_kv_tokens = max_rows, max_kv_tokens
        self.queue: deque[_Request] = deque()
        self.live: dict[Hashable, _Request] = {}
        self.done: dict[Hashable, list[Sample]] = {}
        self.paused: dict[Hashable, _Request] = {}  # parked, waiting for `resume`
        self.resuming: deque[_Rows] = deque()  # kept rows waiting to rejoin the batch (before any new prompt)
        self.rows: list[tuple[_Request, int]] = []  # (prompt, candidate index) of each cache row
        self.cache: Any = None
        self.mask = self.pos = self.logits = torch.empty(0)
        self.stats = SessionStats()

    def add(self, key: Hashable, ids: list[int], n: int, seed: int, pause_every: int | None = None) -> None:
        """Queue ``n`` samples of one prompt; candidate ``i`` uses the uniforms of ``derive_seed(seed, i)``.

        With ``pause_every``, the prompt pauses after every so many tokens (see `paused`, `resume`).
        """
        s = self.settings
        self.engine.check_fits([len(ids)], s.max_tokens)
        if n > self.max_rows or n * (len(ids) + s.max_tokens) > self.max_kv_tokens:
            raise EngineError(
                f"one prompt of {len(ids)} tokens with n={n} and max_tokens={s.max_tokens} needs "
                f"{n} rows and {n * (len(ids) + s.max_tokens)} KV tokens; the engine allows {self.max_rows} rows "
                f"and {self.max_kv_tokens} tokens (policy.max_rows, policy.max_kv_tokens)"
            )
        seeds = [derive_seed(seed, i) for i in range(n)]
        req = _Request(key, list(ids), n, seeds, None, [[] for _ in range(n)], ["length"] * n, n, pause_every)
        req.pause_at = pause_every or 0
        self.queue.append(req)

    def partial(self, key: Hashable) -> dict[int, list[int]]:
        """A paused prompt's parked candidates: index -> tokens so far."""
        rows = self.paused[key].parked
        assert rows is not None
        return {i: list(req.tokens[i]) for req, i in rows.owners}

    def resume(self, key: Hashable, keep: Sequence[int]) -> None:
        """Let candidates ``keep`` of a paused prompt go on from where they are; its other parked ones end rejected."""
        req = self.paused.pop(key)
        rows, req.parked = req.parked, None
        assert rows is not None
        wanted = set(keep)
        kept = [r for r, (_, i) in enumerate(rows.owners) if i in wanted]
        for _, i in rows.owners:
            if i not in wanted:
                req.finish[i] = "rejected"
                req.left -= 1
        req.pause_at += req.every or 0
        if kept:
            self.resuming.append(rows.take(kept))
        elif req.left == 0:
            self.done[req.key] = self._samples(self.live.pop(req.key))

    def advance(self, keys: Collection[Hashable]) -> None:
        """Decode until every prompt of ``keys`` is done or some prompt is paused."""
        while not self.paused and not all(k in self.done for k in keys):
            if not self.rows and not self.queue and not self.resuming:
                missing = [k for k in keys if k not in self.done]
                raise KeyError(f"prompts {missing[:3]} ({len(missing)} in all) are not in this decode session")
            self._step()

    def result(self, key: Hashable) -> list[Sample]:
        """Decode until prompt ``key`` is finished (other prompts progress meanwhile); its ``n`` samples."""
        while key not in self.done:
            if not self.rows and not self.queue and not self.resuming:
                state = "is paused (resume it)" if key in self.paused else "was never added to this decode session"
                raise KeyError(f"prompt {key!r} {state}")
            self._step()
        return self.done.pop(key)

    @torch.inference_mode()
    def _step(self) -> None:
        if self.rows:
            self._decode()
        self._admit()

    def _decode(self) -> None:
        """Sample one token for every live row, drop finished rows, and run the rest one position on."""
        s, eos = self.settings, self.engine.eos_ids
        self.stats.steps += 1
        self.stats.most_prompts_in_a_step = max(self.stats.most_prompts_in_a_step, len({id(r) for r, _ in self.rows}))
        u = None
        if s.temperature > 0:
            u = torch.stack([req.uniforms[i, len(req.tokens[i])] for req, i in self.rows])  # type: ignore[index]
        picked = _pick(self.logits.float().cpu(), u, s)
        keep: list[int] = []
        park: list[int] = []  # rows decoding on; of those, rows that park once this step's token is in the cache
        for row, ((req, i), t) in enumerate(zip(self.rows, picked.tolist())):
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
                self.done[req.key] = self._samples(self.live.pop(req.key))
        if len(keep) < len(self.rows):  # finished rows leave the batch and its cache
            self._select(keep)
            picked = picked[keep]
        if not self.rows:
            return
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=1)
        out = self.engine.model(
            input_ids=picked[:, None].to(self.engine.device),
            attention_mask=self.mask,
            position_ids=self.pos[:, None],
            use_cache=True,
            **{self.engine._cache_kw: self.cache},
        )
        self.cache, self.logits, self.pos = self.engine._cache(out), out.logits[:, -1, :], self.pos + 1
        if park:
            self._park(park)
        self._trim()
        self._measure()

    def _park(self, rows: list[int]) -> None:
        """Take ``rows`` out of the batch, KV cache and next-token logits kept; their prompts pause."""
        by_prompt: dict[int, list[int]] = {}
        for r in rows:
            by_prompt.setdefault(id(self.rows[r][0]), []).append(r)
        for mine in by_prompt.values():  # a prompt's rows advance in step: all its unfinished rows park at once
            req = self.rows[mine[0]][0]
            idx = torch.tensor(mine, dtype=torch.long, device=self.mask.device)
            layers = [(layer.keys[idx], layer.values[idx]) for layer in self.cache.layers]
            owners = [self.rows[r] for r in mine]
            req.parked = _trimmed(_Rows(owners, layers, self.mask[idx], self.pos[idx], self.logits[idx]))
            self.paused[req.key] = req
        leaving = set(rows)
        self._select([r for r in range(len(self.rows)) if r not in leaving])

    def _admit(self) -> None:
        """Put kept rows back, then prefill the queued prompts whose rows fit, in order, and merge them in."""
        while self.resuming:  # their rows were counted while parked: they always fit
            back = self.resuming.popleft()
            self._merge(back.layers, back.mask, back.pos, back.logits)
            self.rows += back.owners
        group: list[_Request] = []
        parked = [r.parked for r in self.paused.values() if r.parked is not None]
        rows = len(self.rows) + sum(len(p.owners) for p in parked)
        width = max([self.mask.shape[1] if self.rows else 0] + [p.mask.shape[1] for p in parked])
        while self.queue:
            req = self.queue[0]
            new_rows, new_width = rows + req.n, max(width, len(req.ids))
            if new_rows > self.max_rows or new_rows * (new_width + self.settings.max_tokens) > self.max_kv_tokens:
                break
            group.append(self.queue.popleft())
            rows, width = new_rows, new_width
        if not group:
            return
        ids, mask, positions = _left_padded([r.ids for r in group], self.engine.pad_id)
        device = self.engine.device
        out = self.engine.model(
            input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device), use_cache=True
        )
        counts = torch.tensor([r.n for r in group])
        self.stats.prefills += len(group)
        cache = _expand(self.engine._cache(out), counts)
        if self.cache is None:  # the first prefill's cache object carries every later row
            self.cache = cache
        self._merge(
            [(layer.keys, layer.values) for layer in cache.layers],
            mask.repeat_interleave(counts, dim=0).to(device),
            (positions[:, -1] + 1).repeat_interleave(counts).to(device),
            out.logits[:, -1, :].repeat_interleave(counts.to(out.logits.device), dim=0),
        )
        for req in group:
            if self.settings.temperature > 0:  # made at admission: a long queue holds token ids only
                req.uniforms = uniforms(req.seeds, self.settings.max_tokens)
            self.live[req.key] = req
            self.rows += [(req, i) for i in range(req.n)]
        self._measure()

    def _measure(self) -> None:
        parked = [r.parked for r in self.paused.values() if r.parked is not None] + list(self.resuming)
        held = len(self.rows) + sum(len(p.owners) for p in parked)
        self.stats.peak_rows = max(self.stats.peak_rows, held)
        kv = len(self.rows) * self.mask.shape[1] + sum(p.tokens() for p in parked)
        self.stats.peak_kv_tokens = max(self.stats.peak_kv_tokens, kv)

    def _merge(self, layers: list[tuple[torch.Tensor, torch.Tensor]], mask, pos, logits) -> None:
        """Append rows to the live batch (an empty one included): the narrower side is left-padded (masked)."""
        if not self.rows:  # nothing live: the new rows are the batch
            for live, (k, v) in zip(self.cache.layers, layers):
                live.keys, live.values = k, v
            self.mask, self.pos, self.logits = mask, pos, logits
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for live, (k, v) in zip(self.cache.layers, layers):
            live.keys = torch.cat([_pad_time(live.keys, width), _pad_time(k, width)], dim=0)
            live.values = torch.cat([_pad_time(live.values, width), _pad_time(v, width)], dim=0)
        self.mask = torch.cat([_pad_mask(self.mask, width), _pad_mask(mask, width)], dim=0)
        self.pos = torch.cat([self.pos, pos])
        self.logits = torch.cat([self.logits, logits], dim=0)

    def _select(self, keep: list[int]) -> None:
        """Keep these rows of the batch; with none left the cache is emptied, its object kept for later rows."""
        rows = torch.tensor(keep, dtype=torch.long)
        self.rows = [self.rows[k] for k in keep]
        if keep:
            self.cache.batch_select_indices(rows.to(self.engine.device))
            self.mask, self.pos, self.logits = self.mask[rows], self.pos[rows], self.logits[rows]
            return
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[:0, :, :0], layer.values[:0, :, :0]
        self.mask, self.pos, self.logits = self.mask[:0, :0], self.pos[:0], self.logits[:0]

    def _trim(self) -> None:
        """Drop leading cache columns that no live row attends to (padding of rows that have left)."""
        if any(getattr(layer, "is_sliding", False) for layer in self.cache.layers):
            return  # a sliding window's cache is not aligned with the mask (one-wave use only: `HFModel.sample`)
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        if start > 0:
            self.mask = self.mask[:, start:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]

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


def _trimmed(rows: _Rows) -> _Rows:
    """Parked rows without the leading columns none of them attends to."""
    used = rows.mask.any(dim=0).nonzero()
    start = int(used[0]) if len(used) else 0
    if start == 0:
        return rows
    rows.mask = rows.mask[:, start:]
    rows.layers = [(k[:, :, start:], v[:, :, start:]) for k, v in rows.layers]
    return rows


def _expand(cache, counts: torch.Tensor):
    """Each prompt's cache rows repeated ``counts[k]`` times (its N candidates share one prefill)."""
    if bool((counts == counts[0]).all()):  # the usual case: the cache's own expansion, for any layer type
        cache.batch_repeat_interleave(int(counts[0]))
        return cache
    for layer in cache.layers:
        layer.keys = layer.keys.repeat_interleave(counts.to(layer.keys.device), dim=0)
        layer.values = layer.values.repeat_interleave(counts.to(layer.values.device), dim=0)
    return cache


def _pad_time(t: torch.Tensor, width: int) -> torch.Tensor:
    return t if t.shape[2] == width else torch.nn.functional.pad(t, (0, 0, width - t.shape[2], 0))


def _pad_mask(m: torch.Tensor, width: int) -> torch.Tensor:
    return m if m.shape[1] == width else torch.nn.functional.pad(m, (width - m.shape[1], 0))
