"""Typed run configuration: pydantic models loaded from YAML, with ``--set key=value`` overrides."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

import yaml
from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator, model_validator

from bon.core.errors import BonError, ConfigError, problems
from bon.core.formats import check_format
from bon.core.io import DataFileError, read_text
from bon.core.judging import JUDGES, option_problems
from bon.core.names import Name
from bon.core.strict import Strict

DEFAULT_MODEL = "embedded:SmolLM2-135M-Instruct"
M = TypeVar("M", bound=BaseModel)


class PromptsConfig(Strict):
    source: str = Field(
        "configs/prompts/demo.jsonl", description="a local .json/.jsonl/.parquet file, or a Hugging Face data set id"
    )
    subset: str | None = Field(None, description="configuration name of a hub data set")
    split: str = Field("eval", description="split of a hub data set")
    instruction_field: str = Field("instruction", description="column holding the instruction")
    id_field: str = Field(
        "id", description="column holding a stable prompt id; derived from the instruction when absent"
    )
    reference_field: str | None = Field(
        "reference", description="column holding a gold answer for reference-based judges (AlpacaEval: 'output')"
    )
    dataset_field: str = Field("dataset", description="column naming the source subset (AlpacaEval's 'dataset')")
    turns_field: str = Field(
        "turns",
        description="column holding a conversation's user turns (MT-Bench), used when the instruction is absent",
    )
    messages_field: str = Field(
        "messages", description="column holding OpenAI-style messages ending with a user turn (one step on it)"
    )
    category_field: str = Field("category", description="column holding a category (MT-Bench), for per-category scores")
    ids: list[int | str] | None = Field(None, description="keep only the prompts with these ids, in source order")
    limit: int | None = Field(None, ge=1, description="keep only the first `limit` prompts")


class ServerConfig(Strict):
    """An OpenAI-compatible server (vllm serve, SGLang, TGI, a hosted endpoint) for ``backend: openai``."""

    base_url: str = Field(
        "http://localhost:8000/v1", description="the server's OpenAI API root, e.g. http://host:8000/v1"
    )
    model: str | None = Field(None, description="the served model name; None = the server's only model")
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        description=(
            "environment variable holding the API key (the key itself is never written anywhere); unset = no key"
        ),
    )
    endpoint: Literal["completions", "chat"] = Field(
        "completions",
        description="completions: token ids formatted here; chat: messages, the server applies its own template",
    )
    concurrency: int = Field(8, ge=1, description="requests in flight at once")
    timeout_s: float = Field(300.0, gt=0, description="seconds one request may take")
    max_retries: int = Field(
        5, ge=0, description="retries with exponential backoff on connection errors, 408/409/429 and 5xx"
    )
    n_per_request: bool = Field(
        True, description="ask for N samples with one request's `n`; false = N requests (servers without `n`)"
    )
    token_ids: bool = Field(
        True,
        description=(
            "ask for logprob tokens as ids (vLLM/SGLang return_tokens_as_token_ids); false = match decoded strings"
        ),
    )


class ModelConfig(Strict):
    backend: Literal["transformers", "vllm", "openai"] = Field(
        "transformers", description="inference engine (openai: a served model, see `server`)"
    )
    model: str = Field(DEFAULT_MODEL, description="embedded:<name>, a local directory or .gguf file, or a hub id")
    gguf_file: str | None = Field(None, description="GGUF file name inside `model` (a directory or hub repo)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights dtype; auto = float32 on CPU, bfloat16 on GPU"
    )
    device: str = Field("auto", description="transformers device: auto, cpu, cuda, cuda:1 ...")
    trust_remote_code: bool = Field(False, description="allow code shipped with a hub model to run")
    adapter: str | None = Field(
        None, description="a LoRA adapter directory (peft) merged into the weights at load, e.g. a trained Self-J judge"
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="extra keyword arguments passed unchanged to vllm.LLM"
    )
    context_length: int | None = Field(
        None, ge=2, description="tokens one sequence may hold; None = the model's (and engine_args.max_model_len)"
    )
    on_overflow: Literal["error", "truncate", "skip"] = Field(
        "error",
        description=(
            "a prompt that does not fit the context: error before any work, truncate it (flagged), or skip it (flagged)"
        ),
    )
    server: ServerConfig = Field(
        default_factory=ServerConfig, description="backend openai: the server; `model` then names the local tokenizer"
    )


class PolicyConfig(ModelConfig):
    max_rows: int | None = Field(
        None,
        ge=1,
        description="transformers engine: sequences decoding at once, across prompts (continuous batching); "
        "None = 128 on a CPU, 512 on a GPU",
    )
    max_kv_tokens: int | None = Field(
        None,
        ge=1,
        description="transformers engine: KV-cache tokens held at once, never exceeded; None = a quarter (CPU) or half "
        "(GPU) of the memory the weights leave, in the model's KV bytes per token; `bon check` shows it",
    )
    temperature: float = Field(0.7, ge=0.0, description="sampling temperature (0 = greedy)")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="nucleus sampling mass")
    max_tokens: int = Field(256, ge=1, description="longest candidate, in tokens")
    system_prompt: str | None = Field(None, description="system message; None keeps the format's default")
    prompt_format: str = Field(
        "chat",
        description=(
            "chat = the tokenizer's chat template; a named format "
            "(vicuna_v1.1, alpaca, ...) or a template with {instruction}"
        ),
    )

    @field_validator("prompt_format")
    @classmethod
    def _format(cls, value: str, info: ValidationInfo) -> str:
        return check_format(value, info.data.get("system_prompt"))


class JudgeConfig(Strict):
    name: str = Field("selfj", description="a registered judge (`bon judges list`)")
    options: dict[str, Any] = Field(
        default_factory=dict, description="the judge's own options, validated by its Options model"
    )

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        try:
            return JUDGES.check(name)
        except (KeyError, BonError) as e:  # unknown, or a user's judge that cannot be imported or built
            raise ValueError(str(e)) from None

    @model_validator(mode="after")
    def _options(self) -> JudgeConfig:
        try:
            bad = option_problems(self.name, self.options)
        except BonError as e:  # a package's judge found by entry point that cannot be imported
            raise ValueError(str(e)) from None
        if bad:
            raise ValueError("; ".join(f"options.{key}: {what}" for key, what in bad))
        return self


class SelectionConfig(Strict):
    decline_below: float | None = Field(
        None, description="decline a prompt whose best score is below this; None never declines"
    )
    tie_break: str = Field(
        "lowest_index",
        pattern=r"^(lowest_index|details:\w+|judge:\w+)$",
        description=(
            "equal scores: lowest_index, details:KEY (e.g. "
            "details:rating_logprob), or judge:NAME (another judge's score)"
        ),
    )
    decline_message: str = Field(
        "I'm sorry, but I am not confident I can answer this request well, so I will not answer it.",
        description="the output written for a declined prompt",
    )
    coverage: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="answer this share of the prompts, declining those whose pick scores lowest (τ per run)",
    )
    length_penalty: float = Field(
        0.0, ge=0.0, description="λ: pick by z(score) - λ z(length in characters) within a prompt; 0: by score"
    )

    @model_validator(mode="after")
    def _one_decline_rule(self) -> SelectionConfig:
        if self.coverage is not None and self.decline_below is not None:
            raise ValueError("give decline_below or coverage, not both (coverage chooses the threshold itself)")
        return self


class EarlyRejectionConfig(Strict):
    chunk_tokens: int = Field(16, ge=1, description="tokens generated between two rounds of partial judging")
    keep_fraction: float = Field(
        0.5,
        gt=0.0,
        lt=1.0,
        description="share of a prompt's unfinished candidates kept after each round (at least one)",
    )


class ActorResources(Strict):
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per replica (also its torch threads)")
    num_gpus: float = Field(
        0.0,
        ge=0,
        description="GPUs per replica; a vLLM policy with tensor_parallel_size > 1 gets a placement group of that many",
    )
    memory_gb: float | None = Field(None, gt=0, description="memory reserved per replica, for Ray's scheduler")


class RayConfig(Strict):
    address: str | None = Field(
        None, description="cluster to join (ray://... or host:port); None = $RAY_ADDRESS, else a new local instance"
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local instance started by bon; None = all")
    policy_replicas: int = Field(1, ge=1, description="policy actors (data parallel)")
    judge_replicas: int = Field(1, ge=1, description="judge actors (data parallel)")
    policy: ActorResources = Field(default_factory=ActorResources, description="resources of each policy actor")
    judge: ActorResources = Field(default_factory=ActorResources, description="resources of each judge actor")
    queue_size: int = Field(2, ge=1, description="batches sampled ahead of the judge (back-pressure)")
    max_restarts: int = Field(3, ge=0, description="restarts of a dead actor before the run fails")
    startup_timeout_s: float = Field(
        600.0, gt=0, description="longest wait for actors to start (model loading included)"
    )


class RunConfig(Strict):
    """A best-of-N run: prompts, policy, n, judge, selection and where it is written (`bon run CONFIG`)."""

    name: Name | None = Field(None, description="generator name in model_outputs.json; default <policy>-bo<n>-<judge>")
    output_dir: Path = Field(Path("runs/demo"), description="run directory; rerunning continues there")
    n: int = Field(
        8, ge=1, le=4096, description="candidates per prompt (at most 4096; an engine decodes a prompt's N together)"
    )
    seed: int = Field(0, ge=0, description="base seed; every candidate's seed derives from it")
    batch_size: int = Field(
        1,
        ge=1,
        description="prompts per pipeline batch: the unit written to disk (resumption) and of judging; engines "
        "decode across batches",
    )
    engine: Literal["local", "ray"] = Field(
        "local", description="local = in-process pipeline; ray = policy and judge in Ray actors"
    )
    ray: RayConfig = Field(default_factory=RayConfig, description="actors and cluster for engine: ray")
    prompts: PromptsConfig = Field(default_factory=PromptsConfig, description="where the prompts come from")
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="the model that samples candidates")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="the judge that scores candidates")
    selection: SelectionConfig = Field(default_factory=SelectionConfig, description="best-of-N selection and declining")
    allow_unjudged: bool = Field(
        False,
        description=(
            "accept prompts the judge could score no candidate of (fallback "
            "pick); false ends the run with exit 2 once all is written"
        ),
    )
    early_rejection: EarlyRejectionConfig | None = Field(
        None, description="judge partial candidates every chunk_tokens and stop the worst (Sun et al. 2024); None = off"
    )

    @model_validator(mode="after")
    def _chat_endpoint_sends_whole_conversations(self) -> RunConfig:
        """A chat endpoint is sent messages (`bon.engines.contract.ChatIds`): cut token ids have none."""
        policy = self.policy
        if policy.backend != "openai" or policy.server.endpoint != "chat":
            return self
        if policy.on_overflow == "truncate":
            raise ValueError(
                "policy.on_overflow truncate: policy.server.endpoint chat sends messages, which cannot be cut to fit "
                "the context; use error or skip, or server.endpoint completions"
            )
        return self

    @model_validator(mode="after")
    def _rows_hold_a_prompt(self) -> RunConfig:
        if self.policy.max_rows is not None and self.policy.max_rows < self.n:
            raise ValueError(f"policy.max_rows {self.policy.max_rows} cannot hold one prompt's n={self.n} rows")
        return self

    def generator_name(self) -> str:
        if self.name:
            return self.name
        policy = self.policy.model.removeprefix("embedded:").rstrip("/").split("/")[-1]
        return f"{policy}-bo{self.n}-{self.judge.name}"


def _yaml_line(node: yaml.Node | None, path: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest key of ``path`` present in a composed YAML tree."""
    line = None
    for key in path:
        if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]  # a list item: its own keys carry the line
            line = node.start_mark.line + 1
            continue
        if not isinstance(node, yaml.MappingNode):
            break
        for k, v in node.value:
            if k.value == str(key):
                line, node = k.start_mark.line + 1, v
                break
        else:
            break
    return line


