"""Where the decode loop's rows keep their keys and values: a preallocated slot cache, or the model's own cache.

`SlotCache` (continuous batching): per layer one tensor of ``capacity`` slots x ``width`` columns,
allocated when the loop first needs it and again only when a wider prompt or more rows arrive
(layer by layer, so the transient is one layer). The columns are a ring: every row decoding writes
its next token at the same column, the ``head``, and a row's tokens are the columns behind it, so a
prompt of any length joins by writing its own prefill into a free slot, and a finished row frees
its slot by moving the last row into it. Nothing else is copied: no padding of the live cache, no
re-indexing of every row. Keys are cached after the rotary embedding, so a row's columns need not
be its positions; each step passes the model a 4-D mask of the columns each row owns. A row parked
for early rejection keeps its slot and writes to a spare column while others decode.

`ModelCache` (models with sliding-window layers, which decode in waves): transformers' own cache,
filled by one prefill into an empty batch and narrowed as rows finish.
"""

from __future__ import annotations

from typing import Protocol

import torch

from bon.engines.contract import EngineInvariantError
from bon.engines.kv import KVCache, slot_cache_object
from bon.engines.memory import MemoryPlan


class Forward(Protocol):
    """A causal LM's forward pass, as the stores call it (`bon.engines.hf.HFModel.forward`)."""

    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, KVCache]: ...


