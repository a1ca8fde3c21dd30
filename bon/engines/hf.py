"""The transformers engine: causal LMs, reward models and embedders loaded with their weights.

torch and transformers are imported lazily here (with this engine's own modules `stream`, `kv` and
`sampling`, which only this one imports) and in two other places: `bon.engines.tokens` (tokenizers
without weights) and `judges.selfj_train` (LoRA training).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bon.core.config import ModelConfig
from bon.engines.cache import ENGINES
from bon.engines.contract import Confidence, DecodeLoop, Sample, SamplingSettings
from bon.engines.kv import KVCache, forward_kwargs
from bon.engines.memory import MemoryPlan, dtype_name, plan
from bon.engines.models import (
    ModelLoadError,
    ModelRef,
    converted_path,
    first_line,
    hub_reachable,
    require_gguf_weights,
    resolve,
)
from bon.engines.prefixes import MIN_SHARED_PREFIX, prefix_groups
from bon.engines.sampling import left_padded
from bon.engines.stream import DecodeSession, WaveLoop, confidence_terms
from bon.engines.tokens import Tokenized, config_context, end_ids

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _device(cfg: ModelConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def _dtype(cfg: ModelConfig, device: torch.device) -> torch.dtype:
    """The configured dtype; auto = float32 on CPU, bfloat16 on GPU."""
    return _DTYPES[dtype_name(cfg.dtype, device.type == "cpu")]


def convert_gguf(ref: ModelRef) -> Path:
    """A safetensors copy of an embedded GGUF model, made once (dequantising takes ~30 s on 2 cores).

    A GGUF-loaded model refuses `save_pretrained` until its quantizer marker is cleared; the
    converted copy loads in well under a second and is what vLLM reads.
    """
    out = converted_path(ref)
    if (out / "config.json").exists():
        return out
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(ref.path, gguf_file=ref.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(ref.path, gguf_file=ref.gguf_file, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, out)
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def prepare(cfg: ModelConfig) -> tuple[Path, bool, float]:
    """(where the weights load from, whether this call converted them, seconds): `bon prepare`."""
    ref = resolve(cfg)
    if not ref.convert_gguf:
        return Path(ref.path), False, 0.0
    if (converted_path(ref) / "config.json").exists():
        return converted_path(ref), False, 0.0
    t0 = time.perf_counter()
    return convert_gguf(ref), True, time.perf_counter() - t0


def _merged(model, adapter: str):
    """``model`` with a LoRA adapter merged in (the judge then runs at the base model's speed)."""
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise ModelLoadError(f"{adapter}: not a LoRA adapter directory (no adapter_config.json)")
    try:
        from peft import PeftModel
    except ImportError:
        raise ModelLoadError("loading an adapter needs the peft package: pip install peft") from None
    return PeftModel.from_pretrained(model, adapter).merge_and_unload()


def set_torch_threads(n: int) -> None:
    """Intra-op threads for this process (Ray actors start with one)."""
    torch.set_num_threads(n)


def load(cfg: ModelConfig) -> HFModel:
    """The model for ``cfg``, loaded once per process (a policy and a judge on the same weights share it)."""
    key = ("hf", cfg.model, cfg.gguf_file, cfg.dtype, cfg.device, cfg.trust_remote_code, cfg.adapter)
    return ENGINES.get(key, lambda: HFModel(cfg))


class HFModel(Tokenized):
    """A causal LM with its tokenizer, sampling with one seeded generator per candidate."""

    def __init__(self, cfg: ModelConfig):
        ref = resolve(cfg)
        self.name = ref.name
        self.device = _device(cfg)
        dtype = _dtype(cfg, self.device)
        path, gguf_file = (str(convert_gguf(ref)), None) if ref.convert_gguf else (ref.path, ref.gguf_file)
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        self.tokenizer, self.model = _load_pretrained(
            AutoModelForCausalLM,
            path,
            "model",
            cfg.model,
            dtype=dtype,
            trust_remote_code=cfg.trust_remote_code,
            hint=" or .gguf file, or to embedded:SmolLM2-135M-Instruct",
            **kwargs,
        )
        if cfg.adapter:
            self.model = _merged(self.model, cfg.adapter)
            self.name = f"{self.name}+{Path(cfg.adapter).name}"
        self._ready()

    @classmethod
    def from_loaded(cls, model: Any, tokenizer: Any, name: str) -> HFModel:
        """An engine over a model already in memory (a model built in a test, a model being trained)."""
        self = cls.__new__(cls)
        self.name, self.tokenizer, self.model, self.device = name, tokenizer, model, next(model.parameters()).device
        self._ready()
        return self

    def _ready(self) -> None:
        self.model.to(self.device).eval()
        self.context = config_context(self.model.config)  # the model's own; configs may ask for less
        self._cache_kw = forward_kwargs(self.model)
        self.eos_ids = end_ids(self.tokenizer, self.model.generation_config)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else min(self.eos_ids))
        layer_types = getattr(self.model.config, "layer_types", None) or []
        # sliding-window caches are not aligned across prompts: such models decode in waves
        self.sliding = bool(getattr(self.model.config, "sliding_window", None) or "sliding_attention" in layer_types)

    def forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache | None = None,
        use_cache: bool = True,
    ) -> tuple[torch.Tensor, KVCache]:
        """(each row's last-position logits, the cache grown by ``ids``): only the last position's logits are
        computed, so a prefill holds rows x vocabulary floats, not rows x width x vocabulary."""
        out = self._call(ids, mask, positions, cache, use_cache, keep=1)
        return out.logits[:, -1, :], KVCache.of(out) if use_cache else KVCache(None)

    def _call(self, ids, mask, positions, cache: KVCache | None, use_cache: bool, keep: int):
        """The model over ``ids`` after ``cache``, computing the logits of the last ``keep`` positions only."""
        cached = {self._cache_kw: cache.cache} if cache is not None else {}
        kwargs = {"attention_mask": mask, "position_ids": positions, "use_cache": use_cache, "logits_to_keep": keep}
        return self.model(input_ids=ids, **kwargs, **cached)

    def memory(self, max_rows: int | None = None, max_kv_tokens: int | None = None) -> MemoryPlan:
        """This model's memory plan on its device now (the budgets a user set, else the defaults)."""
        return memory_of(self.model, self.device, max_rows, max_kv_tokens)

    def sample(
        self, prompts: Sequence[list[int]], n: int, seeds: Sequence[int], settings: SamplingSettings
    ) -> list[list[Sample]]:
        """``n`` samples per prompt, in the continuous decode loop (`bon.engines.stream`) within this model's memory
        plan: a generative judge's batch decodes in as many admissions as its rows and KV tokens need.

        Each prompt is prefilled once and its KV cache expanded to ``n`` rows; finished rows leave the
        batch. Candidate ``i`` of a prompt draws its tokens by inverse CDF from uniforms of its own generator
        (seeded ``derive_seed(seed, i)``), so its randomness depends on its seed alone.
        """
        self.check_fits([len(p) for p in prompts], settings.max_tokens)  # every prompt named by its index
        loop = self.session(settings)
        for k, (ids, seed) in enumerate(zip(prompts, seeds)):
            loop.add(k, ids, n, seed)
        return [loop.result(k) for k in range(len(prompts))]

    def session(
        self, settings: SamplingSettings, max_rows: int | None = None, max_kv_tokens: int | None = None
    ) -> DecodeLoop:
        """A continuous-batching decode loop (`bon.engines.stream`) within the memory plan's budgets (those left
        None are sized to the device). Sliding-window caches are not merged across prompts: those models get a
        `WaveLoop`, which keeps the same budgets and cannot pause."""
        memory = self.memory(max_rows, max_kv_tokens)
        if self.sliding:
            return WaveLoop(self, settings, memory)
        return DecodeSession(self, settings, memory)

    @torch.inference_mode()
    def next_token_logprobs(
        self,
        prompts: Sequence[list[int]],
        token_ids: Sequence[int],
        batch_size: int = 8,
        groups: Sequence[Any] | None = None,
    ) -> list[dict[int, float]]:
        """Log-probabilities of ``token_ids`` after each prompt.

        Consecutive prompts with the same ``groups`` key (a judge's N prompts for one instruction:
        template, instruction and reference, then each answer) reuse one prefill of their common
        prefix (`_batches`); without keys, prompts sharing a long prefix are found (`found_groups`).
        """
        self.check_fits([len(p) for p in prompts], 1)
        results: list[dict[int, float]] = [{} for _ in prompts]
        wanted = torch.tensor(list(token_ids))
        for idx, cache, shared in self._batches(prompts, groups, [len(p) - 1 for p in prompts], batch_size):
            logits = self._suffix_logits(prompts, idx, cache, shared, batch_size, keep=1)[:, -1]
            logprobs = torch.log_softmax(logits, dim=-1).cpu()[:, wanted]
            for row, i in enumerate(idx):
                results[i] = dict(zip(token_ids, logprobs[row].tolist()))
        return results

    @torch.inference_mode()
    def continuation_logprobs(
        self, prompts: Sequence[list[int]], continuations: Sequence[list[int]], batch_size: int = 8
    ) -> list[list[float]]:
        """Log-probability of each continuation token given the prompt and the tokens before it.

        Consecutive equal prompts (a judge's N candidates for one instruction) reuse one prefill of the prompt,
        and logits are computed only at the positions that predict a continuation token.
        """
        results: list[list[float]] = [[] for _ in prompts]
        for i, logits, targets in self._continuation_logits(prompts, continuations, batch_size):
            norms = torch.logsumexp(logits, dim=-1)  # log-softmax of the targets only: tokens, not tokens x vocab
            results[i] = (logits.gather(-1, targets[:, None])[:, 0] - norms).cpu().tolist()
        return results

    def continuation_confidence(
        self, prompts: Sequence[list[int]], continuations: Sequence[list[int]], batch_size: int = 8
    ) -> list[Confidence]:
        """The model's own confidence at each continuation (`Confidence`: log-probabilities, entropies and
        self-certainty terms, summed) from one teacher-forced pass: what the decode loop measures while sampling."""
        results = [Confidence(0, 0.0, 0.0, 0.0) for _ in prompts]
        for i, logits, targets in self._continuation_logits(prompts, continuations, batch_size):
            logprob, entropy, certainty = confidence_terms(logits, targets).sum(0).tolist()
            results[i] = Confidence(len(targets), logprob, entropy, certainty)
        return results

    def _continuation_logits(
        self, prompts: Sequence[list[int]], continuations: Sequence[list[int]], batch_size: int
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(index, logits at the positions predicting its continuation (tokens x vocabulary), the continuation)."""
        seqs = [list(p) + list(c) for p, c in zip(prompts, continuations)]
        self.check_fits([len(s) for s in seqs], 0)
        lengths = [len(p) for p in prompts]
        groups = [tuple(p) for p in prompts]
        # the prefix stops before each prompt's last token, whose logits predict the first continuation token
        for idx, cache, shared in self._batches(seqs, groups, [n - 1 for n in lengths], batch_size):
            keep = max(len(seqs[i]) - lengths[i] for i in idx) + 1
            logits = self._suffix_logits(seqs, idx, cache, shared, batch_size, keep)
            for row, i in enumerate(idx):
                n = len(seqs[i]) - lengths[i]
                cols = slice(keep - 1 - n, keep - 1)  # the token at position t is predicted by the logits at t - 1
                yield i, logits[row, cols], torch.tensor(seqs[i][lengths[i] :], device=logits.device)

    def _batches(
        self, seqs: Sequence[list[int]], groups: Sequence[Any] | None, limits: Sequence[int], batch_size: int
    ) -> Iterator[tuple[list[int], KVCache | None, int]]:
        """(indices, prefix cache or None, prefix tokens) per scoring forward over ``seqs``.

        Each group of `prefix_groups` (consecutive sequences with one ``groups`` key, or found when there are no
        keys) shares one prefill of its common prefix (at most ``limits[i]`` tokens): its KV cache is expanded to
        each batch of the group and only the suffixes run.
        The rest go in length-sorted batches (`MemoryPlan.forward_batches`).
        """
        memory = self.memory()
        alone: list[int] = []
        for group, shared in prefix_groups(seqs, groups, limits):
            if shared < MIN_SHARED_PREFIX or len(group) < 2:
                alone += group
                continue
            head = torch.tensor([seqs[group[0]][:shared]], device=self.device)
            _, prefix = self.forward(head, torch.ones_like(head), torch.arange(shared, device=self.device)[None])
            batches = memory.forward_batches([len(seqs[i]) - shared for i in group], max(batch_size, 2))
            for b, batch in enumerate(batches):
                # each batch expands the prefix cache in place: all but the last work on a copy
                yield [group[k] for k in batch], prefix if b == len(batches) - 1 else prefix.copy(), shared
        alone.sort()  # in input order, as without a prefix cache
        for batch in memory.forward_batches([len(seqs[i]) for i in alone], batch_size):
            yield [alone[k] for k in batch], None, 0

    def _suffix_logits(self, seqs, idx, cache: KVCache | None, shared: int, batch_size: int, keep: int) -> torch.Tensor:
        """float32 logits (rows x ``keep`` x vocabulary) of the last ``keep`` positions of ``seqs[idx]``, left-padded
        after a cached prefix of ``shared`` tokens."""
        ids, mask, positions = left_padded([seqs[i][shared:] for i in idx], self.pad_id)
        self.memory().check_forward(len(idx), shared + ids.shape[1], batch_size, logit_positions=keep)
        if cache is not None:  # the prefix, then each row's left-padded suffix
            cache.repeat(torch.full((1,), len(idx)))
            mask = torch.cat([mask.new_ones((len(idx), shared)), mask], dim=1)
            positions = positions + shared
        d = self.device
        out = self._call(ids.to(d), mask.to(d), positions.to(d), cache, cache is not None, keep)
        return out.logits.float()


def memory_of(
    model: Any, device: torch.device, max_rows: int | None = None, max_kv_tokens: int | None = None
) -> MemoryPlan:
    """The memory plan of a loaded model (its own dtype) on its device."""
    cuda = device.type == "cuda"
    size = next(model.parameters()).element_size()
    return plan(model.config, size, cuda, device if cuda else None, max_rows=max_rows, max_kv_tokens=max_kv_tokens)


@contextlib.contextmanager
def _no_progress_bar(quiet: bool) -> Iterator[None]:
    """transformers' "Loading weights" bar off while ``quiet`` (a local load, under a second): bon shows its own
    progress; a download from the hub keeps its bar."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if quiet and was:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and was:
            hf_logging.enable_progress_bar()


def _load_pretrained(loader, path: str, what: str, name: str | None = None, hint: str = "", **kwargs):
    """(tokenizer, model) from a local path or hub id; offline, a hub id fails at once, naming ``name``."""
    local = Path(path).exists()
    if not local:  # a hub id: the local cache first, the network only if it answers
        kwargs["local_files_only"] = not hub_reachable()
    if kwargs.get("gguf_file"):
        require_gguf_weights(Path(path) / kwargs["gguf_file"], what, name or path)
    try:
        with _no_progress_bar(local or kwargs["local_files_only"]):
            tokenizer = AutoTokenizer.from_pretrained(path, **{k: v for k, v in kwargs.items() if k != "dtype"})
            model, info = loader.from_pretrained(path, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"could not load {what} {name or path!r} ({first_line(e)}). Without network access, set `model` to a "
            f"local directory{hint}"
        ) from None
    check_weights(info, what, name or path)
    return tokenizer, model


def check_weights(info: dict[str, Any], what: str, name: str) -> None:
    """Refuse a checkpoint whose weights do not match the model: transformers would invent the missing ones.

    ``info`` is `from_pretrained(..., output_loading_info=True)`'s report (keys it is told to ignore are not in it).
    """
    problems = [
        (info.get(key) or [], words)
        for key, words in (
            ("missing_keys", "lacks {n} weights the model needs (it would run them randomly initialised)"),
            ("unexpected_keys", "holds {n} weights the model has no place for"),
            ("mismatched_keys", "holds {n} weights of the wrong shape"),
        )
    ]
    said = [
        words.format(n=len(keys)) + f": {', '.join(str(k if isinstance(k, str) else k[0]) for k in list(keys)[:3])}"
        for keys, words in problems
        if keys
    ]
    if said:
        raise ModelLoadError(
            f"{what} {name!r} is not a complete checkpoint of its architecture: it " + "; it ".join(said) + ". Point "
            "`model` at the full weights (a vocabulary-only GGUF, a base model for a reward head, or another "
            "architecture's checkpoint cannot be used)"
        )


class HFRewardModel:
    """A scalar reward model (`AutoModelForSequenceClassification`, one logit) scoring conversations."""

    def __init__(self, cfg: ModelConfig):
        from transformers import AutoModelForSequenceClassification

        ref = resolve(cfg)
        self.name = ref.name
        self.device = _device(cfg)
        dtype = _dtype(cfg, self.device)
        self.tokenizer, self.model = _load_pretrained(
            AutoModelForSequenceClassification,
            ref.path,
            "reward model",
            cfg.model,
            dtype=dtype,
            trust_remote_code=cfg.trust_remote_code,
        )
        if self.model.config.num_labels != 1:
            raise ModelLoadError(
                f"reward model {cfg.model!r} has {self.model.config.num_labels} labels; a scalar reward model has one"
            )
        self.model.to(self.device).eval()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def conversation_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """A conversation ending with the assistant answer to score, in the RM's chat template."""
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        # encoder RMs (DeBERTa) read a text pair: the conversation so far, then the answer
        context = "\n\n".join(m["content"] for m in messages[:-1] if m["role"] != "system")
        return self.tokenizer(context, messages[-1]["content"])["input_ids"]

    @torch.inference_mode()
    def rewards(self, conversations: Sequence[list[int]], batch_size: int = 8) -> list[float]:
        memory = memory_of(self.model, self.device)
        out: list[float] = [0.0] * len(conversations)
        for idx in memory.forward_batches([len(c) for c in conversations], batch_size):
            width = max(len(conversations[i]) for i in idx)
            memory.check_forward(len(idx), width, batch_size)
            ids = torch.full((len(idx), width), self.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):  # right padding: the classifier reads the last real token
                ids[row, : len(conversations[i])] = torch.tensor(conversations[i])
                mask[row, : len(conversations[i])] = 1
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            for row, i in enumerate(idx):
                out[i] = float(logits[row, 0].float())
        return out


class HFEmbedder:
    """Sentence embeddings: mean pooling over tokens, then L2 normalisation (all-MiniLM-L6-v2's recipe)."""

    def __init__(self, path: str, device: str = "auto"):
        from transformers import AutoModel

        self.device = _device(ModelConfig(device=device))
        self.tokenizer, self.model = _load_pretrained(AutoModel, path, "embedding model")
        self.model.to(self.device).eval()
        self.name = Path(path).name

    @torch.inference_mode()
    def embed(self, texts: Sequence[str], batch_size: int = 32) -> list[list[float]]:
        """One vector per text; a text given several times (a prompt's instruction or reference beside each of its
        N candidates) is embedded once."""
        unique = list(dict.fromkeys(texts))
        if not unique:
            return []
        memory = memory_of(self.model, self.device)
        encoded = self.tokenizer(unique, truncation=True, max_length=256)
        rows = [{key: values[i] for key, values in encoded.items()} for i in range(len(unique))]
        vectors: dict[str, list[float]] = {}
        for idx in memory.forward_batches([len(r["input_ids"]) for r in rows], batch_size):
            enc = self.tokenizer.pad([rows[i] for i in idx], return_tensors="pt").to(self.device)
            memory.check_forward(len(idx), enc["input_ids"].shape[1], batch_size)
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            for i, vector in zip(idx, torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().tolist()):
                vectors[unique[i]] = vector
        return [vectors[t] for t in texts]


def load_reward_model(cfg: ModelConfig) -> HFRewardModel:
    key = ("hf-rm", cfg.model, cfg.dtype, cfg.device, cfg.trust_remote_code)
    return ENGINES.get(key, lambda: HFRewardModel(cfg))


def load_embedder(path: str, device: str = "auto") -> HFEmbedder:
    return ENGINES.get(("hf-embed", path, device), lambda: HFEmbedder(path, device))