def _format_errors(
    err: ValidationError, source: str, tree: yaml.Node | None, model: Any = None, sets: dict[str, str] | None = None
) -> str:
    """One line per error, placed where the value came from: ``--set KEY=VALUE`` or the file's line."""
    lines = []
    for e, (key, what) in zip(err.errors(), problems(err, model)):
        assignment = _set_for(key, what, sets or {})
        if assignment is not None:
            lines.append(f"--set {assignment}: {key}: {what}")
            continue
        line = _yaml_line(tree, tuple(e["loc"]))
        lines.append(f"{source}:{line}: {key}: {what}" if line else f"{source}: {key}: {what}")
    return "\n".join(lines)


def _set_for(key: str, what: str, sets: dict[str, str]) -> str | None:
    """The last ``--set`` that put the bad value at ``key``: the key itself, a section above it, or an option
    below it that the message names (``judge: options.x: ...`` comes from ``--set judge.options.x=...``)."""
    for dotted, assignment in reversed(list(sets.items())):
        below = dotted.startswith(key + ".") and what.startswith(dotted[len(key) + 1 :] + ":")
        if dotted == key or key.startswith(dotted + ".") or below:
            return assignment
    return None


def validate_options(model: type[M], options: dict[str, Any], flags: dict[str, str] | None = None) -> M:
    """Command-line options checked by the same config model that checks a YAML file.

    ``flags`` maps a field to its option name (``{"tie_break": "--tie-break"}``) for the message.
    """

    def flag(field: str) -> str:
        return (flags or {}).get(field, f"--{field.replace('_', '-')}")

    try:
        return model.model_validate(options)
    except ValidationError as e:
        key, what = problems(e, model)[0]
        if key == "<top level>":  # a rule between options (e.g. two ways to decline), said with the flags typed
            for field in model.model_fields:
                what = re.sub(rf"\b{re.escape(field)}\b", flag(field), what)
            raise ConfigError(f"options: {what}") from None
        raise ConfigError(f"option {flag(key)}: {what}") from None


