"""Checks made before any GPU hour is spent: tokenizers, prompt formats, digit ids, context limits, memory.

Everything here loads tokenizers and configs only, never weights. `findings` yields what there is to
find in one order; `lengths` is what `bon run` makes of them before its first batch (the first
refusal raised), `check` is `bon check` (every one reported).
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from bon.core import rundir
from bon.core.config import ModelConfig, RunConfig
from bon.core.errors import BonError, ConfigError, SizeError
from bon.core.judging import Judge, check_conversations
from bon.core.prompts import PromptSourceError, load_prompts
from bon.core.records import Prompt
from bon.engines.memory import DTYPE_BYTES, MemoryPlan, default_rows, dtype_name, kv_need, plan
from bon.engines.models import ModelLoadError, require_weights
from bon.engines.tokens import ContextLengthError, PromptFormatError, TokenizerOnly, effective_context, overflow_message
from bon.pipeline.early_rejection import CPU_SPEEDS, GPU_SPEEDS, Workload, advice
from bon.pipeline.policy import PolicyPrompts
from bon.pipeline.turns import last_turn_bound


@runtime_checkable
class PromptBuilder(Protocol):
    """A judge that reads one model prompt per candidate: preflight counts its tokens on a tokenizer alone.

    Its members are methods and the plain ``options`` attribute, so an isinstance check never touches a lazily
    loaded engine.
    """

    @property
    def options(self) -> ModelConfig:
        """The judge model's config (its tokenizer, context and backend)."""
        ...

    def on_tokenizer(self, tokens: Any) -> PromptBuilder:
        """The same judge on ``tokens`` (an engine that only tokenizes): nothing is loaded."""
        ...

    def limits(self) -> tuple[int | None, int]:
        """(tokens the judge model may hold, tokens it generates after a prompt)."""
        ...

    def judges(self, prompt: Prompt) -> bool:
        """Whether this prompt gets a judge prompt at all (e.g. not without a reference it requires)."""
        ...

    def bound(self, prompt: Prompt, answer_tokens: int) -> int:
        """Tokens the judge prompt of ``prompt`` takes with an answer of ``answer_tokens``, plus generation."""
        ...

    def preflight_rows(self) -> list[tuple[str, str]]:
        """What `bon check` shows of the prompts (format, digit ids); raises what the first judgement would."""
        ...


@dataclass(frozen=True)
class Fit:
    """Every prompt's length in one model's tokens, against what fits that model's context."""

    role: str  # policy | judge
    option: str  # the config key that decides what overflow becomes
    mode: str  # error | truncate | skip
    limit: (
        int | None
    )  # tokens that fit (policy: prompt tokens; judge: prompt + answer + generated); None = no limit known
    context: int | None
    lengths: list[tuple[str, int]]  # (prompt id, tokens)
    what: str  # how the lengths were counted, for messages

    @property
    def over(self) -> list[tuple[str, int]]:
        return [] if self.limit is None else [(pid, n) for pid, n in self.lengths if n > self.limit]

    def message(self) -> str:
        return overflow_message(f"{self.role} prompts{self.what} are", self.over, self.limit, self.context, self.option)

    def longest(self) -> tuple[str, int] | None:
        return max(self.lengths, key=lambda r: r[1]) if self.lengths else None


def policy_fit(config: RunConfig, prompts: Sequence[Prompt], tokens: TokenizerOnly) -> Fit:
    policy = PolicyPrompts(config.policy, tokens)
    return Fit(
        "policy",
        "policy.on_overflow",
        config.policy.on_overflow,
        policy.room(),
        policy.context,
        [(p.id, len(policy.prompt_ids(p))) for p in prompts],
        "",
    )


