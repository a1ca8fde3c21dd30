"""Checks made before any GPU hour is spent: tokenizers, prompt formats, digit ids, context limits.

Everything here loads tokenizers and configs only, never weights. `lengths` is what `bon run`
does before its first batch; `check` is `bon check`, which reports instead of raising.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from bon.config import RunConfig
from bon.policy import EnginePolicy
from bon.records import Prompt
from bon.tokens import ContextLengthError, TokenizerOnly, effective_context, overflow_message


@dataclass(frozen=True)
class LengthPlan:
    """What the context limits mean for a run: prompts to skip, and notes for the user."""

    skipped: dict[str, str] = field(default_factory=dict)  # prompt id -> why (policy.on_overflow: skip)
    notes: list[str] = field(default_factory=list)


def policy_overflows(policy: EnginePolicy, prompts: Sequence[Prompt]) -> tuple[int | None, list[tuple[str, int]]]:
    """(prompt tokens that fit, [(prompt id, tokens)] of the prompts that do not)."""
    room = policy.room()
    if room is None:
        return None, []
    lengths = [(p.id, len(policy.prompt_ids(p))) for p in prompts]
    return room, [(pid, n) for pid, n in lengths if n > room]


def judge_overflows(judge: Any, prompts: Sequence[Prompt], answer_tokens: int) -> tuple[int | None, list[tuple[str, int]]]:
    """(context, [(prompt id, tokens)]) of judge prompts that may not fit with an answer of ``answer_tokens``.

    The answer budget is the policy's max_tokens, counted in the judge's tokens (an estimate when
    policy and judge tokenize differently); each judgement is checked exactly when it is made.
    """
    context = judge.context
    if context is None:
        return None, []
    rows = [(p.id, judge.bound(p, answer_tokens)) for p in prompts if _judgeable(judge, p)]
    return context, [(pid, n) for pid, n in rows if n > context]


def _judgeable(judge: Any, prompt: Prompt) -> bool:
    return not (getattr(judge.options, "reference", None) == "always" and prompt.reference is None)


def offline_twin(judge: Any) -> Any | None:
    """The same judge on its tokenizer alone, for judges that build prompts (None for the others)."""
    if not hasattr(judge, "bound"):
        return None
    return type(judge)(judge.options, engine=TokenizerOnly(judge.options))


def lengths(config: RunConfig, prompts: Sequence[Prompt], judge: Any, check_policy: bool = True) -> LengthPlan:
    """Apply the context limits before any work: raise for on_overflow: error, else say what happens."""
    plan = LengthPlan()
    if check_policy:
        policy = EnginePolicy(config.policy, engine=TokenizerOnly(config.policy))
        room, over = policy_overflows(policy, prompts)
        mode = config.policy.on_overflow
        if over and mode == "error":
            raise ContextLengthError(overflow_message("policy prompts are", over, room, policy.context, "policy.on_overflow"))
        if over and mode == "skip":
            for pid, n in over:
                plan.skipped[pid] = (
                    f"skipped: prompt of {n} tokens + max_tokens {config.policy.max_tokens} exceeds the policy's context "
                    f"of {policy.context}"
                )
        if over:
            plan.notes.append(f"{len(over)} prompts longer than the policy's {room} tokens: {'left-truncated' if mode == 'truncate' else 'skipped'} (policy.on_overflow: {mode})")
    twin = offline_twin(judge)
    if twin is not None:
        getattr(twin, "digit_ids", None)  # a Self-J judge whose tokenizer cannot rate fails here, not after sampling
        context, over = judge_overflows(twin, [p for p in prompts if p.id not in plan.skipped], config.policy.max_tokens)
        mode = twin.options.on_overflow
        if over and mode == "error":
            raise ContextLengthError(
                overflow_message(
                    f"{twin.name} judge prompts (with a {config.policy.max_tokens}-token answer) are", over, context, context,
                    "judge.options.on_overflow",
                )
            )
        if over:
            plan.notes.append(f"{len(over)} prompts may not fit the judge's context with a full-length answer: answers {'truncated' if mode == 'truncate' else 'skipped'} there (judge.options.on_overflow: {mode})")
    return plan


@dataclass
class CheckReport:
    """What `bon check` found: rows to show, problems (wrong here) and missing downloads (fetch them)."""

    rows: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.missing


def _longest(rows: Sequence[tuple[str, int]]) -> tuple[str, int]:
    return max(rows, key=lambda r: r[1])


def _TokenizerOnly(role: str, cfg: Any, report: CheckReport) -> TokenizerOnly | None:
    from bon.models import ModelLoadError

    try:
        tokens = TokenizerOnly(cfg)
    except ModelLoadError as e:
        report.rows.append((f"{role} weights", f"MISSING: {e}"))
        report.missing.append(f"{role} weights {cfg.model!r}")
        return None
    report.rows.append((f"{role} weights", tokens.where + (" (vocab only: a tokenizer stand-in, no weights)" if tokens.vocab_only else "")))
    context = effective_context(cfg, tokens.context)
    report.rows.append((f"{role} context", f"{context} tokens" if context else "unknown (no limit checked)"))
    return tokens


def check(config: RunConfig, judge: Any) -> CheckReport:
    """Everything `bon run` would find wrong before its first batch, from tokenizers and configs only."""
    from bon import rundir
    from bon.prompts import PromptSourceError, load_prompts
    from bon.tokens import PromptFormatError

    report = CheckReport()
    prompts: list[Prompt] = []
    try:
        prompts = load_prompts(config.prompts)
        report.rows.append(("prompts", f"{len(prompts)} from {config.prompts.source}"))
    except PromptSourceError as e:
        report.rows.append(("prompts", f"MISSING: {e}"))
        report.missing.append(f"prompts {config.prompts.source!r}")

    skipped: set[str] = set()  # policy prompts set aside (on_overflow: skip) are not judged
    tokens = _TokenizerOnly("policy", config.policy, report)
    report.rows.append(("policy prompt format", config.policy.prompt_format))
    if tokens is not None:
        policy = EnginePolicy(config.policy, engine=tokens)
        try:
            if prompts:
                room, over = policy_overflows(policy, prompts)
                pid, n = _longest([(p.id, len(policy.prompt_ids(p))) for p in prompts])
                report.rows.append(("longest policy prompt", f"{pid}: {n} tokens + max_tokens {config.policy.max_tokens} = {n + config.policy.max_tokens} of {policy.context or '?'}"))
                if over:
                    _overflow(report, "policy", config.policy.on_overflow, over, room, policy.context, "policy.on_overflow")
                    skipped = {pid for pid, _ in over} if config.policy.on_overflow == "skip" else set()
        except (PromptFormatError, ContextLengthError) as e:
            report.problems.append(f"policy: {e}")

    twin_tokens = _TokenizerOnly("judge", judge.options, report) if hasattr(judge, "bound") else None
    if twin_tokens is not None:
        twin = type(judge)(judge.options, engine=twin_tokens)
        fmt = getattr(twin.options, "prompt_format", None) or getattr(twin.options, "wrapper", None)
        report.rows.append(("judge prompt format", f"{twin.name}: {fmt}"))
        if hasattr(twin, "digit_ids"):
            try:
                report.rows.append(("Self-J digit ids", str(twin.digit_ids)))
            except PromptFormatError as e:
                report.problems.append(f"judge: {e}")
        usable = [p for p in prompts if p.id not in skipped]
        try:
            if usable:
                context, over = judge_overflows(twin, usable, config.policy.max_tokens)
                pid, n = _longest([(p.id, twin.bound(p, config.policy.max_tokens)) for p in usable if _judgeable(twin, p)] or [("-", 0)])
                report.rows.append(("longest judge prompt", f"{pid}: {n} tokens with a {config.policy.max_tokens}-token answer and {twin.generates} generated, of {context or '?'}"))
                if over:
                    _overflow(report, "judge", twin.options.on_overflow, over, context, context, "judge.options.on_overflow")
        except (PromptFormatError, ContextLengthError) as e:
            report.problems.append(f"judge: {e}")
    elif not hasattr(judge, "bound"):
        report.rows.append(("judge", f"{judge.describe()} (builds no model prompt; nothing to check)"))

    if prompts:
        seqs = len(prompts) * config.n
        report.rows.append(("sequences", f"{len(prompts)} prompts x n={config.n} = {seqs}"))
        report.rows.append(("generated tokens", f"at most {seqs * config.policy.max_tokens:,} ({seqs} x max_tokens {config.policy.max_tokens})"))
    report.rows.append(("run directory", rundir.state(config)))
    if report.rows[-1][1].startswith("incompatible"):
        report.problems.append(f"run directory: {report.rows[-1][1]}")
    return report


def _overflow(report: CheckReport, role: str, mode: str, over: list[tuple[str, int]], limit: int, context: int, option: str) -> None:
    message = overflow_message(f"{role} prompts are", over, limit, context, option)
    if mode == "error":
        report.problems.append(f"{role}: {message}")
    else:
        report.rows.append((f"{role} overflow", f"{len(over)} prompts will be {'truncated' if mode == 'truncate' else 'skipped'} ({option}: {mode})"))
