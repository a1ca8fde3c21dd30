import math

import pytest

from bon.core.records import Candidate, Prompt
from bon.core.registry import Registry, UnknownNameError
from bon.judges import JUDGES, build_judge
from bon.judges.length import LengthJudge
from bon.judges.random_pick import RandomJudge
from bon.judges.selfj import SelfJOptions, SelfJudge, expected_score

P = [Prompt("a", "Add 2 and 2.", reference="4"), Prompt("b", "Name a colour.")]
C = [
    Candidate("a", 0, "4", 1, 5, 1, "stop", "x"),
    Candidate("a", 1, "It is four.", 2, 5, 4, "stop", "x"),
    Candidate("b", 0, "Blue, like the sky on a clear day.", 3, 5, 9, "stop", "x"),
]


def test_registry_suggests_and_lists():
    assert JUDGES.names() == sorted(
        [
            "autoj",
            "consistency",
            "cosine",
            "ensemble",
            "entropy",
            "length",
            "logprob",
            "mt_bench",
            "pairwise",
            "ppl",
            "random",
            "reward_model",
            "self_certainty",
            "self_eval",
            "selfj",
        ]
    )
    with pytest.raises(UnknownNameError, match=r"unknown judge 'lenght'\. Did you mean 'length'\?"):
        JUDGES.get("lenght")
    reg = Registry("thing", {"a": "json:dumps"})
    assert reg.get("a").__name__ == "dumps"


def test_length_scores_characters():
    out = LengthJudge().score(P, C)
    assert [j.score for j in out] == [1.0, 11.0, 34.0]
    assert [(j.prompt_id, j.candidate_index, j.judge) for j in out] == [
        ("a", 0, "length"),
        ("a", 1, "length"),
        ("b", 0, "length"),
    ]


def test_random_is_seeded_and_per_candidate():
    a = [j.score for j in build_judge("random", {"seed": 1}).score(P, C)]
    assert a == [j.score for j in RandomJudge(RandomJudge.Options(seed=1)).score(P, C)]
    assert a[1:] == [j.score for j in build_judge("random", {"seed": 1}).score(P, C[1:])]  # independent of batch
    assert a != [j.score for j in build_judge("random", {"seed": 2}).score(P, C)]
    assert all(0.0 <= s < 1.0 for s in a) and len(set(a)) == 3


def test_expected_score_arithmetic():
    digits = list(range(100, 110))
    lp = {100 + d: math.log(p) for d, p in enumerate([0.0, 0.0, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.2, 0.1]) if p}
    score, probs, mass = expected_score(lp, digits)
    assert mass == pytest.approx(0.4)
    assert score == pytest.approx((2 * 0.1 + 8 * 0.2 + 9 * 0.1) / 0.4)
    assert sum(p for p in probs if p is not None) == pytest.approx(1.0)
    assert probs[0] is None and probs[2] == pytest.approx(0.25)
    assert expected_score({5: -0.1}, digits) == (None, [None] * 10, 0.0)


def test_templates_are_the_self_j_repository_ones():
    judge = SelfJudge()
    w = "Please act as a precise judge and evaluate the quality of the answer to question. Rate the answer from 0 to 9, where a higher value means a better answer. Please refer to the reference answer to make your judgement. Respond with an integer between 0 and 9. \n\n[Question]\n{instruction}\n\n[Reference]\n{reference}\n\n[Answer]\n{input}"
    wo = "Please act as a precise judge and evaluate the quality of the answer to question. Rate the answer from 0 to 9, where a higher value means a better answer. Please respond with an integer between 0 and 9. \n\n[Question]\n{instruction}\n\n[Answer]\n{input}"
    assert judge.templates == {True: w, False: wo}
    assert judge.build_prompt(P[0], C[0].text) == w.format(instruction="Add 2 and 2.", reference="4", input="4")
    assert judge.build_prompt(P[1], C[2].text).endswith(
        "[Question]\nName a colour.\n\n[Answer]\nBlue, like the sky on a clear day."
    )
    never = SelfJudge(SelfJOptions(reference="never"))
    assert "[Reference]" not in never.build_prompt(P[0], C[0].text)
    with pytest.raises(ValueError, match="has no reference"):
        SelfJudge(SelfJOptions(reference="always")).build_prompt(P[1], C[2].text)
    assert "braces {x}" in judge.build_prompt(Prompt("z", "braces {x}"), C[0].text)


class DigitlessEngine:
    """An engine whose next-token distribution holds no digit (like a vLLM top-k without digits)."""

    name = "digitless"
    context = None

    class tokenizer:
        @staticmethod
        def encode(text, add_special_tokens=False):
            return [ord(ch) for ch in text]

        @staticmethod
        def decode(ids):
            return "".join(map(chr, ids))

    def text_ids(self, text):
        return [1, 2, 3]

    def next_token_logprobs(self, prompts, token_ids, batch_size=8, groups=None):
        return [{} for _ in prompts]


def test_no_digit_gives_none_and_flag_never_zero():
    out = SelfJudge(engine=DigitlessEngine()).score(P, C)
    assert all(j.score is None and "no digit" in j.flag for j in out)
    assert all(j.details["digit_mass"] == 0.0 for j in out)


def test_reference_always_flags_prompts_without_one():
    out = SelfJudge(SelfJOptions(reference="always"), engine=DigitlessEngine()).score(P, C)
    assert [j.flag for j in out] == ["no digit token among the judge's next-token probabilities"] * 2 + [
        "the prompt has no reference"
    ]
    assert all(j.score is None for j in out)


def test_describe_is_honest():
    assert "NOT the trained Self-J weights" in SelfJudge().describe()
    assert "NOT" not in SelfJudge(SelfJOptions(model="oceanpty/Self-J")).describe()