def apply_override(data: dict[str, Any], assignment: str, notes: list[str] | None = None) -> None:
    """Apply one ``dotted.key=value`` override; the value is parsed as YAML (``n=4`` is an int).

    Setting a judge's ``name`` to another judge drops the ``options`` it had (they belong to the old judge;
    `notes` gets a line saying so); options set after it apply to the new judge.
    """
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. --set n=4")
    parts = key.strip().split(".")
    node: Any = data
    for part in parts[:-1]:
        if isinstance(node, list):  # judges.0.options.model=... indexes a list
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    f"--set {assignment!r}: {part!r} is not an index of that list (it has {len(node)} items)"
                )
            node = node[int(part)]
            continue
        child = node.setdefault(part, {})
        if not isinstance(child, (dict, list)):
            raise ConfigError(f"--set {assignment!r}: {part!r} is not a section")
        node = child
    if isinstance(node, list):
        raise ConfigError(f"--set {assignment!r}: set a key of one item, e.g. {'.'.join(parts[:-1])}.0.KEY=VALUE")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML (e.g. an unbalanced "{instruction"): the text itself, which validation then judges
    if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
        value = raw  # YAML 1.1 reads yes/no/on/off as booleans; on a command line they are words
    if parts[-1] == "name" and node.get("options") and node.get("name", value) != value:
        dropped = ", ".join(map(str, node["options"])) if isinstance(node["options"], dict) else "options"
        where = ".".join(parts[:-1]) or "judge"
        if notes is not None:
            notes.append(
                f"--set {key.strip()}={value}: {where}.options of {node['name']} ({dropped}) dropped; "
                f"set options for {value} after it, e.g. --set {where}.options.KEY=VALUE"
            )
        node["options"] = {}
    node[parts[-1]] = value


