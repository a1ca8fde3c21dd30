"""Imports go one way: bon's core <- engines <- pipeline <- judges <- eval <- the CLI, with no cycle.

Every import counts, those inside functions too: a lazy import keeps start-up fast, it does not
make an upward dependency acceptable. `python tests/test_architecture.py` prints the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "bon": "bon",
    "judges": "bon.judges",
    "eval": "bon.eval",
}  # folder -> import name (bon/judges links judges/)
# (layer, module-name prefixes), lowest first; a module may import only its own layer and those below
LAYERS = (
    ("core", ("bon.core",)),
    ("engines", ("bon.engines",)),
    ("pipeline", ("bon.pipeline",)),
    ("judges", ("bon.judges",)),
    ("eval", ("bon.eval",)),
    ("api", ("bon.api", "bon.best_of_n")),
    ("cli", ("bon.cli", "bon.__main__")),
)


def modules() -> dict[str, Path]:
    out = {}
    for folder, name in PACKAGES.items():
        for f in sorted((ROOT / folder).rglob("*.py")):  # rglob does not enter bon/judges, a link
            parts = [name, *f.relative_to(ROOT / folder).with_suffix("").parts]
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def layer(module: str) -> int:
    if module == "bon":  # the package itself: the public API's names, each imported on first use
        return next(rank for rank, (name, _) in enumerate(LAYERS) if name == "api")
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Project modules each module imports (the deepest module each import names).

    The parent package that Python runs first (importing a.b runs a/__init__) is no chosen
    dependency and is left out: a package's __init__ may re-export its children.
    """

    def resolve(name: str) -> list[str]:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return [name] if name else []

    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                deps.update(resolve(t))
        deps.discard(name)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_upward_import():
    graph = imports(modules())
    upward = [
        f"{m} ({LAYERS[layer(m)][0]}) imports {t} ({LAYERS[layer(t)][0]})"
        for m in sorted(graph)
        for t in sorted(graph[m])
        if layer(t) > layer(m)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    assert cycles(imports(modules())) == []


def test_one_module_name_one_meaning():
    # engines/base.py beside judges/base.py, cli/training.py beside eval/training.py: a name read alone misleads
    names: dict[str, list[str]] = {}
    for module in modules():
        leaf = module.rpartition(".")[2]
        if leaf not in PACKAGES.values() and leaf not in ("bon", "__main__") and "." in module:
            names.setdefault(leaf, []).append(module)
    packages = {m for m, path in modules().items() if path.name == "__init__.py"}
    assert {leaf: ms for leaf, ms in names.items() if len([m for m in ms if m not in packages]) > 1} == {}


def test_the_checks_can_fail():
    # an upward edge and a cycle planted in a copy of the real graph are found
    graph = imports(modules())
    graph["bon.core.records"] = graph["bon.core.records"] | {"bon.judges.selfj"}
    assert layer("bon.judges.selfj") > layer("bon.core.records")
    graph["bon.judges.selfj"] = graph["bon.judges.selfj"] | {"bon.core.records"}
    assert any({"bon.core.records", "bon.judges.selfj"} <= set(c) for c in cycles(graph))


if __name__ == "__main__":  # the module graph's layers, one line each
    mods = modules()
    for rank, (name, _) in enumerate(LAYERS):
        members = sorted(m for m in mods if layer(m) == rank)
        print(f"{rank} {name} ({len(members)}): {', '.join(members)}")
