"""What touches tokens, on any Hugging Face tokenizer: chat and raw prompts, digit ids, context limits.

Shared by the engines (which hold weights) and by `TokenizerOnly` (which does not), so `bon check`
and the pipeline's preflight see exactly the token ids a run feeds its models.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from bon.core.config import ModelConfig
from bon.core.errors import BonError
from bon.core.formats import PromptFormatError  # noqa: F401  (raised here too; one type for every format problem)
from bon.engines.contract import ChatIds
from bon.engines.models import (
    ModelLoadError,
    ModelRef,
    cache_dir,
    converted_path,
    first_line,
    gguf_tensor_count,
    hub_reachable,
    resolve,
)

# config.json keys that hold a model's context length, in the order families use them
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


class ContextLengthError(BonError, ValueError):
    """Prompts do not fit a model's context; the message lists them with their lengths."""


def chat_ids(
    tokenizer: Any, messages: Sequence[dict[str, str]], fix: str = "use a model with one", model: str = ""
) -> list[int]:
    """Token ids of a conversation in the tokenizer's chat template, ready for the assistant turn.

    ``fix`` says which option avoids the chat template, for the error a template-less tokenizer raises.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise PromptFormatError(
            f"the tokenizer of {model or getattr(tokenizer, 'name_or_path', '') or 'this model'} "
            f"has no chat template; {fix}"
        )
    text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    return ChatIds(tokenizer(text, add_special_tokens=False)["input_ids"], messages)


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of raw text as the model reads a document (BOS added if the tokenizer adds one)."""
    return tokenizer(text)["input_ids"]


def digit_token_ids(tokenizer: Any) -> list[int]:
    """Ids of the tokens "0".."9" as the model emits them right after text: Self-J's class ids.

    Found in context ("a5" minus "a") because SentencePiece vocabularies (Llama-2, Mistral, Phi-3)
    encode a lone "0" as '▁', '0'; after text the model emits the bare piece '0', which is what the
    Self-J repository hard-codes (29900, 29896, ... on Llama-2). Byte-level BPE (GPT-2, Llama-3,
    Qwen2, SmolLM2) splits digits from letters the same way.
    """
    head = tokenizer.encode("a", add_special_tokens=False)
    ids = []
    for d in "0123456789":
        toks = tokenizer.encode("a" + d, add_special_tokens=False)
        if toks[:-1] != head or tokenizer.decode(toks[-1:]).strip() != d:
            raise PromptFormatError(
                f"the judge tokenizer has no single token for the digit {d!r} after text (encodes 'a{d}' as {toks}); "
                "Self-J needs one token per digit: choose another judge model"
            )
        ids.append(toks[-1])
    return ids


def end_ids(tokenizer: Any, generation_config: Any = None) -> frozenset[int]:
    """Every id that ends a sequence, the one rule of every engine: the generation config's ``eos_token_id``
    (an id or a list: Llama-3 chat ends on ``<|eot_id|>`` and ``<|end_of_text|>``) and the tokenizer's own."""
    eos = getattr(generation_config, "eos_token_id", None)
    ids = eos if isinstance(eos, list) else [eos]
    return frozenset(int(t) for t in [*ids, tokenizer.eos_token_id] if t is not None)


def config_context(config: Any) -> int | None:
    """A model config's context length in tokens, where it records one."""
    for key in _CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def effective_context(cfg: ModelConfig, model_context: int | None) -> int | None:
    """The tightest of the configured context, vLLM's max_model_len and the model's own."""
    limits = [cfg.context_length, cfg.engine_args.get("max_model_len"), model_context]
    known = [int(x) for x in limits if isinstance(x, int) and x > 0]
    return min(known) if known else None


def overflow_message(
    what: str, rows: Sequence[tuple[str, int]], limit: int | None, context: int | None, option: str
) -> str:
    """One message listing prompts that do not fit (the longest first), and the option that decides."""
    rows = sorted(rows, key=lambda r: -r[1])
    shown = ", ".join(f"{pid} ({n} tokens)" for pid, n in rows[:10])
    more = f" and {len(rows) - 10} more" if len(rows) > 10 else ""
    return (
        f"{len(rows)} {what} longer than the {limit} tokens that fit (context {context}): {shown}{more}; "
        f"set {option} to truncate or skip, or raise the context"
    )


class Tokenized:
    """The token side of a `LanguageModel`: engines and `TokenizerOnly` share it."""

    name: str
    tokenizer: Any
    context: int | None = None  # tokens the model reads and writes in one sequence; None = unknown

    def chat_ids(self, messages: Sequence[dict[str, str]], fix: str = "use a model with one") -> list[int]:
        return chat_ids(self.tokenizer, messages, fix, self.name)

    def text_ids(self, text: str) -> list[int]:
        return text_ids(self.tokenizer, text)

    def check_fits(self, lengths: Sequence[int], generated: int) -> None:
        """Refuse sequences the model cannot hold (a 50k-token prompt otherwise runs for hours)."""
        if self.context is None:
            return
        over = [(f"#{i}", n) for i, n in enumerate(lengths) if n + generated > self.context]
        if over:
            raise ContextLengthError(
                f"{self.name}: "
                + overflow_message("sequences are", over, self.context - generated, self.context, "on_overflow")
            )


