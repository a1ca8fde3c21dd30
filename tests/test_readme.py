"""The README's commands run as written: every ```bash block is marked, and the runnable ones are run.

A block is preceded by ``<!-- readme-test: run -->`` (``run, needs ../shared`` when a config it names reads the
shared data) or ``<!-- readme-test: skip: WHY -->``. Runnable blocks run in README order in one temporary clone
(symlinks to this checkout, ``../shared`` beside it) in which the README's first command has already made its
demo run, as in a user's checkout. Each command must exit 0 (or the ``exit N`` its comment states) and print
what its comment promises (``prints "..."``).
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

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SHARED = ROOT.parent / "shared"
MARK = re.compile(r"^<!-- readme-test: (run(, needs \.\./shared)?|skip: (.+)) -->$")
ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=\S*(\s+#.*)?$")  # a line that only assigns (a command may start with one)
PRINTS = re.compile(r'prints "((?:[^"\\]|\\.)*)"')
DEMO = ".venv/bin/bon run configs/demo.yaml"  # the README's command 1, after its setup
RUN_DIR = re.compile(r"\bruns/[A-Za-z0-9_.-]+")


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
    line: int
    skip: str | None  # why it is not run here; None: run it
    needs_shared: bool = False  # its commands read ../shared/data, named or through a config
    commands: list[Command] = field(default_factory=list)


def read_blocks(text: str) -> list[Block]:
    """Every ```bash block of ``text`` with its marker; an unmarked block is an error naming its line."""
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != "```bash":
            continue
        marker = MARK.match(lines[i - 1].strip()) if i else None
        if marker is None:
            raise AssertionError(f"README.md:{i + 1}: a bash block without a readme-test marker on the line above")
        block = Block(i + 1, marker.group(3), needs_shared=marker.group(2) is not None)
        env: list[str] = []
        j, pending, start = i + 1, "", 0
        while lines[j].strip() != "```":
            text_line = lines[j]
            if not pending and (not text_line.strip() or text_line.lstrip().startswith("#")):
                j += 1
                continue
            start = start or j + 1
            pending += text_line + "\n"
            if not text_line.rstrip().endswith("\\"):
                if ASSIGN.match(pending):
                    env.append(pending.strip())
                else:
                    block.commands.append(Command(start, pending.rstrip(), list(env)))
                pending, start = "", 0
            j += 1
        blocks.append(block)
    return blocks


BLOCKS = read_blocks(README.read_text(encoding="utf-8"))


def groups(blocks: list[Block]) -> list[str]:
    """A test-worker group per block (pytest-xdist ``--dist loadgroup``), so that a block runs after the blocks
    whose runs it reads, on the same worker: the blocks naming `runs/demo` share a group (some add judges to
    it that later ones read), a block naming a run directory an earlier block wrote joins that block's group,
    and a block that starts Ray joins the ray tests' group (one local Ray instance at a time)."""
    maker: dict[str, str] = {"runs/demo": "readme-demo"}
    out = []
    for b in blocks:
        text = " ".join(c.text for c in b.commands)
        dirs = list(dict.fromkeys(RUN_DIR.findall(text)))
        group = "ray" if "engine=ray" in text else next((maker[d] for d in dirs if d in maker), f"readme{b.line}")
        for d in dirs:
            maker.setdefault(d, group)
        out.append(group)
    return out


def test_every_bash_block_is_marked_and_the_parser_reads_commands_and_promises():
    assert len(BLOCKS) >= 10 and any(b.skip is None for b in BLOCKS)
    text = '<!-- readme-test: run -->\n```bash\nX=1  # a\ncmd a \\\n  --b  # exit 1, prints "q \\"r\\""\n```\n'
    [block] = read_blocks(text)
    [cmd] = block.commands
    assert (cmd.line, cmd.env, cmd.exit_code, cmd.prints) == (4, ["X=1  # a"], 1, ['q "r"'])
    with pytest.raises(AssertionError, match="README.md:1: a bash block without a readme-test marker"):
        read_blocks("```bash\nls\n```\n")


def test_a_block_reading_an_earlier_blocks_run_shares_its_worker_and_ray_blocks_share_the_ray_group():
    block = "<!-- readme-test: run -->\n```bash\n{}\n```\n"
    cmds = [
        "bon run c --set output_dir=runs/a",
        "bon view runs/demo",
        "bon eval gain runs/a/x",
        "bon run --set engine=ray",
    ]
    assert groups(read_blocks("".join(block.format(c) for c in cmds))) == ["readme2", "readme-demo", "readme2", "ray"]
    assert groups(read_blocks(block.format("bon judge runs/demo") * 2)) == ["readme-demo"] * 2


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
    [pytest.param(b, marks=pytest.mark.xdist_group(g), id=f"line{b.line}") for b, g in zip(BLOCKS, groups(BLOCKS))],
)
def test_readme_block(block: Block, clone: Path):
    if block.skip is not None:
        pytest.skip(f"README.md:{block.line}: {block.skip}")
    for cmd in block.commands:
        if (block.needs_shared or "../shared" in cmd.text + " ".join(cmd.env)) and not SHARED.exists():
            pytest.skip(f"README.md:{cmd.line}: needs ../shared/data")
        out = shell(clone, "\n".join([*cmd.env, cmd.text]))
        said = " ".join((out.stdout + out.stderr).split())
        assert out.returncode == cmd.exit_code, (
            f"README.md:{cmd.line}: {cmd.text}\nexit {out.returncode}\n{said[-3000:]}"
        )
        assert "Traceback" not in out.stderr, f"README.md:{cmd.line}: {out.stderr[-3000:]}"
        for promise in cmd.prints:
            assert promise in said, f"README.md:{cmd.line}: {promise!r} not printed:\n{said[-3000:]}"
