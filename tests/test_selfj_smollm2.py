"""The real Self-J judge on the real SmolLM2: arithmetic checked against the model's raw logits."""

import pytest
import torch

from bon.core.records import Candidate, Prompt
from bon.engines.tokens import digit_token_ids
from bon.judges.selfj import SelfJOptions, SelfJudge

pytestmark = pytest.mark.slow

PROMPTS = [Prompt("m", "What is 2+2?", reference="4"), Prompt("c", "What is the capital of Italy?")]
CANDS = [
    Candidate("m", 0, "2+2 equals 4.", 0, 1, 1, "stop", "x"),
    Candidate("m", 1, "2+2 equals 5.", 0, 1, 1, "stop", "x"),
    Candidate(
        "c", 0, "Rome is the capital of Italy, famous for the Colosseum and its long history.", 0, 1, 1, "stop", "x"
    ),
]


def test_digit_ids_from_the_real_tokenizer(smollm2):
    ids = digit_token_ids(smollm2.tokenizer)
    assert len(set(ids)) == 10
    assert [smollm2.tokenizer.decode([i]) for i in ids] == list("0123456789")


@pytest.mark.parametrize("fmt", ["raw", "chat"])
def test_score_equals_expectation_over_raw_logits(smollm2, fmt):
    judge = SelfJudge(SelfJOptions(prompt_format=fmt, batch_size=2), engine=smollm2)
    out = judge.score(PROMPTS, CANDS)
    digits = digit_token_ids(smollm2.tokenizer)
    for c, j in zip(CANDS, out):
        text = judge.build_prompt(PROMPTS[0] if c.prompt_id == "m" else PROMPTS[1], c.text)
        ids = smollm2.text_ids(text) if fmt == "raw" else smollm2.chat_ids([{"role": "user", "content": text}])
        with torch.no_grad():  # one unpadded sequence, recomputed independently of the judge's batching
            logits = smollm2.model(torch.tensor([ids])).logits[0, -1].double()
        full = torch.softmax(logits, -1)
        p = full[digits]
        expected = float((p / p.sum() * torch.arange(10, dtype=torch.float64)).sum())
        assert j.score == pytest.approx(expected, abs=1e-4)
        assert sum(j.details["digit_probs"]) == pytest.approx(1.0, abs=1e-9)
        assert j.details["digit_mass"] == pytest.approx(float(p.sum()), rel=1e-3)
        assert j.details["prompt_format"] == fmt and j.details["judge_model"] == "SmolLM2-135M-Instruct"
    if fmt == "chat":  # measured, not assumed: the chat form puts a visible share of mass on digits
        assert all(j.details["digit_mass"] > 0.01 for j in out)