def judge_fit(config: RunConfig, twin: PromptBuilder, prompts: Sequence[Prompt]) -> Fit:
    """Judge prompts with an answer of the policy's max_tokens, counted in the judge's tokens (an estimate
    when policy and judge tokenize differently); each judgement is checked exactly when it is made."""
    answer = config.policy.max_tokens
    usable = [p for p in prompts if twin.judges(p)]
    context, generates = twin.limits()
    return Fit(
        "judge",
        "judge.options.on_overflow",
        twin.options.on_overflow,
        context,
        context,
        [(p.id, twin.bound(p, answer)) for p in usable],
        f" (with a {answer}-token answer, {generates} generated)",
    )


@dataclass(frozen=True)
class LengthPlan:
    """What the context limits mean for a run: prompts to skip, and notes for the user."""

    skipped: dict[str, str] = field(default_factory=dict)  # prompt id -> why (policy.on_overflow: skip)
    notes: list[str] = field(default_factory=list)


def _outcome(fit: Fit) -> str:
    became = "truncated" if fit.mode == "truncate" else "skipped"
    n = len(fit.over)
    return f"{n} {fit.role} prompts do not fit its context of {fit.context}: {became} ({fit.option}: {fit.mode})"


def _on_cuda(cfg: Any) -> bool:
    """Whether a model config's transformers engine runs on a GPU (`device: auto` asks torch)."""
    if cfg.device == "auto":
        import torch  # only to know whether a GPU is there: no weights are read

        return bool(torch.cuda.is_available())
    return bool(cfg.device.startswith("cuda"))


def _gpu(cfg: Any) -> str | None:
    """The GPU a config names (``cuda:1``), for its memory; None for the current one or a CPU."""
    return cfg.device if cfg.device.startswith("cuda") else None


def _dtype_bytes(cfg: Any, cuda: bool) -> int:
    return DTYPE_BYTES[dtype_name(cfg.dtype, cpu=not cuda)]


def decode_rows(config: RunConfig) -> int | None:
    """Sequences the transformers engine decodes at once: policy.max_rows or its device's default (None: the
    engine schedules its own, vLLM or a server)."""
    policy = config.policy
    if policy.backend != "transformers":
        return None
    if policy.max_rows is not None:
        return policy.max_rows
    return default_rows(_on_cuda(policy))


def model_memory(
    cfg: ModelConfig, tokens: TokenizerOnly, max_rows: int | None = None, max_kv_tokens: int | None = None
) -> MemoryPlan | None:
    """The memory plan of a transformers model config (`bon.engines.memory.MemoryPlan`): the budgets the engine
    obeys, the same numbers. None for other backends, or a model config without the usual sizes (the engine
    measures it once loaded)."""
    if cfg.backend != "transformers":
        return None
    cuda = _on_cuda(cfg)
    try:
        return plan(
            tokens.model_config,
            _dtype_bytes(cfg, cuda),
            cuda,
            _gpu(cfg),
            max_rows=max_rows,
            max_kv_tokens=max_kv_tokens,
        )
    except AttributeError:
        return None


def policy_memory(config: RunConfig, tokens: TokenizerOnly) -> MemoryPlan | None:
    """The policy's memory plan, its KV budget checked against all the memory (`MemoryPlan.check_kv`)."""
    policy = config.policy
    memory = model_memory(policy, tokens, policy.max_rows, policy.max_kv_tokens)
    if memory is not None:
        memory.check_kv()
    return memory


def kv_budget(config: RunConfig, memory: MemoryPlan | None) -> tuple[int, str] | None:
    """(KV tokens the transformers engine may hold, where that number comes from); None for other engines."""
    policy = config.policy
    if memory is not None:
        return memory.kv_tokens, memory.kv_said
    if policy.backend == "transformers" and policy.max_kv_tokens is not None:  # sizes unknown: the user's number
        return policy.max_kv_tokens, "policy.max_kv_tokens"
    return None


@runtime_checkable
class Batched(Protocol):
    """Judge options that set how many prompts one forward pass holds."""

    batch_size: int


