"""A model served behind an OpenAI-compatible API (vllm serve, SGLang, TGI, hosted) as a `LanguageModel`.

The only module that imports ``openai``. Token-level work (chat templates, context limits, digit
ids) uses the model's tokenizer read locally from ``ModelConfig.model``; the server generates.
Prompts go to the completions endpoint as token ids, or, with ``server.endpoint: chat``, as the
messages they were built from (the server applies its own template). The official client does the
retries: exponential backoff on connection errors, 408/409/429 and 5xx, ``server.max_retries`` times.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from bon.core.config import ModelConfig
from bon.engines.cache import ENGINES
from bon.engines.contract import ChatIds, DecodeLoop, EngineError, Sample, SamplingSettings, derive_seed
from bon.engines.models import ModelLoadError, first_line
from bon.engines.tokens import Tokenized, TokenizerOnly

T = TypeVar("T")
TOP_LOGPROBS = 20  # what vLLM serves by default (max_logprobs) and the Self-J repository's judge.py reads


def load(cfg: ModelConfig) -> ServedModel:
    """One client per process and server settings (a policy and a judge on one server share it)."""
    key = (cfg.model, cfg.gguf_file, cfg.server.model_dump_json())
    return ENGINES.get(("openai", *key), lambda: ServedModel(cfg))


def client_for(cfg: ModelConfig):
    import openai

    s = cfg.server
    key = os.environ.get(s.api_key_env) or "EMPTY"  # vllm serve without --api-key accepts any
    return openai.OpenAI(base_url=s.base_url, api_key=key, timeout=s.timeout_s, max_retries=s.max_retries)


def server_error(base_url: str, error: BaseException) -> str:
    """One line for a failed request: which server, what it said."""
    status = getattr(error, "status_code", None)
    said = f"HTTP {status}: " if status else ""
    return f"the server at {base_url} failed ({type(error).__name__}: {said}{first_line(error)})"


def served_models(client, base_url: str) -> list[dict[str, Any]]:
    """The server's /models entries (id, and max_model_len where vLLM reports it)."""
    try:
        return [m.model_dump() for m in client.models.list().data]
    except Exception as e:  # openai raises its own hierarchy; any of them means "not usable"
        raise ModelLoadError(
            f"{server_error(base_url, e)}; start it (e.g. `vllm serve MODEL`) or fix server.base_url"
        ) from None


