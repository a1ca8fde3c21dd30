"""Shared fixtures: the real SmolLM2 loaded once per session, the shared data folder, fakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from bon.core.records import Candidate, Prompt

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


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
