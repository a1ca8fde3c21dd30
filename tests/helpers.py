"""Helpers the test modules share: the `bon` command (in this process, or as a subprocess where that is the point)
and what a clear refusal looks like."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
BON = [sys.executable, "-m", "bon"]
WIDE = {"COLUMNS": "200"}  # rich folds table cells to the terminal width


def bon(*args: str, env_extra: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    """`bon ARGS` in this process, as the console script runs it (`bon.cli.app`): exit code, stdout, stderr.

    Models loaded by earlier calls stay loaded (one process), so this is for what a command says and writes;
    `bon_process` is for what only a process shows (start-up time, imports, signals)."""
    from bon.cli import app, common

    out, err = io.StringIO(), io.StringIO()
    env = {**WIDE, **(env_extra or {})}
    widths = [(c, c.width) for c in (common.console, common.err_console)]
    for console, _ in widths:  # a process reads COLUMNS when it starts; these consoles were made once, here
        console.width = int(env["COLUMNS"])
    argv, sys.argv = sys.argv, ["bon", *args]  # what the command reads of its own invocation (resume hints)
    with (
        mock.patch.dict(os.environ, env),
        _cwd(kw.pop("cwd", Path.cwd())),  # the tests run from a stand-in of the checkout (conftest)
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            app(args=list(args), prog_name="bon")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
            if isinstance(e.code, str):
                err.write(e.code + "\n")
        except BaseException:  # what escaped the app boundary: a traceback, as a process would print
            err.write(traceback.format_exc())
            code = 1
        finally:
            sys.argv = argv
            for console, width in widths:
                console.width = width
    return subprocess.CompletedProcess(["bon", *args], code, out.getvalue(), err.getvalue())


def bon_process(*args: str, env_extra: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    """`bon ARGS` as a new process (the console script's interpreter)."""
    env = {**os.environ, **WIDE, **(env_extra or {})}
    return subprocess.run([*BON, *args], capture_output=True, text=True, timeout=kw.pop("timeout", 600), env=env, **kw)


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def contents(folder: Path) -> dict[str, bytes]:
    """Every file's bytes (the lock file, which holds the last holder's pid, aside)."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != ".lock"}


def one_clear_line(out: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2, no traceback, and every needle in stderr (rich may wrap the line)."""
    text = " ".join(out.stderr.split())
    assert out.returncode == 2, (out.returncode, out.stdout[-400:], out.stderr[-800:])
    assert "Traceback" not in out.stderr
    for needle in needles:
        assert needle in text, (needle, text)


EOS = 2  # the tiny models' end-of-sequence id


def tiny_engine(arch: str = "llama", **config):
    """An `HFModel` over a 2-layer Llama (or Mistral) with a 64-token vocabulary (``config`` overrides its sizes)."""
    import torch
    import transformers

    from bon.engines.hf import HFModel

    family = {"llama": "Llama", "mistral": "Mistral"}[arch]
    sizes = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    cfg = getattr(transformers, f"{family}Config")(
        **{**sizes, "num_key_value_heads": 2, "max_position_embeddings": 2048, **config}
    )
    torch.manual_seed(0)
    tokenizer = SimpleNamespace(
        decode=lambda ids, skip_special_tokens=True: " ".join(map(str, ids)), eos_token_id=EOS, pad_token_id=0
    )
    model = getattr(transformers, f"{family}ForCausalLM")(cfg).eval()
    return HFModel.from_loaded(model, tokenizer, f"tiny-{arch}")


def prompts_of_random_tokens(k: int) -> list[list[int]]:
    """``k`` prompts of 4 to 23 tokens drawn from the tiny vocabulary (seeded)."""
    import torch

    g = torch.Generator().manual_seed(1)
    return [
        torch.randint(3, 64, (int(torch.randint(4, 24, (1,), generator=g)),), generator=g).tolist() for _ in range(k)
    ]


def plain_loop_text(engine, ids: list[int], seed: int, index: int, settings) -> str:
    """The oracle of the sampler's determinism contract: candidate ``index`` of a prompt sampled with ``seed`` by a
    plain loop that recomputes the whole sequence for it alone, with the same uniforms of its own seed."""
    import torch

    from bon.engines.contract import derive_seed
    from bon.engines.sampling import pick

    u = torch.rand(
        settings.max_tokens, generator=torch.Generator().manual_seed(derive_seed(seed, index)), dtype=torch.float64
    )
    seq, out = list(ids), []
    with torch.no_grad():
        for step in range(settings.max_tokens):
            logits = engine.model(torch.tensor([seq])).logits[:, -1].float()
            t = int(pick(logits, u[step : step + 1], settings)[0])
            if t in engine.eos_ids:
                break
            out.append(t)
            seq.append(t)
    return engine.tokenizer.decode(out, skip_special_tokens=True)


@contextlib.contextmanager
def tokens_run(model) -> Iterator[list[int]]:
    """The tokens each forward pass of ``model`` runs inside the block (padding and a cached prefix left out)."""
    ran: list[int] = []

    def count(module, args, kw) -> None:
        ids, mask = kw["input_ids"], kw["attention_mask"]
        # a decode step of the slot cache passes a 4-D mask over its ring: each row runs its one new token
        ran.append(int(mask[:, -ids.shape[1] :].sum()) if mask.dim() == 2 else ids.numel())

    hook = model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        yield ran
    finally:
        hook.remove()


OUTSIDE = '''"""Judges of a package outside bon, as a user writes them."""

import time


class WordJudge:
    """More words, higher score."""

    def __init__(self, bonus: float = 0.0):
        self.bonus = bonus

    def score(self, prompts, candidates):
        return [len(c.text.split()) + self.bonus for c in candidates]


def word_count(prompts, completions, **kwargs):
    """A GRPO reward function, as written for TRL."""
    return [float(len(c.split())) for c in completions]


def with_reference(prompts, completions, references, scale: float = 1.0):
    return [scale * float(r is not None and r.split()[0] in c) for c, r in zip(completions, references)]


def one_short(prompts, completions, **kwargs):
    return [1.0] * (len(completions) - 1)


def words_as_text(prompts, completions, **kwargs):
    return ["high"] * len(completions)


def not_a_number(prompts, completions, **kwargs):
    return [float("nan"), float("inf")] + [None] * (len(completions) - 2)


def raises(prompts, completions, **kwargs):
    raise RuntimeError("reward server down")


def hangs(prompts, completions, **kwargs):
    time.sleep(30)
    return [0.0] * len(completions)


from pydantic import BaseModel, ConfigDict  # noqa: E402

from bon.core.judging import Declaration  # noqa: E402
from bon.core.records import Judgement  # noqa: E402


class DeclaredJudge:
    """A judge written to bon's full protocol: its own Options model and declaration, Judgement records."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        target: int = 10

    declaration = Declaration(scale="closeness to a target length", conversation="answer")
    needs_reference = False

    def __init__(self, options):
        self.target = options.target

    def describe(self):
        return f"closeness to {self.target} characters"

    def score(self, prompts, candidates):
        return [Judgement(c.prompt_id, c.index, "anything", -abs(len(c.text) - self.target)) for c in candidates]
'''


def outside_package(folder: Path) -> Path:
    """A package of judges outside bon, `wordjudges`, in ``folder`` with its own pyproject.toml and, beside it on
    the path, the dist-info an install would write (entry points in the group bon.judges: one good, one broken).
    Returns the folder to put on sys.path."""
    pkg = folder / "wordjudges"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(OUTSIDE)
    (folder / "pyproject.toml").write_text(
        '[project]\nname = "wordjudges"\nversion = "0.1"\n\n'
        '[project.entry-points."bon.judges"]\nwords = "wordjudges:WordJudge"\nbroken = "wordjudges_gone:Judge"\n'
    )
    info = folder / "wordjudges-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wordjudges\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[bon.judges]\nwords = wordjudges:WordJudge\nbroken = wordjudges_gone:Judge\n"
    )
    (info / "RECORD").write_text("")
    return folder
