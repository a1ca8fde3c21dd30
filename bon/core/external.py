"""Judges from outside bon: a class by import path or entry point, or a reward function in TRL's convention.

A user's judge needs only what it uses. A class needs a ``score(prompts, candidates)`` returning one float (None
for a failure) or one `Judgement` per candidate; a function is called as TRL calls a GRPO reward function,
``f(prompts=[...], completions=[...], **kwargs) -> list[float | None]``. Everything else has a default: the
options come from the class's ``Options`` model, else from its constructor's (or the function's) keyword
parameters, checked like any config; the declaration, summary and description from what the object has.
`external_judge` wraps the object into a judge class of the registry, which checks every answer: a wrong count is
one error naming the judge and the candidate; NaN, infinity, a string, an exception or no answer within
``timeout_s`` is a flagged judgement (score None), never a number made up.
"""

from __future__ import annotations

import inspect
import math
import numbers
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from pydantic import BaseModel, Field, create_model

from bon.core.errors import BonError
from bon.core.protocol import Declaration, JudgeClass
from bon.core.records import Candidate, Judgement, Prompt
from bon.core.strict import Strict

TIMEOUT_FIELD = "timeout_s"  # bon's own option on every external judge
_PASSED = ("prompts", "completions", "references", "prompt_ids")  # what bon passes a reward function; not options


class ExternalJudgeError(BonError, RuntimeError):
    """A judge from outside bon cannot be built or broke its contract; the message names the judge."""


def _kind(key: str, target: Any) -> str:
    if inspect.isclass(target):
        if not callable(getattr(target, "score", None)):
            raise ExternalJudgeError(f"judge {key!r}: class {target.__qualname__} has no score(prompts, candidates)")
        return "class"
    if callable(target):
        return "function"
    raise ExternalJudgeError(f"judge {key!r}: {target!r} is neither a judge class nor a reward function")


def _parameters(key: str, target: Any, kind: str) -> dict[str, Any]:
    """The option fields a class's constructor or a function takes by keyword (name -> (type, default))."""
    signature = inspect.signature(target.__init__ if kind == "class" else target)
    fields: dict[str, Any] = {}
    for p in list(signature.parameters.values())[1 if kind == "class" else 0 :]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in _PASSED:
            continue
        annotation = Any if p.annotation is p.empty or isinstance(p.annotation, str) else p.annotation
        if p.default is p.empty and kind == "function":
            raise ExternalJudgeError(
                f"judge {key!r}: reward function parameter {p.name!r} has no default; bon passes only prompts, "
                "completions and the options you set"
            )
        fields[p.name] = (annotation, ... if p.default is p.empty else p.default)
    return fields


def _options_model(key: str, target: Any, kind: str) -> type[BaseModel]:
    """The judge's options: its own ``Options`` model, or one made from its keyword parameters; with bon's
    ``timeout_s`` added either way."""
    fields: dict[str, Any] = {
        TIMEOUT_FIELD: (float | None, Field(None, gt=0, description="seconds a call may take; past it: flagged"))
    }
    own = getattr(target, "Options", None)
    if inspect.isclass(own) and issubclass(own, BaseModel):
        return create_model(f"{own.__name__}WithTimeout", __base__=own, **fields)
    fields = {**_parameters(key, target, kind), **fields}
    return create_model(f"{getattr(target, '__name__', 'External')}Options", __base__=Strict, **fields)


def _summary(target: Any, kind: str) -> str:
    said = getattr(target, "summary", None)
    if isinstance(said, str) and said:
        return said
    doc = inspect.getdoc(target) or ""
    first = doc.strip().splitlines()[0] if doc.strip() else ""
    what = "reward function" if kind == "function" else "judge class"
    return first or f"a user's {what} ({target.__module__}.{target.__qualname__})"