def _refuse_duplicate_keys(node: yaml.Node | None, source: str, where: str = "") -> None:
    """YAML keeps the last of two equal keys; a config that says two things is refused instead, naming both lines."""
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, source, f"{where}[{i}]")
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[Any, int] = {}
    for key, value in node.value:
        name = key.value if isinstance(key, yaml.ScalarNode) else str(key)
        line = key.start_mark.line + 1
        dotted = f"{where}.{name}" if where else str(name)
        if name in seen:
            raise ConfigError(f"{source}:{line}: key {dotted} is given twice (lines {seen[name]} and {line}); keep one")
        seen[name] = line
        _refuse_duplicate_keys(value, source, dotted)


@overload
def load_config(
    path: Path | str | None = None, overrides: list[str] | None = None, *, notes: list[str] | None = None
) -> RunConfig: ...


@overload
def load_config(
    path: Path | str | None, overrides: list[str] | None, model: type[M], notes: list[str] | None = None
) -> M: ...


@overload
def load_config(
    path: Path | str | None = None,
    overrides: list[str] | None = None,
    *,
    model: type[M],
    notes: list[str] | None = None,
) -> M: ...


def load_config(
    path: Path | str | None = None,
    overrides: list[str] | None = None,
    model: type[BaseModel] = RunConfig,
    notes: list[str] | None = None,
) -> BaseModel:
    """Load a config (a `RunConfig` unless ``model`` says otherwise) from YAML or defaults, plus overrides.

    ``notes`` receives what the overrides changed beyond their own key (a judge's options dropped with its name).
    """
    source, tree, data = "<defaults>", None, {}  # type: tuple[str, yaml.Node | None, dict[str, Any]]
    if path is not None:
        source = str(path)
        try:
            text = read_text(path)
        except DataFileError as e:
            raise ConfigError(f"{e} (the config)") from None
        try:
            tree = yaml.compose(text)
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
        if data is None:  # an empty file would quietly run every default: most likely the wrong file
            raise ConfigError(f"{path}: the config is empty; a config is a mapping of keys (e.g. n: 8)")
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config is a mapping of keys, found {type(data).__name__}")
        _refuse_duplicate_keys(tree, str(path))
    return _validated(data, overrides, source, tree, model, notes)


def config_from(
    data: Mapping[str, Any], overrides: list[str] | None = None, model: type[BaseModel] = RunConfig
) -> BaseModel:
    """A config from a mapping (Python's way of giving a YAML file), plus overrides, checked as a file is."""
    return _validated(copy.deepcopy(dict(data)), overrides, "<mapping>", None, model, None)


def _validated(
    data: dict[str, Any],
    overrides: list[str] | None,
    source: str,
    tree: Any,
    model: type[BaseModel],
    notes: list[str] | None,
) -> BaseModel:
    sets: dict[str, str] = {}  # dotted key -> the --set that gave it, for messages
    for assignment in overrides or []:
        apply_override(data, assignment, notes)
        key = assignment.partition("=")[0].strip()
        sets.pop(key, None)
        sets[key] = assignment
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source, tree, model, sets)) from None
