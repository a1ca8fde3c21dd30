"""Which scoring sequences share a prefill: given group keys, or found by the engine (as vLLM's prefix cache does)."""

from __future__ import annotations

import random

import pytest

from bon.engines.prefixes import MIN_SHARED_PREFIX, WINDOW, common_prefix, found_groups, prefix_groups
from tests.helpers import tiny_engine, tokens_run

HEAD = list(range(100, 140))  # 40 tokens every sequence starts with (a template)


def _annotation_prompts(rng: random.Random) -> tuple[list[list[int]], dict[int, tuple[int, int]]]:
    """AlpacaEval-shaped prompts: the template, an instruction, two answers in either order; shuffled. Returns the
    prompts and, per prompt, (its instruction, its first answer)."""
    rows = []
    for q in range(4):
        instruction = [200 + q] * 30
        baseline = [300 + q] * 80
        for pick in range(3):
            answer = [400 + 10 * q + pick] * 20
            for first, second in ((baseline, answer), (answer, baseline)):
                rows.append((HEAD + instruction + first + second, (q, first[0])))
    rng.shuffle(rows)
    return [r for r, _ in rows], {i: key for i, (_, key) in enumerate(rows)}


def test_found_groups_put_the_prompts_of_one_instruction_and_baseline_answer_together():
    prompts, key = _annotation_prompts(random.Random(0))
    groups = found_groups(prompts, [len(p) - 1 for p in prompts])
    assert sorted(i for g, _ in groups for i in g) == list(range(len(prompts)))  # each prompt once
    for members, shared in groups:
        assert members == sorted(members)
        assert shared == min(common_prefix(prompts[members[0]], prompts[i], 10**9) for i in members)
        if len(members) > 1:
            assert shared >= MIN_SHARED_PREFIX
    # the three prompts of an instruction with its baseline first share template, instruction and baseline
    for q in range(4):
        baseline_first = sorted(i for i, k in key.items() if k == (q, 300 + q))
        assert (baseline_first, 40 + 30 + 80) in groups
    saved = sum((len(g) - 1) * s for g, s in groups)
    assert saved >= 4 * 2 * 150  # at least the baseline-first groups; the rest share the template and instruction


def test_found_groups_respect_each_sequences_limit_and_leave_unrelated_ones_alone():
    a = list(range(50))
    assert found_groups([a, a + [7], a + [8]], [40, 50, 50]) == [([0, 1, 2], 40)]  # the first may share 40 only
    assert found_groups([a, a + [7], a + [8]], [10, 50, 50]) == [([0], 0), ([1, 2], 50)]  # 10: not worth it
    unrelated = [[i] * 60 for i in range(5)]
    assert found_groups(unrelated, [59] * 5) == [([i], 0) for i in range(5)]
    assert found_groups([], []) == []
    short = [a[:20] + [i] for i in range(4)]  # 20 tokens in common: below the threshold
    assert all(len(g) == 1 for g, _ in found_groups(short, [20] * 4))


def test_keyed_groups_are_consecutive_runs_and_a_limit_must_leave_a_token():
    a = list(range(60))
    seqs = [a + [1], a + [2], a[:40] + [3], a + [4]]
    assert prefix_groups(seqs, ["x", "x", "x", "y"], [60, 60, 40, 60]) == [([0, 1, 2], 40), ([3], 60)]
    assert [g for g, _ in prefix_groups(seqs, range(4), [60, 60, 40, 60])] == [[0], [1], [2], [3]]  # no sharing
    with pytest.raises(AssertionError, match="leave each sequence a token"):
        prefix_groups([a], None, [60])


def test_a_long_run_of_shared_templates_is_searched_within_the_window():
    seqs = [HEAD + [i // 2] * 40 + [i] for i in range(3 * WINDOW)]  # pairs share 80 tokens, all share the 40
    groups = found_groups(seqs, [len(s) - 1 for s in seqs])
    assert sorted(i for g, _ in groups for i in g) == list(range(len(seqs)))
    worth = sum((len(g) - 1) * s - MIN_SHARED_PREFIX for g, s in groups if len(g) > 1)  # what the search maximises
    pairs = len(seqs) // 2 * (80 - MIN_SHARED_PREFIX)
    windows = 3 * ((WINDOW - 1) * 40 - MIN_SHARED_PREFIX)
    assert worth >= max(pairs, windows)


def test_the_engine_finds_shared_prefixes_without_keys_and_scores_as_each_prompt_alone():
    """The local AlpacaEval annotator gives prompts in alpaca-eval's order with no keys: each prompt scores as it
    does alone, and the tokens run are those of each group's prefix once plus every suffix."""
    engine = tiny_engine()
    rng = random.Random(1)
    prompts, _ = _annotation_prompts(rng)
    prompts = [[t % 61 + 3 for t in p] for p in prompts]  # into the tiny vocabulary, keeping which tokens are equal
    with tokens_run(engine.model) as ran:
        together = engine.next_token_logprobs(prompts, [1, 2, 3], batch_size=4)
    for p, got in zip(prompts, together):
        alone = engine.next_token_logprobs([p], [1, 2, 3], batch_size=1)[0]
        assert got == pytest.approx(alone, abs=1e-4)
    groups = found_groups(prompts, [len(p) - 1 for p in prompts])
    assert sum(ran) == sum(len(p) for p in prompts) - sum((len(g) - 1) * s for g, s in groups if len(g) > 1)
    assert sum(ran) < 0.6 * sum(len(p) for p in prompts)