def check_judge_batch(options: ModelConfig, tokens: TokenizerOnly, fit: Fit) -> None:
    """A transformers judge runs `batch_size` of its prompts in one forward pass: refuse a batch whose
    longest prompts could never fit the memory share an engine takes (`MemoryPlan.forward_rows`)."""
    longest = fit.longest()
    if not isinstance(options, Batched) or longest is None:
        return
    memory = model_memory(options, tokens)
    if memory is None:
        return
    length = min(longest[1], fit.context or longest[1])  # a judge prompt is refused, cut or skipped past its context
    bound = memory.forward_rows(length)
    if options.batch_size > bound:
        raise SizeError(
            f"judge.options.batch_size {options.batch_size:,} is more judge prompts than one forward pass can hold: "
            f"prompts of up to {length} tokens ({longest[0]!r}) at about {memory.forward_per_token:,} bytes a token "
            f"fit {bound:,} at once in {memory.share_name}; lower it to at most {bound:,}"
        )


def check_rows(config: RunConfig) -> None:
    """One prompt's N candidates decode together: N beyond the engine's rows is refused before any work."""
    rows = decode_rows(config)
    if rows is not None and config.n > rows:
        where = (
            "policy.max_rows" if config.policy.max_rows is not None else "the default policy.max_rows on this device"
        )
        raise SizeError(
            f"n {config.n} is more candidates than the transformers engine decodes at once ({rows} rows, {where}); "
            "lower n, or raise policy.max_rows if the memory allows it"
        )


def _check_kv_budget(config: RunConfig, fit: Fit, budget: tuple[int, str] | None, memory: MemoryPlan | None) -> None:
    """The KV budget (`kv_budget`) must hold one prompt's N rows with max_tokens each, and the memory plan its
    prefill, for every prompt: the engine's admission rule (`kv_need`, as in `MemoryPlan.admits`), so none is
    refused mid-run."""
    n, generated = config.n, config.policy.max_tokens
    if budget is not None:
        limit, source = budget
        over = [(pid, kv_need(n, length, generated)) for pid, length in fit.lengths]
        over = [(pid, need) for pid, need in over if need > limit]
        if over:
            pid, need = max(over, key=lambda r: r[1])
            raise SizeError(
                f"{source} {limit} cannot hold {len(over)} prompts' n={n} rows of prompt + max_tokens "
                f"{generated} (e.g. {pid!r} needs {need}); raise it, or lower n or policy.max_tokens"
            )
    longest = fit.longest()
    if memory is not None and longest is not None and not memory.prefill_fits(1, longest[1]):
        raise SizeError(
            f"the policy prompt {longest[0]!r} of {longest[1]:,} tokens needs a "
            f"{memory.prefill_bytes(1, longest[1]) / 2**30:.1f} GiB prefill, more than {memory.share_name} "
            f"({memory.bound / 2**30:.1f} GiB); shorten it, or set policy.context_length to cut or skip such prompts"
        )


def check_generation(options: ModelConfig, tokens: TokenizerOnly, fit: Fit, generates: int) -> None:
    """A transformers judge that writes (Auto-J's critique, MT-Bench's verdict) decodes its prompts in the same
    loop as a policy, within its model's plan: each prompt with its generation must fit the KV budget and one
    prefill, or the judgement would be refused mid-run."""
    if generates <= 1 or options.backend != "transformers":  # one next token: a forward pass (check_judge_batch)
        return
    memory = model_memory(options, tokens)
    if memory is None:
        return
    for pid, bound in fit.lengths:
        prompt = bound - generates  # the judge prompt with a max_tokens answer
        if not memory.admits(1, prompt, generates) or not memory.prefill_fits(1, prompt):
            raise SizeError(
                f"the judge prompt of {pid!r} ({prompt:,} tokens, {generates:,} generated) does not fit the judge "
                f"model's memory plan ({memory.kv_tokens:,} KV tokens, {memory.bound / 2**30:.1f} GiB for one "
                f"prefill, {memory.share_name}); lower policy.max_tokens or use a judge with a shorter prompt"
            )


