"""Policies: sample N candidates per prompt through an engine, in the configured prompt format."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any, Protocol, runtime_checkable

from bon.core.config import PolicyConfig
from bon.core.formats import CHAT, render
from bon.core.records import Candidate, Prompt
from bon.engines import LanguageModel, Sample, SamplingSettings, derive_seed, load_engine
from bon.engines.contract import DecodeLoop, StreamingModel, Tokens
from bon.engines.tokens import ContextLengthError, effective_context, overflow_message


class Policy(Protocol):
    """What samples candidates: ``bon.run(config, policy=...)`` and ``bon.BestOfN(config, policy=...)`` take an object
    of yours in place of the config's model (a prompt's candidates should depend only on ``seed`` and its id)."""

    @property
    def name(self) -> str:
        """The weights that sample, as candidates record them."""
        ...

    def generate(self, prompts: Sequence[Prompt], n: int, seed: int) -> list[Candidate]:
        """``n`` candidates for each prompt, in prompt order then index order."""


@runtime_checkable
class Closes(Protocol):
    """A policy holding engine state past a batch (a decode loop): `close` abandons what is still in flight."""

    def close(self) -> None: ...


@runtime_checkable
class StreamingPolicy(Policy, Protocol):
    """A policy with a continuous decode loop: `start` queues a batch, `finish` returns its candidates."""

    def streams(self) -> bool:
        """Whether the loop is there (the engine may not have one)."""
        ...

    def rows(self) -> int:
        """Sequences the loop decodes at once."""
        ...

    def start(self, prompts: Sequence[Prompt], n: int, seed: int) -> Any: ...

    def finish(self, started: Any) -> list[Candidate]: ...


NO_TEMPLATE_FIX = "set policy.prompt_format to a named format (e.g. vicuna_v1.1) or a template with {instruction}"


def prompt_seed(run_seed: int, prompt_id: str) -> int:
    """The seed of one prompt's samples: independent of batching, so a resumed run redraws them exactly."""
    return derive_seed(run_seed, prompt_id)


class PolicyPrompts:
    """The policy's prompts as token ids, fitted to its context: all a policy asks of a tokenizer, so preflight
    counts them on a tokenizer alone (`bon.engines.tokens.TokenizerOnly`) exactly as the run will."""

    def __init__(self, cfg: PolicyConfig, tokens: Tokens):
        self.cfg, self.tokens = cfg, tokens

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        """The token ids the policy reads for ``prompt``, in the configured prompt format."""
        if self.cfg.prompt_format == CHAT:  # a conversation's own system message wins over system_prompt
            return self.tokens.chat_ids(prompt.messages(self.cfg.system_prompt), fix=NO_TEMPLATE_FIX)
        return self.tokens.text_ids(
            render(self.cfg.prompt_format, prompt.instruction, self.cfg.system_prompt, prompt.history)
        )

    @property
    def name(self) -> str:
        return self.tokens.name

    @property
    def context(self) -> int | None:
        """Tokens one sequence may hold: the engine's, or less where the config says so."""
        return effective_context(self.cfg, self.tokens.context)

    def room(self) -> int | None:
        """Prompt tokens that leave space for ``max_tokens`` in the context (None: no known limit)."""
        context = self.context
        if context is None:
            return None
        if self.cfg.max_tokens >= context:
            raise ContextLengthError(
                f"policy.max_tokens {self.cfg.max_tokens} leaves no room "
                f"for a prompt in {self.name}'s context of {context} tokens"
            )
        return context - self.cfg.max_tokens

    def fit(self, prompts: Sequence[Prompt]) -> list[tuple[list[int], str | None]]:
        """(ids, flag) per prompt: left-truncated and flagged with ``on_overflow: truncate``, else refused.

        Prompts to skip never get here: the pipeline's preflight sets them aside before any work.
        """
        ids = [self.prompt_ids(p) for p in prompts]
        room = self.room()
        if room is None:  # no known limit
            return [(x, None) for x in ids]
        over = [(p.id, len(x)) for p, x in zip(prompts, ids) if len(x) > room]
        if not over:
            return [(x, None) for x in ids]
        if self.cfg.on_overflow != "truncate":
            raise ContextLengthError(
                overflow_message("policy prompts are", over, room, self.context, "policy.on_overflow")
            )
        return [
            (
                x[-room:],
                f"prompt left-truncated from {len(x)} to {room} tokens (context {self.context}, "
                f"max_tokens {self.cfg.max_tokens})",
            )
            if len(x) > room
            else (x, None)
            for x in ids
        ]