class ServedModel(Tokenized):
    """Completions and chat completions against one served model; the tokenizer is read locally."""

    def __init__(self, cfg: ModelConfig):
        self.cfg, self.server = cfg, cfg.server
        self.client = client_for(cfg)
        models = served_models(self.client, self.server.base_url)
        ids = [m["id"] for m in models]
        if self.server.model is None and len(ids) != 1:
            raise ModelLoadError(f"{self.server.base_url} serves {ids}; choose one with server.model")
        self.served = self.server.model or ids[0]
        if self.served not in ids:
            raise ModelLoadError(f"{self.server.base_url} does not serve {self.served!r}; it serves {ids}")
        local = TokenizerOnly(cfg)  # templates, digit ids and context limits need the served model's tokenizer
        self.tokenizer = local.tokenizer
        served_context = next((m.get("max_model_len") for m in models if m["id"] == self.served), None)
        self.context = (
            min(c for c in (served_context, local.context) if c) if (served_context or local.context) else None
        )
        self.name = self.served.rstrip("/").rsplit("/", 1)[-1]

    # -- prompts
    def _messages(self, ids: Sequence[int]) -> list[dict[str, str]]:
        """The messages a prompt's ids encode (`ChatIds`): the chat endpoint sends these, not the ids."""
        if isinstance(ids, ChatIds):
            return list(ids.messages)
        raise EngineError(
            "server.endpoint chat sends messages, and this prompt was not built from a conversation (a raw prompt "
            "format, or cut to fit); use server.endpoint: completions"
        )

    # -- requests
    def guarded(self, call: Callable[[], T]) -> T:
        """``call()``; a failure is one line naming the server."""
        try:
            return call()
        except EngineError:
            raise
        except Exception as e:
            raise EngineError(
                f"{server_error(self.server.base_url, e)}; finished batches are kept, rerun to resume"
            ) from None

    def _all(self, calls: Sequence[Callable[[], T]]) -> list[T]:
        """Run the calls with at most ``server.concurrency`` in flight, in order."""
        if len(calls) <= 1:
            return [self.guarded(c) for c in calls]
        with ThreadPoolExecutor(max_workers=min(self.server.concurrency, len(calls))) as pool:
            return list(pool.map(self.guarded, calls))

    def _complete(self, ids: Sequence[int], **kwargs: Any) -> Any:
        if self.server.endpoint == "chat":
            if isinstance(ids, ChatIds) and ids.answer_begun:  # vLLM's and SGLang's way to go on with an answer
                extra = {"continue_final_message": True, "add_generation_prompt": False}
                kwargs["extra_body"] = {**kwargs.get("extra_body", {}), **extra}
            return self.client.chat.completions.create(model=self.served, messages=self._messages(ids), **kwargs)
        return self.client.completions.create(model=self.served, prompt=list(ids), **kwargs)

    def _sample(self, response: Any, ids: Sequence[int], seed: int) -> list[Sample]:
        fingerprint = getattr(response, "system_fingerprint", None)
        source = f"{response.model}@{fingerprint}" if fingerprint else response.model  # as the server reports them
        out = []
        for choice in sorted(response.choices, key=lambda c: c.index):
            text = (choice.message.content or "") if self.server.endpoint == "chat" else choice.text
            tokens = tuple(self.tokenizer.encode(text, add_special_tokens=False))
            stop = choice.finish_reason != "length"
            out.append(Sample(text, len(ids), len(tokens) + stop, "stop" if stop else "length", seed, tokens, source))
        return out

    def draws(self, ids: list[int], n: int, seed: int, settings: SamplingSettings) -> list[Callable[[], list[Sample]]]:
        """The requests for one prompt's ``n`` samples: one with ``n`` (its seed makes it reproducible where
        honoured), or, without ``server.n_per_request``, one per candidate with the candidate's own seed."""
        params = {"temperature": settings.temperature, "top_p": settings.top_p, "max_tokens": settings.max_tokens}

        def draw(seed: int, k: int) -> list[Sample]:
            return self._sample(self._complete(ids, n=k, seed=seed % 2**31, **params), ids, seed)

        if self.server.n_per_request:
            return [partial(draw, seed, n)]
        return [partial(draw, derive_seed(seed, i), 1) for i in range(n)]

    def joined(self, groups: Sequence[list[Sample]], n: int) -> list[Sample]:
        flat = [s for g in groups for s in g]
        if len(flat) != n:
            raise EngineError(
                f"{self.server.base_url} returned {len(flat)} samples where n={n} was asked; "
                "set server.n_per_request: false"
            )
        return flat

    def sample(
        self, prompts: Sequence[list[int]], n: int, seeds: Sequence[int], settings: SamplingSettings
    ) -> list[list[Sample]]:
        calls = [self.draws(ids, n, seed, settings) for ids, seed in zip(prompts, seeds)]
        done = iter(self._all([c for mine in calls for c in mine]))
        return [self.joined([next(done) for _ in mine], n) for mine in calls]

    def session(
        self, settings: SamplingSettings, max_rows: int | None = None, max_kv_tokens: int | None = None
    ) -> DecodeLoop:
        """Prompts stream to the server: up to ``server.concurrency`` requests in flight across prompts."""
        return ServedSession(self, settings)

    def _token_id(self, token: str) -> int | None:
        """A logprob entry's token as an id: "token_id:123" (vLLM/SGLang) or its decoded text."""
        if token.startswith("token_id:"):
            return int(token.removeprefix("token_id:"))
        return self._by_text().get(token)

    def _by_text(self) -> dict[str, int]:
        if not hasattr(self, "_decoded"):  # decoded text -> the first id that decodes to it
            self._decoded: dict[str, int] = {}
            for i in range(len(self.tokenizer)):
                self._decoded.setdefault(self.tokenizer.decode([i]), i)
        return self._decoded

    def _extra(self) -> dict[str, Any]:
        return {"extra_body": {"return_tokens_as_token_ids": True}} if self.server.token_ids else {}

    def next_token_logprobs(
        self,
        prompts: Sequence[list[int]],
        token_ids: Sequence[int],
        batch_size: int = 8,
        groups: Sequence[Any] | None = None,
    ) -> list[dict[int, float]]:
        # One greedy token with the top-20 logprobs (the server caches shared prefixes itself); a wanted
        # token outside the top 20 is absent, as on the in-process vLLM engine.
        wanted = set(token_ids)

        def one(ids: Sequence[int]) -> dict[int, float]:
            if self.server.endpoint == "chat":
                r = self._complete(
                    ids, max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=TOP_LOGPROBS, **self._extra()
                )
                content = r.choices[0].logprobs.content if r.choices[0].logprobs else []
                top = {e.token: e.logprob for e in content[0].top_logprobs} if content else {}
            else:
                r = self._complete(ids, max_tokens=1, temperature=0.0, logprobs=TOP_LOGPROBS, **self._extra())
                lp = r.choices[0].logprobs
                top = dict(lp.top_logprobs[0]) if lp and lp.top_logprobs else {}
            out: dict[int, float] = {}
            for token, logprob in top.items():
                tid = self._token_id(token)
                if tid in wanted and tid not in out:
                    out[tid] = float(logprob)
            return out

        return self._all([partial(one, ids) for ids in prompts])

    def continuation_logprobs(
        self, prompts: Sequence[list[int]], continuations: Sequence[list[int]], batch_size: int = 8
    ) -> list[list[float]]:
        if self.server.endpoint == "chat":
            raise EngineError("continuation log-probabilities need server.endpoint: completions (echo of the prompt)")

        def one(p: Sequence[int], c: Sequence[int]) -> list[float]:
            r = self.client.completions.create(
                model=self.served,
                prompt=list(p) + list(c),
                max_tokens=1,
                temperature=0.0,
                echo=True,
                logprobs=0,
                **self._extra(),
            )
            values = r.choices[0].logprobs.token_logprobs[len(p) : len(p) + len(c)]
            return [float(v) for v in values]

        return self._all([partial(one, p, c) for p, c in zip(prompts, continuations)])


