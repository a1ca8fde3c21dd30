"""What a transformers model will hold on its device: one `MemoryPlan`, asked by preflight and obeyed by the engine.

Rows, KV bytes, forward-pass bytes, dtype sizes, the memory share and the admission rule are
computed here and nowhere else. Preflight builds the plan from a config (tokenizer and model config
only) and the engine from the loaded model, both against all the device's memory (as vLLM sizes its
cache from the total and its utilisation), so a prompt `bon check` passes is never refused mid-run;
memory that other processes hold when a run starts is said in one line (`MemoryPlan.shortfall`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bon.core.errors import SizeError

CPU_ROWS = 128  # continuous batching: sequences decoding at once on a CPU by default
GPU_ROWS = 512  # and on a GPU
# Padded tokens of one scoring forward pass (judges, perplexity, rewards, embeddings). On a CPU rows beyond
# ~1k tokens gain nothing (a 300-token row already fills the matmuls) and padding runs masked attention:
# 8 rows of 500-1,400 tokens took 29 s padded together, 13 s one by one (SmolLM2, 2 cores).
CPU_FORWARD_TOKENS = 1024
GPU_FORWARD_TOKENS = 32768
LOGIT_BYTES = 4  # logits are read as float32 whatever the weights' dtype

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def dtype_name(dtype: str, cpu: bool) -> str:
    """A config's dtype with `auto` resolved: float32 on a CPU, bfloat16 on an accelerator."""
    if dtype != "auto":
        return dtype
    return "float32" if cpu else "bfloat16"


def default_rows(cuda: bool) -> int:
    """The default `policy.max_rows` of the transformers engine."""
    return GPU_ROWS if cuda else CPU_ROWS


def kv_bytes_per_token(model_config: Any, dtype_bytes: int) -> int:
    """Bytes of keys and values one token takes in the KV cache, from a transformers model config."""
    heads = getattr(model_config, "num_key_value_heads", None) or model_config.num_attention_heads
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // model_config.num_attention_heads
    return 2 * model_config.num_hidden_layers * heads * head_dim * dtype_bytes


def forward_bytes_per_token(model_config: Any, dtype_bytes: int) -> int:
    """Peak bytes one token holds in a forward pass: its keys and values plus the widest MLP activation
    (gate and up projections of a gated MLP), an estimate that ignores attention scores (fused kernels)."""
    width = getattr(model_config, "intermediate_size", None) or 4 * model_config.hidden_size
    return kv_bytes_per_token(model_config, dtype_bytes) + 2 * width * dtype_bytes


