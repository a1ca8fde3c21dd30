"""Shared fixtures: the real SmolLM2 loaded once per session, the shared data folder, fakes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bon.core.records import Candidate, Judgement, Prompt
from bon.judges.length import LengthJudge

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist each worker (and what it starts) gets its share of the cores as torch threads: two
    workers each spinning two threads on two cores is slower than one worker."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(workers))))


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start Ray, or vLLM, run on one worker, one after another (one local Ray instance at a time); grouped tests
    (the documentation's blocks and Ray: the longest chains) are handed out first, so the short ones fill the gaps at the
    end instead of one worker finishing a long chain alone."""
    for item in items:
        for engine in ("ray", "vllm"):  # one local Ray, one vLLM engine (a share of the RAM each) at a time
            if item.get_closest_marker(engine) and not item.get_closest_marker("xdist_group"):
                item.add_marker(pytest.mark.xdist_group(engine))
    items.sort(key=lambda item: item.get_closest_marker("xdist_group") is None)  # stable: order kept within each


def _state(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with its size and modification time: what a test must not change."""
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="session")
def checkout(tmp_path_factory) -> Path:
    """This checkout as the tests see it: a folder of links to each of its entries but `runs/` (``../shared``
    beside it), so a test that names `configs/demo.yaml` and its default `runs/demo` never meets the user's run
    (the README's command 1 makes one). At the end the real `runs/` must be as it was."""
    top = tmp_path_factory.mktemp("checkout")
    repo = top / "main"
    repo.mkdir()
    for entry in ROOT.iterdir():
        if entry.name != "runs":
            (repo / entry.name).symlink_to(entry)
    if (ROOT.parent / "shared").exists():
        (top / "shared").symlink_to(ROOT.parent / "shared")
    before = _state(ROOT / "runs")
    yield repo
    changed = sorted(set(before.items()) ^ set(_state(ROOT / "runs").items()))
    assert not changed, f"a test changed this checkout's runs/ (a user's runs): {changed[:5]}"


@pytest.fixture(autouse=True)
def _in_checkout(checkout: Path, monkeypatch) -> None:
    """Every test runs from `checkout` (the stand-in), not from this checkout."""
    monkeypatch.chdir(checkout)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared evaluation data not found at {SHARED_DATA} (only present beside a dev checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct on the transformers engine, loaded once for all tests."""
    from bon.core.config import ModelConfig
    from bon.engines.hf import load

    return load(ModelConfig())


class FakePolicy:
    """Deterministic candidates whose text length grows with the index; counts its calls."""

    name = "fake-policy"

    def __init__(self, fail_after_calls: int | None = None):
        self.calls = 0
        self.fail_after_calls = fail_after_calls

    def generate(self, prompts, n, seed):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt("simulated crash")
        self.calls += 1
        return [
            Candidate(
                p.id,
                i,
                f"{p.instruction} answer {i} " + "x" * ((i * 7 + sum(map(ord, p.id))) % 5),
                seed + i,
                3,
                i + 1,
                "stop",
                self.name,
            )
            for p in prompts
            for i in range(n)
        ]


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        "\n".join(
            f'{{"id": "q{i}", "instruction": "Question number {i}?", "reference": "Answer {i}."}}' for i in range(5)
        )
        + "\n"
    )
    return path


def finished_ae_run(tmp_path: Path, questions: list[str], *overrides: str):
    """A finished fake-policy run (length judge) over ``questions`` and a baseline file for them: (config, baseline path)."""
    import json

    from bon.core.config import load_config
    from bon.pipeline.runner import run

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": q}) + "\n" for q in questions))
    reference = tmp_path / "ref.json"
    reference.write_text(
        json.dumps([{"instruction": q, "output": "Baseline.", "generator": "base", "dataset": "t"} for q in questions])
    )
    cfg = load_config(
        None, [f"output_dir={tmp_path / 'run'}", f"prompts.source={prompts}", "n=2", "judge.name=length", *overrides]
    )
    run(cfg, policy=FakePolicy())
    return cfg, reference


def two_turn_source(folder: Path) -> Path:
    """A prompt file of two two-turn conversations (MT-Bench's format), for the engine tests of conversations."""
    import json

    rows = [
        {"question_id": i, "turns": [f"Name a {thing}.", "Why that one?"]} for i, thing in enumerate(("fruit", "city"))
    ]
    path = folder / "conv.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_prompts(k: int = 3) -> list[Prompt]:
    return [Prompt(f"q{i}", f"Question {i}?", "test") for i in range(k)]


PAIRS = [
    ("post_summarization", 0, "aaaa", "bb"),  # longer first wins: length right
    ("post_summarization", 1, "a", "bbbbbb"),  # longer second wins: right
    ("code_generation", 2, "aaa", "bbb"),  # equal length -> tie: right
    ("code_generation", 0, "a", "bbb"),  # length says 2: wrong
    ("chitchat", 2, "aaaaa", "b"),  # length says 1: wrong
]


@pytest.fixture
def pair_file(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        "".join(
            json.dumps({"scenario": s, "label": y, "prompt": f"q{i}", "response 1": a, "response 2": b}) + "\n"
            for i, (s, y, a, b) in enumerate(PAIRS)
        )
    )
    return path


def _annotations(outputs, prefs, model):
    return [
        {
            "instruction": f"instr {i}",
            "dataset": "d",
            "output_1": "base",
            "generator_1": "baseline",
            "output_2": o,
            "generator_2": model,
            "annotator": "a",
            "preference": p,
        }
        for i, (o, p) in enumerate(zip(outputs, prefs))
    ]


@pytest.fixture
def pool_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "pool"
    folder.mkdir()
    # three instructions, two models; model b is longer everywhere, wins twice
    (folder / "a.json").write_text(json.dumps(_annotations(["x", "yy", "z"], [2, 1, 1.5], "a")))
    (folder / "b.json").write_text(json.dumps(_annotations(["xxxx", "yyyy", "zzzz"], [1, 2, 2], "b")))
    return folder


@pytest.fixture
def finished(tmp_path, prompts_file):
    from bon.pipeline.runner import run

    cfg = run_config(tmp_path, prompts_file)  # five prompts, n=3, judged with `length`
    run(cfg, policy=FakePolicy())
    return cfg.output_dir


def tiny_checkpoint(folder: Path, hidden: int = 16) -> Path:
    """A complete 2-layer Llama checkpoint of width ``hidden`` with SmolLM2's tokenizer (bon prepare's copy)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from bon.core.config import ModelConfig
    from bon.engines.hf import prepare

    smol, _, _ = prepare(ModelConfig())
    cfg = LlamaConfig(
        vocab_size=49152, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(smol).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    """A complete 2-layer Llama checkpoint with SmolLM2's tokenizer."""
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "lm")


def run_config(tmp_path, prompts_file, *extra):
    from bon.core.config import load_config

    return load_config(
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            f"prompts.source={prompts_file}",
            "n=3",
            "batch_size=2",
            "judge.name=length",
            *extra,
        ],
    )


def compare_config(tmp_path, pair_file, pool_dir, judges=None, **extra):
    from bon.core.config import load_config
    from bon.eval.compare import CompareConfig

    data = {
        "output_dir": str(tmp_path / "cmp"),
        "bootstrap": 50,
        "judges": judges or [{"name": "length"}, {"name": "random"}],
        "benchmarks": [
            {"name": "pairs", "kind": "pairwise", "path": str(pair_file)},
            {"name": "pool", "kind": "pool", "path": str(pool_dir)},
        ],
        **extra,
    }
    path = tmp_path / "compare.yaml"
    path.write_text(json.dumps(data))
    return load_config(path, model=CompareConfig)


class BlindLength(LengthJudge):
    """The `length` judge failing every candidate, as a reference-based judge does when references are missing."""

    def score(self, prompts, candidates):
        return [Judgement(c.prompt_id, c.index, "length", None, flag="reference missing") for c in candidates]