def _call(fn: Callable[[], Any], timeout: float | None) -> Any:
    """``fn()``, or TimeoutError after ``timeout`` seconds (the call's thread is left to finish on its own: Python
    cannot stop it; it is a daemon, so it never keeps the process alive)."""
    if timeout is None:
        return fn()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    worker = threading.Thread(target=run, daemon=True, name="bon-external-judge")
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError(f"no answer within timeout_s {timeout:g}")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _judgement(key: str, c: Candidate, value: Any) -> Judgement:
    """One returned value as a judgement of ``c``: a number, None, or a `Judgement` of that candidate."""
    if isinstance(value, Judgement):
        if (value.prompt_id, value.candidate_index) != (c.prompt_id, c.index):
            raise ExternalJudgeError(
                f"judge {key!r} returned a judgement of ({value.prompt_id!r}, {value.candidate_index}) in the place of "
                f"candidate ({c.prompt_id!r}, {c.index}); return one per candidate, in the candidates' order"
            )
        return replace(value, judge=key)
    if value is None:
        return Judgement(c.prompt_id, c.index, key, None, flag="the judge returned None (no score)")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        shown = repr(value) if len(repr(value)) < 40 else repr(value)[:37] + "..."
        return Judgement(
            c.prompt_id, c.index, key, None, flag=f"the judge returned {shown} ({type(value).__name__}), not a number"
        )
    score = float(value)
    if not math.isfinite(score):
        return Judgement(c.prompt_id, c.index, key, None, flag=f"the judge returned a non-finite score {score}")
    return Judgement(c.prompt_id, c.index, key, score)


def external_judge(key: str, target: Any) -> JudgeClass:
    """A judge class of the registry around a user's class or reward function ``target``, named ``key``."""
    kind = _kind(key, target)
    options_model = _options_model(key, target, kind)
    declared = getattr(target, "declaration", None)
    declared_as = declared if isinstance(declared, Declaration) else Declaration(scale="the judge's own score")
    own_options = getattr(target, "Options", None)
    if kind == "function":  # TRL passes prompts and completions; the rest only where the function takes them
        params = inspect.signature(target).parameters
        takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
        extras = [name for name in _PASSED[2:] if takes_all or name in params]

    class ExternalJudge:
        Options = options_model
        declaration = declared_as
        summary = _summary(target, kind)
        needs_reference = bool(getattr(target, "needs_reference", False))
        hub_id = getattr(target, "hub_id", None)

        def __init__(self, options: BaseModel | None = None):
            self.name = key
            self.options = options if options is not None else options_model()
            self.timeout = getattr(self.options, TIMEOUT_FIELD)
            mine = self.options.model_dump(exclude={TIMEOUT_FIELD})
            self._kwargs = mine
            if kind == "class":
                try:
                    built = own_options(**mine) if inspect.isclass(own_options) else None
                    self._impl = target(built) if built is not None else target(**mine)
                except Exception as e:
                    raise ExternalJudgeError(f"judge {key!r} could not be built: {type(e).__name__}: {e}") from None

        def describe(self) -> str:
            said = getattr(self._impl, "describe", None) if kind == "class" else None
            text = said() if callable(said) else None
            return text if isinstance(text, str) and text else f"{key} ({self.summary})"

        def score(self, prompts: Sequence[Prompt], candidates: Sequence[Candidate]) -> list[Judgement]:
            if not candidates:
                return []
            try:
                values = _call(lambda: self._run(prompts, candidates), self.timeout)
            except Exception as e:  # the judge's own failure: every candidate of the batch flagged, none scored
                why = str(e) if isinstance(e, TimeoutError) else f"the judge raised {type(e).__name__}: {e}"
                return [Judgement(c.prompt_id, c.index, key, None, flag=why[:300]) for c in candidates]
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
                values = list(values) if hasattr(values, "__iter__") and not isinstance(values, (str, bytes)) else None
            if values is None or len(values) != len(candidates):
                got = "no list" if values is None else f"{len(values)} scores"
                c = candidates[0]
                raise ExternalJudgeError(
                    f"judge {key!r} returned {got} for {len(candidates)} candidates (from candidate "
                    f"({c.prompt_id!r}, {c.index})); it must return one score per candidate, in order"
                )
            return [_judgement(key, c, v) for c, v in zip(candidates, values)]

        def _run(self, prompts: Sequence[Prompt], candidates: Sequence[Candidate]) -> Any:
            if kind == "class":
                return self._impl.score(prompts, candidates)
            by_id = {p.id: p for p in prompts}
            passed = {
                "references": [by_id[c.prompt_id].reference for c in candidates],
                "prompt_ids": [c.prompt_id for c in candidates],
            }
            return target(
                prompts=[by_id[c.prompt_id].instruction for c in candidates],
                completions=[c.text for c in candidates],
                **{name: passed[name] for name in extras},
                **self._kwargs,
            )

    ExternalJudge.__name__ = ExternalJudge.__qualname__ = f"External[{key}]"
    made: JudgeClass = ExternalJudge  # mypy checks the wrapper against what the registry promises
    return made
