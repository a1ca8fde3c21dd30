"""bon: best-of-N sampling with judges.

The public API (everything else is private by name or by module): ``bon.load_config`` / ``bon.RunConfig`` make a
config, ``bon.run`` runs (or resumes) it and returns a ``bon.Run``, which reads, judges, selects and exports a run
directory; ``bon.BestOfN`` does best-of-N in memory (in a training loop), one ``bon.Outcome`` per prompt;
``bon.load_model`` loads a model bon names as a transformers model of your own. Records:
``Prompt``, ``Candidate``, ``Judgement``, ``Selection``. Errors a user's input causes derive from ``bon.BonError``.
Protocols for objects of your own: ``Judge`` (with its ``Declaration``) and ``Policy``.
Importing bon loads nothing heavy: each name is imported when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "load_config": "bon.api",
    "load_model": "bon.api",
    "run": "bon.api",
    "Run": "bon.api",
    "RunConfig": "bon.core.config",
    "BestOfN": "bon.best_of_n",
    "Outcome": "bon.best_of_n",
    "Prompt": "bon.core.records",
    "Candidate": "bon.core.records",
    "Judgement": "bon.core.records",
    "Selection": "bon.core.records",
    "BonError": "bon.core.errors",
    "Judge": "bon.core.protocol",
    "Declaration": "bon.core.protocol",
    "Policy": "bon.pipeline.policy",
    "ConfigError": "bon.core.errors",
}
__all__ = [
    "BestOfN",
    "BonError",
    "Candidate",
    "ConfigError",
    "Declaration",
    "Judge",
    "Judgement",
    "Outcome",
    "Policy",
    "Prompt",
    "Run",
    "RunConfig",
    "Selection",
    "load_config",
    "load_model",
    "run",
]

if TYPE_CHECKING:
    from bon.api import Run, load_config, load_model, run
    from bon.best_of_n import BestOfN, Outcome
    from bon.core.config import RunConfig
    from bon.core.errors import BonError, ConfigError
    from bon.core.protocol import Declaration, Judge
    from bon.core.records import Candidate, Judgement, Prompt, Selection
    from bon.pipeline.policy import Policy


def __getattr__(name: str) -> Any:
    """A public name, imported on first use (PEP 562)."""
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'bon' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