def early_rejection_advice(
    config: RunConfig, prompts: Sequence[Prompt], judge: Judge, twin: PromptBuilder | None, prompt_tokens: list[int]
) -> tuple[bool, str] | None:
    """Whether early rejection should save time on this run, from n, its settings, max_tokens, the rows the
    policy decodes at once and what a judgement costs (its prompt's tokens, counted on the judge's tokenizer
    ``twin`` when it has one; none for a free judge); None without early rejection."""
    er = config.early_rejection
    if er is None or not prompts:
        return None
    sample = list(prompts[:: max(1, len(prompts) // 16)])[:16]  # judge prompts are tokenized: a few suffice
    writes = twin.limits()[1] if twin is not None else 0
    usable = [p for p in sample if twin is None or twin.judges(p)] or sample
    base = statistics.fmean(prompt_tokens) if prompt_tokens else 0.0

    @functools.cache
    def tokens(t: int) -> float:
        if judge.declaration.free:
            return 0.0
        if twin is not None:
            return statistics.fmean(twin.bound(p, t) - writes for p in usable)
        return base + t  # a model judge without a prompt of its own reads about the instruction and the answer

    policy = config.policy
    on_gpu = policy.backend != "transformers" or _on_cuda(policy)
    work = Workload(
        prompts=sum(max(1, len(p.turns)) for p in prompts),
        rows=decode_rows(config) or default_rows(True),
        judge_tokens=tokens,
        judge_generates=writes,
        speeds=GPU_SPEEDS if on_gpu else CPU_SPEEDS,
    )
    return advice(work, config.n, policy.max_tokens, er)


def require_run_weights(config: RunConfig, judge: Judge, check_policy: bool = True) -> None:
    """Refuse a vocabulary-only GGUF as the policy or the judge's model from its header, before `lengths` parses its
    tokenizer: a run could never load it (`bon check` takes such files as tokenizer stand-ins)."""
    if check_policy:
        require_weights(config.policy, "model")
    if isinstance(judge, PromptBuilder):
        require_weights(judge.options, "judge model")


Kind = Literal["row", "note", "skip", "problem", "missing", "stand_in"]


@dataclass(frozen=True)
class Finding:
    """One thing preflight found. `findings` yields them in one order for both readers: `bon run` (`lengths`, which
    raises the first refusal and prints the notes) and `bon check` (`check`, which shows every one)."""

    label: str  # the row `bon check` shows it under
    text: str
    kind: Kind = "row"  # row: shown by check; note: said by both; skip: a prompt set aside; problem, missing:
    # refused (missing: a download would mend it); stand_in: a vocabulary-only file `bon run` refuses for its weights
    error: BonError | None = None  # problem, missing: what `bon run` raises
    prompt_id: str | None = None  # skip: the prompt set aside


def _refused(role: str, e: BonError) -> Finding:
    return Finding(role, f"{role}: {e}", "problem", e)


def _tokens(role: str, cfg: Any) -> Generator[Finding, None, TokenizerOnly | None]:
    """A model's tokenizer and context, loaded without weights; None (a `missing` finding) when it cannot be."""
    try:
        tokens = TokenizerOnly(cfg)
    except ModelLoadError as e:
        yield Finding(f"{role} weights", f"{role} weights {cfg.model!r}", "missing", e)
        return None
    stand_in = " (vocab only: a tokenizer stand-in, no weights)" if tokens.vocab_only else ""
    yield Finding(f"{role} weights", tokens.where + stand_in)
    if tokens.vocab_only:
        yield Finding(
            f"{role} weights", f"{role} weights {cfg.model!r} is a vocabulary-only GGUF (no weights)", "stand_in"
        )
    context = effective_context(cfg, tokens.context)
    yield Finding(f"{role} context", f"{context} tokens" if context else "unknown (no limit checked)")
    return tokens


def _fit(fit: Fit, extra: int = 0) -> Iterator[Finding]:
    """A fit's longest prompt, then its overflow: refused (on_overflow: error) or what becomes of it."""
    longest = fit.longest()
    if longest is not None:
        total = f" = {longest[1] + extra}" if extra else ""
        budget = f" + max_tokens {extra}" if extra else fit.what
        text = f"{longest[0]}: {longest[1]} tokens{budget}{total} of {fit.context or '?'}"
        yield Finding(f"longest {fit.role} prompt", text)
    if fit.over and fit.mode == "error":
        yield _refused(fit.role, ContextLengthError(fit.message()))
    elif fit.over:
        yield Finding(f"{fit.role} overflow", _outcome(fit), "note")


def _conversations(config: RunConfig, fit: Fit) -> Iterator[Finding]:
    """Conversations whose last turn, counted with empty answers, already overflows: refused before any answer."""
    if fit.over and fit.mode == "error":
        e = ContextLengthError(
            f"{config.prompts.source}: field 'turns': conversations too long even before any answer (their last "
            f"turn counted with empty answers): {fit.message()}"
        )
        yield _refused(fit.role, e)


def _policy(
    config: RunConfig, prompts: Sequence[Prompt], bounds: Sequence[Prompt]
) -> Generator[Finding, None, Fit | None]:
    try:
        check_rows(config)
    except SizeError as e:
        yield _refused("policy", e)
    tokens = yield from _tokens("policy", config.policy)
    yield Finding("policy prompt format", config.policy.prompt_format)
    if tokens is None or not prompts:
        return None
    fit = None
    try:
        fit = policy_fit(config, prompts, tokens)
        yield from _fit(fit, config.policy.max_tokens)
        if fit.mode == "skip":
            for pid, n in fit.over:
                why = (
                    f"skipped: prompt of {n} tokens + max_tokens {config.policy.max_tokens} exceeds the policy's "
                    f"context of {fit.context}"
                )
                yield Finding("policy overflow", why, "skip", prompt_id=pid)
        if bounds:
            yield from _conversations(config, policy_fit(config, bounds, tokens))
        memory = policy_memory(config, tokens)
        budget = kv_budget(config, memory)
        if budget is not None:
            yield Finding("policy KV cache", f"at most {budget[0]:,} tokens ({budget[1].rstrip(',')})")
        if memory is not None:
            yield Finding("policy memory", memory.summary())
            short = memory.shortfall()
            if short is not None:
                yield Finding("policy memory now", short, "note")
        _check_kv_budget(config, fit, budget, memory)
    except (PromptFormatError, ContextLengthError, SizeError) as e:
        yield _refused("policy", e)
    return fit


def _judge(
    config: RunConfig, prompts: Sequence[Prompt], judge: PromptBuilder, skipped: set[str], bounds: Sequence[Prompt]
) -> Generator[Finding, None, PromptBuilder | None]:
    tokens = yield from _tokens("judge", judge.options)
    if tokens is None:
        return None
    twin = judge.on_tokenizer(tokens)
    try:
        for label, text in twin.preflight_rows():  # a tokenizer that cannot build its prompts fails here
            yield Finding(label, text)
        fit = judge_fit(config, twin, [p for p in prompts if p.id not in skipped])
        yield from _fit(fit)
        if bounds:
            yield from _conversations(config, judge_fit(config, twin, bounds))
        check_judge_batch(judge.options, tokens, fit)
        check_generation(judge.options, tokens, fit, twin.limits()[1])
    except (PromptFormatError, ContextLengthError, SizeError) as e:
        yield _refused("judge", e)
    return twin


def findings(
    config: RunConfig,
    prompts: Sequence[Prompt],
    judge: Judge,
    check_policy: bool = True,
    bounds: Sequence[Prompt] = (),
) -> Iterator[Finding]:
    """Everything preflight finds about a run, from tokenizers and configs only, in one order: the policy's
    tokenizer, prompts, overflow and memory plan, then the judge's, then the run's size and early rejection.

    ``bounds``: conversations' last turns counted with empty answers, refused when even they overflow.
    ``check_policy`` False: the policy is not bon's to check (a model handed in memory, `bon judge`).
    """
    fit = None
    if check_policy:
        fit = yield from _policy(config, prompts, bounds)
    skipped = {pid for pid, _ in fit.over} if fit is not None and fit.mode == "skip" else set()
    twin = None
    if isinstance(judge, PromptBuilder):
        twin = yield from _judge(config, prompts, judge, skipped, bounds)
    else:
        yield Finding("judge", f"{judge.describe()} (builds no model prompt; nothing to check)")
    if not prompts:
        return
    turns = sum(max(1, len(p.turns)) for p in prompts)
    seqs = turns * config.n
    yield Finding("sequences", f"{turns} prompts x n={config.n} = {seqs}")
    generated = f"at most {seqs * config.policy.max_tokens:,} ({seqs} x max_tokens {config.policy.max_tokens})"
    yield Finding("generated tokens", generated)
    if check_policy:
        try:
            said = early_rejection_advice(config, prompts, judge, twin, [n for _, n in fit.lengths] if fit else [])
        except (PromptFormatError, ContextLengthError) as e:
            said = (True, f"not estimated: {e}")
        if said is not None:
            yield Finding("early rejection", said[1], "row" if said[0] else "note")


def lengths(
    config: RunConfig,
    prompts: Sequence[Prompt],
    judge: Judge,
    check_policy: bool = True,
    bounds: Sequence[Prompt] = (),
) -> LengthPlan:
    """What `bon run` makes of the findings before any work: the first refusal raised, else prompts to skip and
    notes to say."""
    plan = LengthPlan()
    for f in findings(config, prompts, judge, check_policy, bounds):
        if f.error is not None:
            raise f.error
        if f.kind == "note":
            plan.notes.append(f.text)
        elif f.kind == "skip" and f.prompt_id is not None:
            plan.skipped[f.prompt_id] = f.text
    return plan


@dataclass
class CheckReport:
    """What `bon check` found: rows to show, problems (wrong here), missing downloads (fetch them) and stand-ins
    (vocabulary-only files the token checks ran on, which `bon run` refuses: no weights)."""

    rows: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    stand_ins: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether `bon run` would start: one verdict, so no "ok" for what it would refuse."""
        return not self.problems and not self.missing and not self.stand_ins

    def add(self, f: Finding) -> None:
        if f.kind in ("row", "note"):
            self.rows.append((f.label, f.text))
        elif f.kind == "problem":
            self.problems.append(f.text)
        elif f.kind == "missing":
            self.rows.append((f.label, f"MISSING: {f.error}"))
            self.missing.append(f.text)
        elif f.kind == "stand_in":
            self.stand_ins.append(f.text)


def check(config: RunConfig, judge: Judge) -> CheckReport:
    """Everything `bon run` would find wrong before its first batch, from tokenizers and configs only: the same
    `findings`, all of them."""
    report = CheckReport()
    prompts: list[Prompt] = []
    try:
        prompts = load_prompts(config.prompts)
        report.rows.append(("prompts", f"{len(prompts)} from {config.prompts.source}"))
    except PromptSourceError as e:
        report.add(Finding("prompts", f"prompts {config.prompts.source!r}", "missing", e))
    turns = sum(max(1, len(p.turns)) for p in prompts)
    if turns > len(prompts):
        report.rows.append(("conversations", f"{turns} user turns in all, each sampled after the last kept answer"))
    try:
        check_conversations(judge, prompts, config.policy.prompt_format)
    except ConfigError as e:
        report.problems.append(str(e))
    for f in findings(config, prompts, judge, bounds=[last_turn_bound(p) for p in prompts if p.later_turns]):
        report.add(f)
    report.rows.append(("run directory", rundir.state(config)))
    if report.rows[-1][1].startswith("incompatible"):
        report.problems.append(f"run directory: {report.rows[-1][1]}")
    return report
