"""The engine protocol shared by the transformers and vLLM backends."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bon.core.errors import BonError

CPU_ROWS = 128  # continuous batching: sequences decoding at once on a CPU by default
GPU_ROWS = 512  # and on a GPU


def default_rows(cuda: bool) -> int:
    """The default `policy.max_rows` of the transformers engine."""
    return GPU_ROWS if cuda else CPU_ROWS


DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def dtype_name(dtype: str, cpu: bool) -> str:
    """A config's dtype with `auto` resolved: float32 on a CPU, bfloat16 on an accelerator."""
    if dtype != "auto":
        return dtype
    return "float32" if cpu else "bfloat16"


def kv_bytes_per_token(model_config: Any, dtype_bytes: int) -> int:
    """Bytes of keys and values one token takes in the KV cache, from a transformers model config."""
    heads = getattr(model_config, "num_key_value_heads", None) or model_config.num_attention_heads
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // model_config.num_attention_heads
    return 2 * model_config.num_hidden_layers * heads * head_dim * dtype_bytes


def memory_bytes(cuda: bool, total: bool = False, device: Any = None) -> int:
    """This machine's free memory (``total``: all of it), in RAM or on the GPU ``device`` (None: the current one)."""
    if cuda:
        import torch  # only on a GPU path, where the engine has imported it already

        return int(torch.cuda.mem_get_info(device)[1 if total else 0])
    return os.sysconf("SC_PHYS_PAGES" if total else "SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def memory_share(cuda: bool, total: bool = False, device: Any = None) -> int:
    """Bytes an engine may fill on its own: half a GPU's free memory, a quarter of the free RAM.

    With ``total``, the same share of all the memory: what this machine could ever hold (preflight's bound,
    which does not move with what else runs).
    """
    return memory_bytes(cuda, total, device) // (2 if cuda else 4)


def share_name(cuda: bool) -> str:
    """`memory_share` in words, for messages."""
    return "half the GPU's memory" if cuda else "a quarter of the RAM"


def default_kv_tokens(per_token: int, cuda: bool, total: bool = False, device: Any = None) -> int:
    """The default `policy.max_kv_tokens`: `memory_share` in KV tokens of ``per_token`` bytes."""
    return max(1, memory_share(cuda, total, device) // per_token)


def forward_bytes_per_token(model_config: Any, dtype_bytes: int) -> int:
    """Peak bytes one token holds in a forward pass: its keys and values plus the widest MLP activation
    (gate and up projections of a gated MLP), an estimate that ignores attention scores (fused kernels)."""
    width = getattr(model_config, "intermediate_size", None) or 4 * model_config.hidden_size
    return kv_bytes_per_token(model_config, dtype_bytes) + 2 * width * dtype_bytes


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (run seed, prompt id, index), stable across processes and runs."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


class EngineError(BonError, RuntimeError):
    """An inference engine failed while running (e.g. vLLM's engine core died); finished work is kept."""


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float
    top_p: float
    max_tokens: int


@dataclass(frozen=True)
class Sample:
    """One generated sequence."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop", "length", or "rejected" (stopped early by its caller)
    seed: int | None
    token_ids: tuple[int, ...] = ()  # the generated tokens (end-of-sequence excluded), to continue from
    source: str | None = (
        None  # who generated it when the engine cannot vouch: a server's model name and system_fingerprint
    )


class LanguageModel(Protocol):
    """What policies and model-based judges need from an engine."""

    name: str  # display name of the weights, e.g. SmolLM2-135M-Instruct
    tokenizer: Any  # a Hugging Face tokenizer
    context: int | None  # tokens one sequence may hold (prompt + generated); None = unknown

    def chat_ids(self, messages: Sequence[dict[str, str]], fix: str = "use a model with one") -> list[int]:
        """Token ids of a conversation in the model's chat template, ready for the assistant turn.

        A tokenizer without a chat template is a `bon.engines.tokens.PromptFormatError` that says ``fix``.
        """

    def text_ids(self, text: str) -> list[int]:
        """Token ids of raw text as the model reads a document (BOS added if the tokenizer does)."""

    def sample(
        self, prompts: Sequence[list[int]], n: int, seeds: Sequence[int], settings: SamplingSettings
    ) -> list[list[Sample]]:
        """``n`` samples for each prompt; ``seeds[i]`` seeds prompt ``i``'s samples."""

    def next_token_logprobs(
        self,
        prompts: Sequence[list[int]],
        token_ids: Sequence[int],
        batch_size: int = 8,
        groups: Sequence[Any] | None = None,
    ) -> list[dict[int, float]]:
        """Log-probabilities of ``token_ids`` as the next token after each prompt.

        Consecutive prompts with equal ``groups`` keys share a prefix the engine may compute once
        (transformers reuses its KV cache; vLLM's prefix caching does so by itself).

        A token the engine cannot report (outside vLLM's top-k logprobs) is absent from the dict.
        """

    def continuation_logprobs(
        self, prompts: Sequence[list[int]], continuations: Sequence[list[int]], batch_size: int = 8
    ) -> list[list[float]]:
        """Log-probability of each continuation token after its prompt (and the tokens before it)."""
