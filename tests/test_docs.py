"""The documentation's code runs as written: every fenced block of README.md and of the site's pages (docs/, in
mkdocs.yml's order) is marked, and the runnable ones are run.

A block is preceded by ``<!-- doc-test: run -->`` (``run, needs ../shared`` when a config it names reads the
shared data) or ``<!-- doc-test: skip: WHY -->``. Runnable blocks run in order (README first, then the pages) in
one temporary clone (symlinks to this checkout, ``../shared`` beside it) in which the README's first command has
already made its demo run, as in a user's checkout: a ```bash block command by command, a ```python block whole,
by the clone's `.venv/bin/python`. Each must exit 0 (or the ``exit N`` its comment states) and print what its
comments promise (``prints "..."``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SHARED = ROOT.parent / "shared"
# run[, needs ../shared][, long]: long blocks (over a minute on 2 cores, reading no other block's run) are in the
# `long` tier that .ci/run runs after the test command
MARK = re.compile(r"^<!-- doc-test: (run(, needs \.\./shared)?(, long)?|skip: (.+)) -->$")
FENCE = re.compile(r"^```([A-Za-z0-9_+-]+)\s*$")  # a block with a language; bare ``` blocks are output, not code
RUNS = ("bash", "python")  # the languages a block may be run in
ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=\S*(\s+#.*)?$")  # a line that only assigns (a command may start with one)
PRINTS = re.compile(r'prints "((?:[^"\\]|\\.)*)"')
DEMO = ".venv/bin/bon run configs/demo.yaml"  # the README's command 1, after its setup
RUN_DIR = re.compile(r"\bruns/[A-Za-z0-9_.-]+")


def pages() -> list[Path]:
    """README.md, then the site's pages in the order of mkdocs.yml's nav."""

    def walk(nav: object) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        if isinstance(nav, list):
            return [p for item in nav for p in walk(item)]
        if isinstance(nav, dict):
            return [p for value in nav.values() for p in walk(value)]
        return []

    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]
    return [README, *(ROOT / "docs" / p for p in walk(nav))]


@dataclass
class Command:
    line: int
    text: str  # as written, continuation lines included; bash drops the trailing comment
    env: list[str]  # the block's assignments before it (AE=...)

    @property
    def exit_code(self) -> int:
        found = re.search(r"#.*\bexit (\d+)", self.text)
        return int(found.group(1)) if found else 0

    @property
    def prints(self) -> list[str]:
        return [m.replace('\\"', '"') for m in PRINTS.findall(self.text)]


@dataclass
class Block:
    page: str  # its file, relative to the checkout: README.md, docs/python.md
    line: int
    lang: str  # bash or python
    skip: str | None  # why it is not run here; None: run it
    needs_shared: bool = False  # its commands read ../shared/data, named or through a config
    long: bool = False  # over a minute: run in the `long` tier
    commands: list[Command] = field(default_factory=list)  # bash: one per command; python: the whole block

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def read_blocks(text: str, page: str = "README.md") -> list[Block]:
    """Every fenced block of ``text`` with a language, with its marker; an unmarked block, or a runnable one in a
    language that cannot run, is an error naming its line."""
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i].strip())
        if fence is None:
            i += 1 + _skip_bare(lines, i)
            continue
        lang = fence.group(1)
        marker = MARK.match(lines[i - 1].strip()) if i else None
        if marker is None:
            raise AssertionError(f"{page}:{i + 1}: a {lang} block without a doc-test marker on the line above")
        if marker.group(4) is None and lang not in RUNS:
            raise AssertionError(f"{page}:{i + 1}: a {lang} block marked run; only {', '.join(RUNS)} blocks run")
        block = Block(page, i + 1, lang, marker.group(4), marker.group(2) is not None, marker.group(3) is not None)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        body = lines[i + 1 : end]
        if lang == "python":
            block.commands.append(Command(i + 2, "\n".join(body), []))
        else:
            block.commands += _commands(body, i + 2)
        blocks.append(block)
        i = end + 1
    return blocks


def _skip_bare(lines: list[str], i: int) -> int:
    """Lines to skip past a bare ``` block starting at ``i`` (output, never run), else 0."""
    if lines[i].strip() != "```":
        return 0
    return next((j - i for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), 0)


