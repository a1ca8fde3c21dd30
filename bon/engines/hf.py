"""The transformers engine: the only module that imports torch and transformers for causal LMs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bon.config import ModelConfig
from bon.engines.base import Sample, SamplingSettings, derive_seed
from bon.models import ModelLoadError, ModelRef, cache_dir, first_line, hub_reachable, resolve
from bon.tokens import Tokenized, config_context

_LOADED: dict[tuple, "HFModel"] = {}

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _device(cfg: ModelConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def _dtype(cfg: ModelConfig, device: torch.device) -> torch.dtype:
    """The configured dtype; auto = float32 on CPU, bfloat16 on GPU."""
    return _DTYPES.get(cfg.dtype, torch.float32 if device.type == "cpu" else torch.bfloat16)


def convert_gguf(ref: ModelRef) -> Path:
    """A safetensors copy of an embedded GGUF model, made once (dequantising takes ~30 s on 2 cores).

    A GGUF-loaded model refuses `save_pretrained` until its quantizer marker is cleared; the
    converted copy loads in well under a second and is what vLLM reads.
    """
    gguf = Path(ref.path) / str(ref.gguf_file)
    out = cache_dir() / f"{gguf.stem}-{gguf.stat().st_size}"
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


def set_torch_threads(n: int) -> None:
    """Intra-op threads for this process (Ray actors start with one)."""
    torch.set_num_threads(n)


def load(cfg: ModelConfig) -> "HFModel":
    """The model for ``cfg``, loaded once per process (a policy and a judge on the same weights share it)."""
    key = (cfg.model, cfg.gguf_file, cfg.dtype, cfg.device, cfg.trust_remote_code)
    if key not in _LOADED:
        _LOADED[key] = HFModel(cfg)
    return _LOADED[key]


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
            AutoModelForCausalLM, path, "model", cfg.model, dtype=dtype, trust_remote_code=cfg.trust_remote_code,
            hint=" or .gguf file, or to embedded:SmolLM2-135M-Instruct", **kwargs,
        )
        self.model.to(self.device).eval()
        self.context = config_context(self.model.config)  # the model's own; configs may ask for less
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {int(t) for t in eos + [self.tokenizer.eos_token_id] if t is not None}
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else min(self.eos_ids))

    @torch.inference_mode()
    def sample(
        self, prompts: Sequence[list[int]], n: int, seeds: Sequence[int], settings: SamplingSettings
    ) -> list[list[Sample]]:
        self.check_fits([len(p) for p in prompts], settings.max_tokens)
        return [self._sample_prompt(ids, n, seed, settings) for ids, seed in zip(prompts, seeds)]

    def _sample_prompt(self, ids: list[int], n: int, seed: int, s: SamplingSettings) -> list[Sample]:
        # All n rows share one prompt, so no padding: a prompt's candidates depend only on its seeds.
        seeds = [derive_seed(seed, i) for i in range(n)]
        generators = [torch.Generator().manual_seed(sd) for sd in seeds]
        out = self.model(input_ids=torch.tensor([ids] * n, device=self.device), use_cache=True)
        tokens: list[list[int]] = [[] for _ in range(n)]
        finish = ["length"] * n
        for step in range(s.max_tokens):
            picked = self._pick(out.logits[:, -1, :].float().cpu(), generators, s)
            for j, t in enumerate(picked):
                if finish[j] == "stop":
                    continue
                if t in self.eos_ids:
                    finish[j] = "stop"
                else:
                    tokens[j].append(t)
            if all(f == "stop" for f in finish) or step == s.max_tokens - 1:
                break
            step_ids = torch.tensor([[t] for t in picked], device=self.device)
            out = self.model(input_ids=step_ids, past_key_values=out.past_key_values, use_cache=True)
        return [
            Sample(
                text=self.tokenizer.decode(toks, skip_special_tokens=True),
                prompt_tokens=len(ids),
                completion_tokens=len(toks) + (finish[j] == "stop"),
                finish_reason=finish[j],
                seed=seeds[j],
            )
            for j, toks in enumerate(tokens)
        ]

    @staticmethod
    def _pick(logits: torch.Tensor, generators: list[torch.Generator], s: SamplingSettings) -> list[int]:
        if s.temperature == 0:
            return logits.argmax(-1).tolist()
        probs = torch.softmax(logits / s.temperature, dim=-1)
        if s.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            # keep the smallest prefix whose mass reaches top_p (the top token always stays)
            drop = (sorted_p.cumsum(-1) - sorted_p) >= s.top_p
            sorted_p[drop] = 0.0
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
        return [int(torch.multinomial(probs[j], 1, generator=g)) for j, g in enumerate(generators)]

    @torch.inference_mode()
    def next_token_logprobs(
        self, prompts: Sequence[list[int]], token_ids: Sequence[int], batch_size: int = 8
    ) -> list[dict[int, float]]:
        self.check_fits([len(p) for p in prompts], 1)
        # Longest first, so each batch pads little; results go back in input order.
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        results: list[dict[int, float]] = [{} for _ in prompts]
        wanted = torch.tensor(list(token_ids))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):  # left padding: the next token is at the last position
                ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]) :] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
            ).logits[:, -1, :]
            logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()[:, wanted]
            for row, i in enumerate(idx):
                results[i] = dict(zip(token_ids, logprobs[row].tolist()))
        return results

    @torch.inference_mode()
    def continuation_logprobs(
        self, prompts: Sequence[list[int]], continuations: Sequence[list[int]], batch_size: int = 8
    ) -> list[list[float]]:
        """Log-probability of each continuation token given the prompt and the tokens before it."""
        seqs = [list(p) + list(c) for p, c in zip(prompts, continuations)]
        self.check_fits([len(s) for s in seqs], 0)
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        results: list[list[float]] = [[] for _ in seqs]
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(seqs[i]) for i in idx)
            ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):  # right padding: positions are plain 0..len-1
                ids[row, : len(seqs[i])] = torch.tensor(seqs[i])
                mask[row, : len(seqs[i])] = 1
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
            for row, i in enumerate(idx):
                p, n = len(prompts[i]), len(continuations[i])
                targets = torch.tensor(seqs[i][p : p + n])
                # the token at position t is predicted by the logits at t - 1
                results[i] = logprobs[row, p - 1 : p - 1 + n].gather(-1, targets[:, None])[:, 0].tolist()
        return results


_ENCODERS: dict[tuple, object] = {}


def _load_pretrained(loader, path: str, what: str, name: str | None = None, hint: str = "", **kwargs):
    """(tokenizer, model) from a local path or hub id; offline, a hub id fails at once, naming ``name``."""
    if not Path(path).exists():  # a hub id: the local cache first, the network only if it answers
        kwargs["local_files_only"] = not hub_reachable()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **{k: v for k, v in kwargs.items() if k != "dtype"})
        return tokenizer, loader.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"could not load {what} {name or path!r} ({first_line(e)}). Without network access, set `model` to a "
            f"local directory{hint}"
        ) from None


class HFRewardModel:
    """A scalar reward model (`AutoModelForSequenceClassification`, one logit) scoring conversations."""

    def __init__(self, cfg: ModelConfig):
        from transformers import AutoModelForSequenceClassification

        ref = resolve(cfg)
        self.name = ref.name
        self.device = _device(cfg)
        dtype = _dtype(cfg, self.device)
        self.tokenizer, self.model = _load_pretrained(
            AutoModelForSequenceClassification, ref.path, "reward model", cfg.model, dtype=dtype,
            trust_remote_code=cfg.trust_remote_code,
        )
        if self.model.config.num_labels != 1:
            raise ModelLoadError(f"reward model {cfg.model!r} has {self.model.config.num_labels} labels; a scalar reward model has one")
        self.model.to(self.device).eval()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def conversation_ids(self, prompt: str, response: str) -> list[int]:
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer(prompt, response)["input_ids"]  # encoder RMs (DeBERTa) read a text pair

    @torch.inference_mode()
    def rewards(self, conversations: Sequence[list[int]], batch_size: int = 8) -> list[float]:
        order = sorted(range(len(conversations)), key=lambda i: -len(conversations[i]))  # little padding
        out: list[float] = [0.0] * len(conversations)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(conversations[i]) for i in idx)
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
    def embed(self, texts: Sequence[str], batch_size: int = 32) -> "list[list[float]]":
        vectors: list[list[float]] = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                list(texts[start : start + batch_size]), padding=True, truncation=True, max_length=256, return_tensors="pt"
            ).to(self.device)
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            vectors += torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().tolist()
        return vectors


def load_reward_model(cfg: ModelConfig) -> HFRewardModel:
    key = ("rm", cfg.model, cfg.dtype, cfg.device, cfg.trust_remote_code)
    if key not in _ENCODERS:
        _ENCODERS[key] = HFRewardModel(cfg)
    return _ENCODERS[key]


def load_embedder(path: str, device: str = "auto") -> HFEmbedder:
    key = ("embed", path, device)
    if key not in _ENCODERS:
        _ENCODERS[key] = HFEmbedder(path, device)
    return _ENCODERS[key]
