"""The engine protocol shared by the transformers and vLLM backends."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from bon.core.errors import BonError
from bon.core.records import Candidate


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (run seed, prompt id, index), stable across processes and runs."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


class EngineError(BonError, RuntimeError):
    """An inference engine failed while running (e.g. vLLM's engine core died); finished work is kept."""


class EngineInvariantError(EngineError):
    """The decode loop's own bookkeeping broke (rows, cache and budgets disagree): a bug in bon, never bad input."""


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float
    top_p: float
    max_tokens: int


@dataclass(frozen=True)
class Confidence:
    """The policy's own next-token distributions at the tokens it sampled (end of sequence left out), summed over
    them: before temperature and top-p, so a teacher-forced pass over the same tokens computes the same sums."""

    tokens: int  # tokens summed over (the sample's token ids)
    logprob: float  # the sampled tokens' log-probabilities
    entropy: float  # the distributions' entropies, in nats
    certainty: float  # self-certainty's term, KL(uniform || p) = -mean over the vocabulary of log(V p)

    def fields(self) -> dict[str, Any]:
        """These sums as `Candidate`'s optional fields (`of` reads them back)."""
        return {
            "confidence_tokens": self.tokens,
            "logprob_sum": self.logprob,
            "entropy_sum": self.entropy,
            "certainty_sum": self.certainty,
        }

    @staticmethod
    def of(candidate: Candidate) -> Confidence | None:
        """What a candidate's policy recorded while decoding it; None when it was not measured."""
        c = candidate
        if c.confidence_tokens is None or c.logprob_sum is None or c.entropy_sum is None or c.certainty_sum is None:
            return None
        return Confidence(c.confidence_tokens, c.logprob_sum, c.entropy_sum, c.certainty_sum)


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
    flag: str | None = None  # why it ended other than by itself (e.g. a chunk that made no progress)
    confidence: Confidence | None = None  # measured while decoding, where the engine can (`Confidence`)


class ChatIds(list[int]):
    """A conversation's token ids in the model's chat template that carry the messages they encode, so an engine that
    sends messages (a chat endpoint) reads them here, never maps ids back. Every engine reads it as its ids; a slice
    or a concatenation (a prompt cut to fit, a partial answer appended) is plain ids, with no messages to send."""

    def __init__(self, ids: Sequence[int], messages: Sequence[dict[str, str]], answer_begun: bool = False):
        super().__init__(ids)
        self.messages: tuple[dict[str, str], ...] = tuple(dict(m) for m in messages)
        self.answer_begun = answer_begun  # the last message is an assistant answer to go on with, not a new turn

    def continued(self, tokens: Sequence[int], text: str) -> ChatIds:
        """This conversation with a partial answer (``tokens``, reading ``text``) to go on from: early rejection's
        next chunk, sent to a chat endpoint as the assistant's answer begun."""
        return ChatIds([*self, *tokens], [*self.messages, {"role": "assistant", "content": text}], answer_begun=True)


def without_end(token_ids: Sequence[int], finish_reason: str, eos_ids: Collection[int]) -> tuple[int, ...]:
    """A finished sample's tokens as every engine records them: a final end-of-sequence id (any of the model's,
    e.g. Llama-3's ``<|eot_id|>`` and ``<|end_of_text|>``) dropped, every earlier token kept."""
    if finish_reason == "stop" and token_ids and token_ids[-1] in eos_ids:
        return tuple(token_ids[:-1])
    return tuple(token_ids)


@runtime_checkable
class DecodeLoop(Protocol):
    """A continuous decode loop: prompts join with `add` and leave with `result`, rows freed go to the next.

    The pipeline queues prompts ahead of the one it waits for, so the loop always has work.
    """

    @property
    def max_rows(self) -> int:
        """Sequences decoding at once: how far ahead the pipeline queues prompts."""
        ...

    def add(self, key: Hashable, ids: list[int], n: int, seed: int) -> None:
        """Queue ``n`` samples of one prompt (a key already in the loop is refused)."""
        ...

    def result(self, key: Hashable) -> list[Sample]:
        """Decode until prompt ``key`` has finished (others progress meanwhile); its ``n`` samples, by index."""
        ...

    def close(self) -> None:
        """Abandon every prompt still in the loop (the engine drops their requests); the loop is empty after."""
        ...


@runtime_checkable
class PausableLoop(DecodeLoop, Protocol):
    """A decode loop whose prompts can stop every so many tokens for a caller to keep some candidates (early
    rejection): `advance` runs until a prompt pauses, `partial` shows its answers, `resume` keeps some."""

    def add(self, key: Hashable, ids: list[int], n: int, seed: int, pause_every: int | None = None) -> None:
        """As `DecodeLoop.add`; with ``pause_every``, the prompt pauses after every so many tokens."""
        ...

    def advance(self, keys: Collection[Hashable]) -> None:
        """Decode until every prompt of ``keys`` has finished or some prompt is paused."""
        ...

    def paused(self) -> list[Hashable]:
        """The prompts waiting for `resume`, in the order they paused."""
        ...

    def partial(self, key: Hashable) -> dict[int, list[int]]:
        """A paused prompt's unfinished candidates: index -> tokens so far."""
        ...

    def resume(self, key: Hashable, keep: Sequence[int], pause: bool = True) -> None:
        """Candidates ``keep`` of a paused prompt go on; its other unfinished ones end ``"rejected"``. With
        ``pause`` False the prompt never pauses again (nothing left to choose among)."""
        ...


class Tokens(Protocol):
    """The token side of a model: what prompts and context limits need, with or without weights."""

    name: str  # display name of the weights, e.g. SmolLM2-135M-Instruct
    tokenizer: Any  # a Hugging Face tokenizer
    context: int | None  # tokens one sequence may hold (prompt + generated); None = unknown

    def chat_ids(self, messages: Sequence[dict[str, str]], fix: str = "use a model with one") -> list[int]:
        """Token ids of a conversation in the model's chat template, ready for the assistant turn.

        A tokenizer without a chat template is a `bon.engines.tokens.PromptFormatError` that says ``fix``.
        """

    def text_ids(self, text: str) -> list[int]:
        """Token ids of raw text as the model reads a document (BOS added if the tokenizer does)."""


class LanguageModel(Tokens, Protocol):
    """What policies and model-based judges need from an engine."""

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
        (transformers reuses its KV cache; vLLM's prefix caching does so by itself). Without keys, both
        find the prefixes prompts share.

        A token the engine cannot report (outside vLLM's top-k logprobs) is absent from the dict.
        """

    def continuation_logprobs(
        self, prompts: Sequence[list[int]], continuations: Sequence[list[int]], batch_size: int = 8
    ) -> list[list[float]]:
        """Log-probability of each continuation token after its prompt (and the tokens before it)."""


@runtime_checkable
class MeasuresConfidence(Tokens, Protocol):
    """An engine that computes a continuation's `Confidence` in one teacher-forced pass (the full distribution at
    each token: the transformers engine)."""

    def continuation_confidence(
        self, prompts: Sequence[list[int]], continuations: Sequence[list[int]], batch_size: int = 8
    ) -> list[Confidence]:
        """Per continuation, the sums the decode loop records while sampling it."""
        ...


@runtime_checkable
class StreamingModel(LanguageModel, Protocol):
    """An engine with a continuous decode loop (every engine bon ships; a model without one samples by `sample`)."""

    def session(
        self, settings: SamplingSettings, max_rows: int | None = None, max_kv_tokens: int | None = None
    ) -> DecodeLoop:
        """A decode loop over this engine; budgets left None are the engine's defaults."""
        ...