def memory_bytes(cuda: bool, total: bool = False, device: Any = None) -> int:
    """This machine's free memory (``total``: all of it), in RAM or on the GPU ``device`` (None: the current one)."""
    if cuda:
        import torch  # only on a GPU path, where the engine has imported it already

        return int(torch.cuda.mem_get_info(device)[1 if total else 0])
    if not total:
        available = _mem_available()
        if available is not None:
            return available
    return os.sysconf("SC_PHYS_PAGES" if total else "SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _mem_available() -> int | None:
    """Linux's MemAvailable: free RAM plus the page cache it would give back (MemFree alone counts the cache as
    used), None elsewhere."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _parts(cuda: bool) -> int:
    return 2 if cuda else 4


def memory_share(cuda: bool, total: bool = False, device: Any = None) -> int:
    """Bytes an engine may fill on its own: half a GPU's free memory, a quarter of the free RAM (the free
    memory is only said; plans count all of it).

    With ``total``, the same share of all the memory: what this machine could ever hold (the plan's bound,
    which does not move with what else runs).
    """
    return memory_bytes(cuda, total, device) // _parts(cuda)


def _room(memory: int, weights: int, cuda: bool) -> int:
    """The share of ``memory`` left beside the weights: what the KV cache may fill by default."""
    return max(0, memory - weights) // _parts(cuda)


def _default_kv_tokens(memory: int, weights: int, cuda: bool, kv_per_token: int) -> int:
    """`policy.max_kv_tokens` unset: the tokens `_room` holds (at least one)."""
    return max(1, _room(memory, weights, cuda) // kv_per_token)


def weight_bytes(model_config: Any, dtype_bytes: int) -> int:
    """Bytes of a decoder's weights estimated from its config (attention, gated MLP per expert, norms, embeddings), so
    preflight, which reads no weights, and the engine, which has them, plan the same KV budget."""
    c = model_config
    heads = c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    width = getattr(c, "intermediate_size", None) or 4 * c.hidden_size
    experts = getattr(c, "num_local_experts", None) or getattr(c, "num_experts", None) or 1
    norms = 2 * c.hidden_size
    layer = c.hidden_size * head_dim * 2 * (heads + kv_heads) + experts * 3 * c.hidden_size * width + norms
    embeddings = (
        int(getattr(c, "vocab_size", 0) or 0) * c.hidden_size * (1 if getattr(c, "tie_word_embeddings", False) else 2)
    )
    return (c.num_hidden_layers * layer + embeddings + c.hidden_size) * dtype_bytes


def share_name(cuda: bool) -> str:
    """`memory_share` in words, for messages."""
    return "half the GPU's memory" if cuda else "a quarter of the RAM"


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def kv_need(rows: int, width: int, generated: int) -> int:
    """KV tokens ``rows`` sequences of ``width`` tokens hold once each has generated ``generated`` more."""
    return rows * (width + generated)


@dataclass(frozen=True)
class MemoryPlan:
    """One model's memory on one device: per-token sizes, the share it may fill, and the decode budgets.

    Built by `plan` from a model config and a dtype; ``kv_tokens`` and ``rows`` are what the decode
    loop admits against (a user's ``policy.max_kv_tokens`` / ``policy.max_rows``, else the defaults).
    """

    cuda: bool
    dtype_bytes: int
    kv_per_token: int  # bytes of keys and values per token
    layers: int  # decoder layers: the KV cache is re-laid out one layer at a time
    forward_per_token: int  # peak bytes per token of a forward pass
    vocab: int  # logits per position
    weights: int  # bytes of the weights (`weight_bytes`, from the config)
    free: int  # the device's memory free when planned (said when the weights and KV budget need more)
    bound: int  # the share of all the memory (`memory_share`): the most one forward pass may take
    memory: int  # all the device's memory: a budget beyond it is refused
    rows: int  # sequences decoding at once
    kv_tokens: int  # tokens the KV cache may hold
    kv_source: str  # where ``kv_tokens`` comes from, for messages

    @property
    def share_name(self) -> str:
        return share_name(self.cuda)

    @property
    def kv_peak_tokens(self) -> int:
        """KV tokens held at the most: the budget, plus one layer's worth while the decode loop's slot cache moves to
        wider or more slots (`bon.engines.slots.SlotCache`, one layer at a time)."""
        return self.kv_tokens + -(-self.kv_tokens // max(1, self.layers))

    def admits(self, rows: int, width: int, generated: int) -> bool:
        """Whether ``rows`` sequences as wide as ``width`` tokens, each grown by ``generated``, fit both budgets: the
        decode loop's admission rule, which preflight applies to every prompt before a run."""
        return rows <= self.rows and kv_need(rows, width, generated) <= self.kv_tokens

    def prefill_fits(self, prompts: int, width: int) -> bool:
        """Whether one prefill of ``prompts`` left-padded to ``width`` tokens fits the share (`prefill_bytes`)."""
        return self.prefill_bytes(prompts, width) <= self.bound

    def prefill_bytes(self, prompts: int, width: int) -> int:
        """Peak bytes of one prefill of ``prompts`` left-padded to ``width`` tokens, keeping each prompt's last
        logits only (all the decode loop reads)."""
        return prompts * (width * self.forward_per_token + self.vocab * LOGIT_BYTES)

    def forward_bytes(self, rows: int, width: int, logit_positions: int = 0) -> int:
        """Peak bytes of a forward pass over ``rows`` sequences of ``width`` tokens whose last ``logit_positions``
        positions keep their logits (the model's and a float32 copy)."""
        return rows * (width * self.forward_per_token + logit_positions * 2 * LOGIT_BYTES * self.vocab)

    def check_forward(self, rows: int, width: int, batch_size: int, logit_positions: int = 0) -> None:
        """Refuse a forward pass that could never fit the share, naming the judge's batch_size that would."""
        need = self.forward_bytes(rows, width, logit_positions)
        if need > self.bound:
            fit = max(1, self.bound // max(1, self.forward_bytes(1, width, logit_positions)))
            raise SizeError(
                f"batch_size {batch_size:,}: one forward pass of {rows:,} sequences of {width:,} tokens needs about "
                f"{need / 2**30:.1f} GiB, more than {self.share_name} ({_gib(self.bound)}); {fit:,} such sequences "
                f"fit: lower the judge's batch_size to at most {fit:,}"
            )

    def forward_batches(self, lengths: Sequence[int], batch_size: int) -> list[list[int]]:
        """Indices of ``lengths`` in batches for scoring forward passes: longest first, each batch at most
        ``batch_size`` rows and at most the device's padded tokens (a longer row goes alone)."""
        budget = GPU_FORWARD_TOKENS if self.cuda else CPU_FORWARD_TOKENS
        batches: list[list[int]] = []
        for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):  # stable: equal lengths keep their order
            batch = batches[-1] if batches else None
            if batch and len(batch) < batch_size and (len(batch) + 1) * lengths[batch[0]] <= budget:
                batch.append(i)
            else:
                batches.append([i])
        return batches

    def forward_rows(self, width: int) -> int:
        """Sequences of ``width`` tokens one forward pass can hold in the share (at least 1)."""
        return max(1, self.bound // max(1, self.forward_bytes(1, width)))

    def check_kv(self) -> None:
        """Refuse weights that alone fill the device's memory, or a KV budget beyond all of it (no default is)."""
        if self.weights >= self.memory:
            raise SizeError(
                f"the weights, about {_gib(self.weights)} in {'float32' if self.dtype_bytes == 4 else '16-bit floats'} "
                "(estimated from the model's config), "
                f"fill all this machine's {'GPU memory' if self.cuda else 'RAM'} ({_gib(self.memory)}) before any KV "
                "cache: use a device with more memory, or a smaller dtype"
            )
        if self.kv_tokens * self.kv_per_token > self.memory:
            default = _default_kv_tokens(self.memory, self.weights, self.cuda, self.kv_per_token)
            raise SizeError(
                f"{self.kv_source} {self.kv_tokens:,} is more KV cache than this machine holds: at "
                f"{self.kv_per_token} bytes a token, all its {'GPU memory' if self.cuda else 'RAM'} "
                f"({_gib(self.memory)}) is {self.memory // self.kv_per_token:,} tokens; lower it, or leave it unset "
                f"(the default here: {default:,})"
            )

    def shortfall(self, role: str = "policy") -> str | None:
        """One line, before a run loads its weights, when the memory free now cannot hold them and a full KV cache
        (other processes hold the rest), else None: the run keeps the budget `bon check` showed."""
        need = self.kv_peak_tokens * self.kv_per_token
        if need + self.weights <= self.free:
            return None
        return (
            f"{role} KV budget {self.kv_tokens:,} tokens ({_gib(need)} at its peak) and weights "
            f"({_gib(self.weights)}) are more than the {_gib(self.free)} free now: other processes hold the rest; "
            "the run keeps the budget `bon check` showed"
        )

    @property
    def kv_said(self) -> str:
        """Where the KV budget comes from, as messages name it."""
        if self.kv_source == "policy.max_kv_tokens":
            return self.kv_source
        return f"{self.kv_source}, {self.share_name} beside the weights at {self.kv_per_token} bytes a token,"

    def summary(self) -> str:
        """The plan in one line, as `bon check` prints it."""
        return (
            f"{self.rows:,} rows; KV {self.kv_per_token:,} B/token (at most {self.kv_peak_tokens:,} tokens while the "
            f"cache grows a layer at a time), forward {self.forward_per_token:,} B/token; "
            f"{_gib(self.bound)} share ({self.share_name})"
        )


def plan(
    model_config: Any,
    dtype_bytes: int,
    cuda: bool,
    device: Any = None,
    *,
    max_rows: int | None = None,
    max_kv_tokens: int | None = None,
) -> MemoryPlan:
    """The memory plan of a model on a device: budgets (a user's, else a share of all its memory) that preflight
    checks and the engine obeys, the same numbers wherever they are planned. ``device``: a GPU by name."""
    kv = kv_bytes_per_token(model_config, dtype_bytes)
    weights = weight_bytes(model_config, dtype_bytes)
    memory = memory_bytes(cuda, True, device)
    return MemoryPlan(
        cuda=cuda,
        dtype_bytes=dtype_bytes,
        kv_per_token=kv,
        layers=int(model_config.num_hidden_layers),
        forward_per_token=forward_bytes_per_token(model_config, dtype_bytes),
        vocab=int(getattr(model_config, "vocab_size", 0) or 0),
        weights=weights,
        free=memory_bytes(cuda, False, device),
        bound=memory_share(cuda, True, device),
        memory=memory,
        rows=max_rows or default_rows(cuda),
        kv_tokens=max_kv_tokens or _default_kv_tokens(memory, weights, cuda, kv),
        kv_source="policy.max_kv_tokens" if max_kv_tokens else "policy.max_kv_tokens' default",
    )