class EnginePolicy(PolicyPrompts):
    """A chat model behind any engine (transformers, vLLM or a server)."""

    def __init__(self, cfg: PolicyConfig, engine: LanguageModel | None = None):
        self.engine = engine or load_engine(cfg)
        super().__init__(cfg, self.engine)
        self.settings = SamplingSettings(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens)

    def generate(self, prompts: Sequence[Prompt], n: int, seed: int) -> list[Candidate]:
        fitted = self.fit(prompts)
        seeds = [prompt_seed(seed, p.id) for p in prompts]
        return self.candidates(prompts, fitted, self.engine.sample([ids for ids, _ in fitted], n, seeds, self.settings))

    @cached_property
    def loop(self) -> DecodeLoop | None:
        """The engine's continuous decode loop, made on first use within the policy's budgets; None for an engine
        that has none (it samples batch by batch)."""
        if not isinstance(self.engine, StreamingModel):
            return None
        return self.engine.session(self.settings, self.cfg.max_rows, self.cfg.max_kv_tokens)

    def streams(self) -> bool:
        """Whether this policy decodes continuously (`start`/`finish`): every engine bon ships does."""
        return self.loop is not None

    def rows(self) -> int:
        """Sequences decoding at once (1 when this policy does not stream)."""
        return self.loop.max_rows if self.loop is not None else 1

    def _streaming(self) -> DecodeLoop:
        if self.loop is None:
            raise TypeError(f"{type(self.engine).__name__} has no decode loop: use generate")
        return self.loop

    def start(self, prompts: Sequence[Prompt], n: int, seed: int) -> tuple[Sequence[Prompt], list, int]:
        """Queue ``prompts`` in the continuous decode loop; `finish` returns their candidates."""
        fitted, loop = self.fit(prompts), self._streaming()
        for p, (ids, _) in zip(prompts, fitted):
            loop.add(p.id, ids, n, prompt_seed(seed, p.id))
        return prompts, fitted, n

    def finish(self, started: tuple[Sequence[Prompt], list, int]) -> list[Candidate]:
        """Decode until every prompt of a `start` is done (later prompts decode alongside)."""
        prompts, fitted, n = started
        loop = self._streaming()
        return self.candidates(prompts, fitted, [loop.result(p.id) for p in prompts])

    def close(self) -> None:
        """Abandon whatever the decode loop still holds (an interrupted run: the engine drops those requests)."""
        if "loop" in self.__dict__ and self.loop is not None:  # never made: nothing to close
            self.loop.close()

    def candidates(self, prompts: Sequence[Prompt], fitted: list, samples: list[list[Sample]]) -> list[Candidate]:
        """Records of ``samples`` (per prompt, by index), flagged where `fit` truncated the prompt or the engine
        ended a sample early."""
        return [
            Candidate(
                prompt_id=p.id,
                index=i,
                text=s.text,
                seed=s.seed,
                prompt_tokens=s.prompt_tokens,
                completion_tokens=s.completion_tokens,
                finish_reason=s.finish_reason,
                policy=s.source or self.name,
                flag="; ".join(f for f in (flag, s.flag) if f) or None,
                # a served model's tokens are its text encoded again (`Sample.source`): not recorded as sampled
                token_ids=(s.token_ids or None) if s.source is None else None,
                **(s.confidence.fields() if s.confidence else {}),
            )
            for p, (_, flag), group in zip(prompts, fitted, samples)
            for i, s in enumerate(group)
        ]