def gguf_tokenizer_copy(file: Path) -> Path | None:
    """A folder holding the tokenizer and config of a GGUF file, written the first time it is asked for: transformers
    parses the whole file for each (~10 s apiece for a 128k vocabulary), and reads the folder in well under a second.
    Keyed by the file's path, size and modification time and transformers' version, so a changed file or a new
    converter makes a new copy; written to a temporary folder and renamed, so a reader never sees half of one.
    None when the cache has no room for a folder (read-only, or under a file): nothing is parsed then."""
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    st = file.stat()
    key = f"{file.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{transformers.__version__}"
    folder = cache_dir() / "gguf-tokenizers" / f"{file.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if (folder / "config.json").exists():
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    except OSError:
        return None
    try:
        AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name).save_pretrained(partial)
        AutoConfig.from_pretrained(file.parent, gguf_file=file.name).save_pretrained(partial)  # config.json last
        try:
            partial.rename(folder)
        except OSError:  # another process made it first: theirs is the same
            if not (folder / "config.json").exists():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


@lru_cache(maxsize=16)
def _read_files(path: str, gguf_file: str | None, trust_remote_code: bool, local_only: bool) -> tuple[Any, Any]:
    """(tokenizer, the model's config) of a model's files; a GGUF is read from its copy (`gguf_tokenizer_copy`)."""
    from transformers import AutoConfig, AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file:
        copy = gguf_tokenizer_copy(Path(path) / gguf_file)
        if copy is None:  # a cache that cannot be written: parse the file itself, as before there was a copy
            kwargs["gguf_file"] = gguf_file
        else:
            path = str(copy)
    if local_only:
        kwargs["local_files_only"] = True
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    return tokenizer, AutoConfig.from_pretrained(path, **kwargs)


class TokenizerOnly(Tokenized):
    """A model's tokenizer and context length, loaded without its weights."""

    def __init__(self, cfg: ModelConfig):
        ref = resolve(cfg)
        self.name = ref.name
        self.where, path, kwargs = where_from(ref)
        gguf: str | None = kwargs.get("gguf_file")
        try:
            self.tokenizer, self.model_config = _read_files(
                path, gguf, cfg.trust_remote_code, bool(kwargs.get("local_files_only"))
            )
        except (OSError, ValueError) as e:
            raise ModelLoadError(
                f"model {cfg.model!r}: {self.where}; could not read its tokenizer ({first_line(e)})"
            ) from None
        except Exception as e:  # transformers' GGUF reader meets a damaged file with struct, index or key errors
            if gguf is None:
                raise
            raise ModelLoadError(
                f"model {cfg.model!r}: {self.where}; not a readable GGUF file ({type(e).__name__}: {first_line(e)})"
            ) from None
        self.context = config_context(self.model_config)  # the model's own; configs may ask for less
        self.vocab_only = gguf is not None and gguf_tensor_count(Path(path) / gguf) == 0


def where_from(ref: ModelRef) -> tuple[str, str, dict[str, Any]]:
    """(a line saying where the files come from, the path to load, loader kwargs); raises when missing offline."""
    if ref.convert_gguf:  # embedded: the converted copy when made, else the GGUF inside the package
        converted = converted_path(ref)
        if (converted / "config.json").exists():
            return f"embedded, converted copy {converted}", str(converted), {}
        return f"embedded GGUF {Path(ref.path) / str(ref.gguf_file)}", ref.path, {"gguf_file": ref.gguf_file}
    kwargs = {"gguf_file": ref.gguf_file} if ref.gguf_file else {}
    if Path(ref.path).exists():
        shown = Path(ref.path) / ref.gguf_file if ref.gguf_file else Path(ref.path)
        return f"local {'GGUF file' if ref.gguf_file else 'directory'} {shown}", ref.path, kwargs
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(ref.path, "config.json")
    if isinstance(cached, str):
        return f"hub id {ref.path}, in the local Hugging Face cache", ref.path, {**kwargs, "local_files_only": True}
    if hub_reachable():
        return f"hub id {ref.path}, downloaded on first use", ref.path, kwargs
    raise ModelLoadError(
        f"weights {ref.path!r} are missing: not a local path, not in the local Hugging Face cache, and the hub "
        f"cannot be reached; download them where there is network (huggingface-cli download {ref.path}) or set "
        "the model to a local directory"
    )