class RowStore(Protocol):
    """The keys and values of the decode batch's rows, row ``r`` being the batch's owner ``r``."""

    rows: int
    peak: int  # KV tokens held at the most, transients included

    def held(self) -> int:
        """KV tokens the store's tensors hold now (what the plan's budget bounds)."""
        ...

    def width_after(self, lengths: list[int], generated: int) -> int:
        """The prompt width the admission rule must check if prompts of ``lengths`` join (see `MemoryPlan.admits`)."""
        ...

    def place(self, cache: KVCache, mask: torch.Tensor, counts: torch.Tensor, generated: int) -> None:
        """Append the rows of one prefill (left-padded ``mask``), prompt ``j`` repeated ``counts[j]`` times."""
        ...

    def keep(self, rows: list[int]) -> list[int]:
        """Keep only ``rows`` (ascending); returns the kept rows' old indices in their new order."""
        ...

    def step(self, engine: Forward, ids: torch.Tensor, pos: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Run every row one position on (``active`` rows; the others' columns untouched); the logits per row."""
        ...

    def rejoin(self, rows: list[int]) -> None:
        """Rows that sat out steps (parked) line up with the head again before they decode."""
        ...


class SlotCache:
    """The ring: slots [0, rows) hold the batch's rows; column ``width`` of every slot is the spare column."""

    def __init__(self, memory: MemoryPlan):
        self.memory = memory
        self.keys: list[torch.Tensor] = []  # per layer: capacity x heads x (width + 1) x head_dim
        self.values: list[torch.Tensor] = []
        self.valid = torch.zeros((0, 1), dtype=torch.bool)  # capacity x (width + 1): the columns each slot owns
        self.width = 0  # ring columns
        self.capacity = 0
        self.rows = 0
        self.head = 0  # the column the next step writes
        self.behind: list[int] = []  # per row: steps it sat out since its last column (parked)
        self.peak = 0  # KV tokens held at most, re-layouts' transient layer included
        self.column: torch.Tensor | None = None  # this step's column per row; None: every row writes the head

    def held(self) -> int:
        return self.capacity * self.width

    def width_after(self, lengths: list[int], generated: int) -> int:
        widest = max(lengths) + generated
        return (max(self.width, widest) if self.rows else widest) - generated

    def place(self, cache: KVCache, mask: torch.Tensor, counts: torch.Tensor, generated: int) -> None:
        lengths = [int(n) for n in mask.sum(dim=1).tolist()]
        new = int(counts.sum())
        self._fit(self.rows + new, self.width_after(lengths, generated) + generated, cache)
        start, arange = self.rows, torch.arange(self.width, device=self.valid.device)
        for j, (count, length) in enumerate(zip(counts.tolist(), lengths)):
            slots = slice(start, start + count)
            cols = (self.head - length + arange[:length]) % self.width  # the prompt's own tokens end behind the head
            for buf, (k, v) in zip(zip(self.keys, self.values), cache.layers()):
                for dst, src in zip(buf, (k, v)):
                    dst[slots].zero_()  # a slot's earlier columns (or never-written memory) could hold NaN
                    dst[slots, :, cols] = src[j : j + 1, :, src.shape[2] - length :].to(dst.dtype)
            self.valid[slots] = False
            self.valid[slots, cols] = True
            start += count
        self.rows += new
        self.behind += [0] * new
        self._held()

    def keep(self, rows: list[int]) -> list[int]:
        order = list(range(self.rows))
        gone = sorted(set(order) - set(rows))
        survivors = len(rows)
        tail = [r for r in rows if r >= survivors]  # kept rows beyond the new end move into the holes below it
        for hole, src in zip((g for g in gone if g < survivors), reversed(tail)):
            for buf in (*self.keys, *self.values):
                buf[hole] = buf[src]
            self.valid[hole] = self.valid[src]
            self.behind[hole] = self.behind[src]
            order[hole] = src
        self.rows = survivors
        del order[survivors:], self.behind[survivors:]
        return order

    def step(self, engine: Forward, ids: torch.Tensor, pos: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        rows, head = self.rows, self.head
        everyone = bool(active.all())
        self.column = None if everyone else torch.where(active, head, self.width).to(self.valid.device)
        self.valid[:rows, head] |= active.to(self.valid.device)
        live = self.valid[:rows]
        dtype = self.keys[0].dtype
        mask = torch.zeros(live.shape, dtype=dtype, device=live.device).masked_fill_(~live, torch.finfo(dtype).min)
        cache = KVCache(slot_cache_object(self, len(self.keys)))  # made per step: kept, it would cycle back to self
        logits, _ = engine.forward(ids, mask[:, None, None, :], pos, cache)
        self.head = (head + 1) % self.width
        self.behind = [b + (not a) for b, a in zip(self.behind, active.tolist())]
        return logits

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step's keys and values of layer ``layer`` (rows x heads x 1 x dim) into the ring; what attention reads
        (views of the slots, no copy). Each row writes `column` (parked rows the spare one), or all the head."""
        k, v, column = self.keys[layer][: self.rows], self.values[layer][: self.rows], self.column
        if column is None:
            k[:, :, self.head] = keys[:, :, 0]
            v[:, :, self.head] = values[:, :, 0]
        else:
            idx = column.view(-1, 1, 1, 1).expand(-1, keys.shape[1], 1, keys.shape[3]).to(k.device)
            k.scatter_(2, idx, keys)
            v.scatter_(2, idx, values)
        return k, v

    def rejoin(self, rows: list[int]) -> None:
        for r in rows:
            lag, self.behind[r] = self.behind[r], 0
            if lag % self.width:  # its tokens end ``lag`` columns behind the head: turn its row of the ring
                for buf in (*self.keys, *self.values):
                    buf[r, :, : self.width] = buf[r, :, : self.width].roll(lag, dims=-2)
                self.valid[r, : self.width] = self.valid[r, : self.width].roll(lag, dims=-1)

    def _fit(self, rows: int, width: int, like: KVCache) -> None:
        """Make room for ``rows`` slots of ``width`` columns: the same tensors when they hold them, else new ones
        (the ring unrolled so its head is column 0, the old rows copied, layer by layer)."""
        if rows <= self.capacity and (width <= self.width if self.rows else width == self.width):
            return
        if rows > self.memory.rows or rows * width > self.memory.kv_tokens:
            raise EngineInvariantError(f"{rows} rows of {width} KV columns are beyond the plan's budgets")
        width = max(width, self.width) if self.rows else width
        fits = min(self.memory.rows, self.memory.kv_tokens // width)
        capacity = min(fits, max(rows, 2 * self.capacity if width == self.width else rows))
        old, shift = self.width, -self.head
        layers = like.layers()
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        for i, (k, v) in enumerate(layers):
            for dst, src, out in ((self.keys, k, keys), (self.values, v, values)):
                buf = src.new_empty((capacity, src.shape[1], width + 1, src.shape[3]))
                if self.rows:  # the ring's columns in age order end just before the new head, column 0
                    buf[: self.rows, :, width - old : width] = dst[i][: self.rows, :, :old].roll(shift, dims=-2)
                    buf[: self.rows, :, : width - old].zero_()
                    buf[: self.rows, :, width].zero_()
                out.append(buf)
                if dst:
                    dst[i] = buf  # the old layer goes now: one layer of transient, not a second cache
        valid = torch.zeros((capacity, width + 1), dtype=torch.bool, device=layers[0][0].device)
        if self.rows:
            valid[: self.rows, width - old : width] = self.valid[: self.rows, :old].roll(shift, dims=-1)
        old_held, new_held = self.held(), capacity * width
        self.peak = max(self.peak, old_held + new_held // len(layers), new_held + old_held // len(layers))
        self.keys, self.values, self.valid = keys, values, valid
        self.width, self.capacity, self.head = width, capacity, 0

    def _held(self) -> None:
        self.peak = max(self.peak, self.held())


class ModelCache:
    """Transformers' own cache for models that decode in waves: one prefill into an empty batch, rows only leave."""

    def __init__(self) -> None:
        self.cache: KVCache | None = None
        self.mask = torch.zeros((0, 0), dtype=torch.long)
        self.rows = 0
        self.peak = 0

    def held(self) -> int:
        return self.rows * int(self.mask.shape[1])

    def width_after(self, lengths: list[int], generated: int) -> int:
        return max(lengths)  # rows join only an empty batch

    def place(self, cache: KVCache, mask: torch.Tensor, counts: torch.Tensor, generated: int) -> None:
        if self.rows:
            raise EngineInvariantError("a wave-decoding batch takes new rows only when empty")
        cache.repeat(counts)
        self.cache, self.rows = cache, int(counts.sum())
        self.mask = mask.repeat_interleave(counts.to(mask.device), dim=0)
        self.peak = max(self.peak, self.held())

    def keep(self, rows: list[int]) -> list[int]:
        if self.cache is not None and rows != list(range(self.rows)):
            index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
            if rows:
                self.cache.select(index)
            self.mask = self.mask[index]
        self.rows = len(rows)
        if not rows:
            self.cache = None
        return rows

    def step(self, engine: Forward, ids: torch.Tensor, pos: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.rows, 1))], dim=1)
        logits, self.cache = engine.forward(ids, self.mask, pos, self.cache)
        self.peak = max(self.peak, self.held())
        return logits

    def rejoin(self, rows: list[int]) -> None:
        if rows:
            raise EngineInvariantError("a wave-decoding batch has no parked rows")