class ServedSession:
    """A window of in-flight requests across prompts: `add` sends a prompt's requests, `result` waits for them.

    The server batches whatever is in flight; ``server.concurrency`` bounds it. The session's rows
    (how far ahead the pipeline queues prompts) are the requests in flight times the samples each carries.
    """

    def __init__(self, model: ServedModel, settings: SamplingSettings):
        self.model, self.settings = model, settings
        self.pool = ThreadPoolExecutor(max_workers=model.server.concurrency, thread_name_prefix="bon-served")
        self.open: dict[Hashable, tuple[int, list[Future]]] = {}
        self.per_request = 1  # samples per request, known once a prompt is added

    @property
    def max_rows(self) -> int:
        return self.model.server.concurrency * self.per_request

    def add(self, key: Hashable, ids: list[int], n: int, seed: int) -> None:
        if key in self.open:
            raise EngineError(f"prompt {key!r} is already in this decode session")
        self.model.check_fits([len(ids)], self.settings.max_tokens)
        self.per_request = n if self.model.server.n_per_request else 1
        draws = self.model.draws(ids, n, seed, self.settings)
        self.open[key] = (n, [self.pool.submit(self.model.guarded, d) for d in draws])

    def result(self, key: Hashable) -> list[Sample]:
        n, futures = self.open.pop(key)
        return self.model.joined([f.result() for f in futures], n)

    def close(self) -> None:
        """Cancel the requests not yet sent; those in flight finish on the server and are dropped here."""
        for _, futures in self.open.values():
            for f in futures:
                f.cancel()
        self.open.clear()


def check_server(cfg: ModelConfig, tries: int = 3) -> list[tuple[str, str]]:
    """What `bon serve-check` prints: served models, whether n / seed / logprobs work, the round trip.

    Needs no local tokenizer: the probes send text prompts.
    """
    client, base = client_for(cfg), cfg.server.base_url
    models = served_models(client, base)
    ids = [m["id"] for m in models]
    served = cfg.server.model or (ids[0] if ids else None)
    rows = [
        ("server", base),
        ("models", ", ".join(f"{m['id']} (context {m.get('max_model_len', '?')})" for m in models) or "none"),
    ]
    if served not in ids:
        return rows + [("problem", f"{served!r} is not served; choose one with --model")]

    def probe(what: str, **kwargs: Any) -> Any:
        try:
            return client.completions.create(model=served, prompt="The capital of France is", **kwargs)
        except Exception as e:
            rows.append((what, f"no: {server_error(base, e)}"))
            return None

    times = []
    for _ in range(tries):
        t0 = time.perf_counter()
        if probe("round trip", max_tokens=1, temperature=0.0) is None:
            return rows
        times.append(time.perf_counter() - t0)
    rows.append(
        ("round trip", f"{1000 * sorted(times)[len(times) // 2]:.0f} ms median of {tries} one-token completions")
    )
    r = probe("n", n=4, max_tokens=4, temperature=1.0)
    if r is not None:
        rows.append(
            (
                "n",
                f"yes ({len(r.choices)} choices for n=4)"
                if len(r.choices) == 4
                else f"no ({len(r.choices)} choices for n=4): set server.n_per_request: false",
            )
        )
    a, b = (probe("seed", n=1, max_tokens=12, temperature=1.0, seed=1234) for _ in range(2))
    if a is not None and b is not None:
        same = a.choices[0].text == b.choices[0].text
        rows.append(
            (
                "seed",
                "honoured (same seed, same text at temperature 1)"
                if same
                else "not honoured (same seed, different text): runs are not reproducible",
            )
        )
    r = probe(
        "logprobs",
        max_tokens=1,
        temperature=0.0,
        logprobs=TOP_LOGPROBS,
        extra_body={"return_tokens_as_token_ids": True},
    )
    if r is not None:
        top = (
            r.choices[0].logprobs.top_logprobs[0]
            if r.choices[0].logprobs and r.choices[0].logprobs.top_logprobs
            else {}
        )
        as_ids = bool(top) and all(str(t).startswith("token_id:") for t in top)
        rows.append(
            (
                "logprobs",
                f"yes, top {len(top)}" + (" as token ids" if as_ids else " as text (set server.token_ids: false)")
                if top
                else "no: the Self-J judge needs them",
            )
        )
    if r is not None and getattr(r, "system_fingerprint", None):
        rows.append(("system_fingerprint", r.system_fingerprint))
    return rows