def _commands(body: list[str], first: int) -> list[Command]:
    """A bash block's commands (continuation lines joined), each with the block's assignments before it."""
    out: list[Command] = []
    env: list[str] = []
    pending, start = "", 0
    for k, text_line in enumerate(body):
        if not pending and (not text_line.strip() or text_line.lstrip().startswith("#")):
            continue
        start = start or first + k
        pending += text_line + "\n"
        if not text_line.rstrip().endswith("\\"):
            if ASSIGN.match(pending):
                env.append(pending.strip())
            else:
                out.append(Command(start, pending.rstrip(), list(env)))
            pending, start = "", 0
    return out


BLOCKS = [b for path in pages() for b in read_blocks(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]


def groups(blocks: list[Block]) -> list[str]:
    """A test-worker group per block (pytest-xdist ``--dist loadgroup``), so that a block runs after the blocks
    whose runs it reads, on the same worker: the blocks naming `runs/demo` share a group (some add judges to
    it that later ones read), a block naming a run directory an earlier block wrote joins that block's group,
    and a block that starts Ray joins the ray tests' group (one local Ray instance at a time)."""
    maker: dict[str, str] = {"runs/demo": "doc-demo"}
    out = []
    for b in blocks:
        text = " ".join(c.text for c in b.commands)
        dirs = list(dict.fromkeys(RUN_DIR.findall(text)))
        own = f"doc-{b.page}:{b.line}"
        group = "ray" if "engine=ray" in text else next((maker[d] for d in dirs if d in maker), own)
        for d in dirs:
            maker.setdefault(d, group)
        out.append(group)
    return out


def test_every_block_is_marked_and_the_parser_reads_commands_and_promises():
    assert len(BLOCKS) >= 10 and any(b.skip is None for b in BLOCKS)
    assert {b.lang for b in BLOCKS if b.skip is None} == {"bash", "python"}
    assert len({b.page for b in BLOCKS}) >= 10  # README.md and the pages
    text = '<!-- doc-test: run -->\n```bash\nX=1  # a\ncmd a \\\n  --b  # exit 1, prints "q \\"r\\""\n```\n'
    [block] = read_blocks(text)
    [cmd] = block.commands
    assert (cmd.line, cmd.env, cmd.exit_code, cmd.prints) == (4, ["X=1  # a"], 1, ['q "r"'])
    [py] = read_blocks('<!-- doc-test: run -->\n```python\nimport bon\nprint(1)  # prints "1"\n```\n', "docs/x.md")
    assert (py.where, py.lang, py.commands[0].text, py.commands[0].prints) == (
        "docs/x.md:2",
        "python",
        'import bon\nprint(1)  # prints "1"',
        ["1"],
    )
    with pytest.raises(AssertionError, match="docs/y.md:1: a bash block without a doc-test marker"):
        read_blocks("```bash\nls\n```\n", "docs/y.md")
    with pytest.raises(AssertionError, match="README.md:2: a yaml block marked run"):
        read_blocks("<!-- doc-test: run -->\n```yaml\na: 1\n```\n")
    assert read_blocks("```\nUsage: bon run\n```\n") == []  # output, not code
    [long] = read_blocks("<!-- doc-test: run, needs ../shared, long -->\n```bash\nls\n```\n")
    assert (long.long, long.needs_shared, long.skip) == (True, True, None)


def test_a_long_block_shares_runs_only_with_long_blocks():
    # the `long` tier runs without the default tier's blocks: a long block's group (the blocks whose runs it
    # reads or that read its runs) must be long throughout
    for block, group in zip(BLOCKS, groups(BLOCKS)):
        if block.long:
            others = [b.where for b, g in zip(BLOCKS, groups(BLOCKS)) if g == group and not b.skip and not b.long]
            assert others == [], f"{block.where} is long but shares its runs with {others}"


def test_the_site_builds_strict_with_every_public_name_command_and_config_key(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)]
    out = subprocess.run(build, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    import bon
    from bon.core.config import RunConfig

    api = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    assert [n for n in bon.__all__ if f'id="bon.{n}"' not in api] == []
    cli = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    for command in ("bon run", "bon judge", "bon select", "bon eval gain", "bon export sft", "bon compare"):
        assert f"<code>{command}</code>" in cli
    assert "--decline-below &lt;float&gt;" in cli  # an option with its type, from the command itself
    config = (site / "reference" / "config" / "index.html").read_text(encoding="utf-8")
    assert [
        k for k in ("n", "seed", "policy.temperature", "selection.coverage") if f"<code>{k}</code>" not in config
    ] == []
    assert len(RunConfig.model_fields) > 10


def test_a_block_reading_an_earlier_blocks_run_shares_its_worker_and_ray_blocks_share_the_ray_group():
    block = "<!-- doc-test: run -->\n```bash\n{}\n```\n"
    cmds = [
        "bon run c --set output_dir=runs/a",
        "bon view runs/demo",
        "bon eval gain runs/a/x",
        "bon run --set engine=ray",
    ]
    assert groups(read_blocks("".join(block.format(c) for c in cmds))) == [
        "doc-README.md:2",
        "doc-demo",
        "doc-README.md:2",
        "ray",
    ]
    assert groups(read_blocks(block.format("bon judge runs/demo") * 2)) == ["doc-demo"] * 2


def script(block: Block, cmd: Command) -> str:
    """The shell script that runs ``cmd`` of ``block`` as a user would: a python block by the clone's python."""
    if block.lang == "python":
        return f".venv/bin/python - <<'DOC_BLOCK'\n{cmd.text}\nDOC_BLOCK"
    return "\n".join([*cmd.env, cmd.text])


def shell(clone: Path, script: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}  # offline, as this machine and CI are
    return subprocess.run(["bash", "-c", script], cwd=clone, capture_output=True, text=True, env=env, timeout=900)


def make_clone(top: Path) -> Path:
    """A checkout of symlinks in ``top``/repo with `.venv/bin/bon` and `.venv/bin/python` running this
    interpreter (``../shared`` beside it when this checkout has one); nothing is run yet."""
    repo = top / "repo"
    repo.mkdir()
    for name in ("bon", "judges", "eval", "configs", "scripts", "pyproject.toml"):
        (repo / name).symlink_to(ROOT / name)
    if SHARED.exists():
        (top / "shared").symlink_to(SHARED)
    shim = repo / ".venv" / "bin" / "bon"
    shim.parent.mkdir(parents=True)
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m bon "$@"\n')
    shim.chmod(0o755)
    python = shim.parent / "python"  # the README's `.venv/bin/python scripts/...`
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return repo


def demo_run(base: Path) -> Path:
    """The README's command 1 run once per test session, whichever worker asks first (the others wait for it):
    the `runs/demo` a user has in their checkout before they run the tests."""
    from filelock import FileLock

    top = base / "readme-command-1"
    with FileLock(str(base / "readme-command-1.lock")):
        if not (top / "done").exists():
            top.mkdir(exist_ok=True)
            repo = top / "repo" if (top / "repo").exists() else make_clone(top)
            shutil.rmtree(repo / "runs", ignore_errors=True)  # a worker that died mid-run left it half made
            assert DEMO in README.read_text(encoding="utf-8")
            demo = shell(repo, DEMO)
            assert demo.returncode == 0, demo.stderr[-2000:]
            (top / "done").touch()
    return top / "repo" / "runs" / "demo"


@pytest.fixture(scope="session")  # one per test worker, whatever other modules it runs between blocks
def clone(tmp_path_factory) -> Path:
    """`make_clone` with the README's command 1 already run in it (`runs/demo`, copied from `demo_run`), as a
    user's checkout is when they run the README's second command: every block runs after it."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the folder all workers share
    repo = make_clone(tmp_path_factory.mktemp("readme"))
    shutil.copytree(demo_run(shared), repo / "runs" / "demo", symlinks=True)
    return repo


@pytest.mark.slow
@pytest.mark.parametrize(
    "block",
    [
        pytest.param(b, marks=[pytest.mark.xdist_group(g), *([pytest.mark.long] if b.long else [])], id=b.where)
        for b, g in zip(BLOCKS, groups(BLOCKS))
    ],
)
def test_doc_block(block: Block, clone: Path):
    if block.skip is not None:
        pytest.skip(f"{block.where}: {block.skip}")
    for cmd in block.commands:
        where = f"{block.page}:{cmd.line}"
        if (block.needs_shared or "../shared" in cmd.text + " ".join(cmd.env)) and not SHARED.exists():
            pytest.skip(f"{where}: needs ../shared/data")
        out = shell(clone, script(block, cmd))
        said = " ".join((out.stdout + out.stderr).split())
        assert out.returncode == cmd.exit_code, f"{where}: {cmd.text}\nexit {out.returncode}\n{said[-3000:]}"
        assert "Traceback" not in out.stderr, f"{where}: {out.stderr[-3000:]}"
        for promise in cmd.prints:
            assert promise in said, f"{where}: {promise!r} not printed:\n{said[-3000:]}"
