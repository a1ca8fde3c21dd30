"""bon: best-of-N sampling with judges.

The public API (everything else is private by name or by module): ``bon.load_config`` / ``bon.RunConfig`` make a
config, ``bon.run`` runs (or resumes) it and returns a ``bon.Run``, which reads, judges, selects and exports a run
directory. Records: ``Prompt``, ``Candidate``, ``Judgement``, ``Selection``. Errors a user's input causes derive from
``bon.BonError``. Importing bon loads nothing heavy: each name is imported when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "load_config": "bon.api",
    "run": "bon.api",
    "Run": "bon.api",
    "RunConfig": "bon.core.config",
    "Prompt": "bon.core.records",
    "Candidate": "bon.core.records",
    "Judgement": "bon.core.records",
    "Selection": "bon.core.records",
    "BonError": "bon.core.errors",
    "ConfigError": "bon.core.errors",
}
__all__ = [
    "BonError",
    "Candidate",
    "ConfigError",
    "Judgement",
    "Prompt",
    "Run",
    "RunConfig",
    "Selection",
    "load_config",
    "run",
]

if TYPE_CHECKING:
    from bon.api import Run, load_config, run
    from bon.core.config import RunConfig
    from bon.core.errors import BonError, ConfigError
    from bon.core.records import Candidate, Judgement, Prompt, Selection


def __getattr__(name: str) -> Any:
    """A public name, imported on first use (PEP 562)."""
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'bon' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
