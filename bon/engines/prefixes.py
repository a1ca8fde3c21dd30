"""Which scoring sequences share a prefix worth prefilling once (the transformers engine's prefix cache).

Pure Python over token ids, so the grouping is tested without a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MIN_SHARED_PREFIX = 32  # tokens; a shorter common prefix is not worth a separate prefill
WINDOW = 256  # sequences a found group may span: bounds the search at n x WINDOW steps


def common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """The number of leading tokens ``a`` and ``b`` share, at most ``limit``."""
    limit = min(limit, len(a), len(b))
    return next((k for k in range(limit) if a[k] != b[k]), limit)


def prefix_groups(
    seqs: Sequence[list[int]], groups: Sequence[Any] | None, limits: Sequence[int]
) -> list[tuple[list[int], int]]:
    """(indices, common prefix length) for each group of ``seqs`` whose common prefix is computed once; the
    prefix of sequence i is at most ``limits[i]`` tokens, fewer than it has (each keeps a token of its own). A
    group of one, or one sharing fewer than `MIN_SHARED_PREFIX` tokens, runs on its own.

    With ``groups`` (a key per sequence), consecutive sequences with one key form a group: a judge's N prompts for
    one instruction. Without, groups are found: vLLM's prefix caching finds shared prefixes by itself, and so
    does this engine (`found_groups`)."""
    assert all(limit < len(s) for s, limit in zip(seqs, limits)), "a prefix must leave each sequence a token"
    if groups is None:
        return found_groups(seqs, limits)
    runs, start = [], 0
    while start < len(seqs):
        end = start + 1
        while end < len(seqs) and groups[end] == groups[start]:
            end += 1
        shared = min(limits[start:end])
        for i in range(start + 1, end):
            shared = common_prefix(seqs[start], seqs[i], shared)
        runs.append((list(range(start, end)), shared))
        start = end
    return runs


def found_groups(seqs: Sequence[list[int]], limits: Sequence[int]) -> list[tuple[list[int], int]]:
    """Groups that save the most prefill: in lexicographic order, sequences sharing a prefix are neighbours, and a
    run of k neighbours whose common prefix is p tokens saves (k - 1) x p tokens at the cost of one more forward
    pass (counted as `MIN_SHARED_PREFIX` tokens). The best split into runs is a dynamic programme over that order.

    E.g. AlpacaEval's annotation prompts: one template, then an instruction and two answers; the prompts of one
    instruction with its baseline answer first share all but the model's answer."""
    order = sorted(range(len(seqs)), key=seqs.__getitem__)
    # lcp[j]: tokens order[j - 1] and order[j] share (a group's common prefix is the least over its neighbours)
    lcp = [0] + [common_prefix(seqs[a], seqs[b], min(limits[a], limits[b])) for a, b in zip(order, order[1:])]
    saved = [0] * (len(order) + 1)  # saved[j]: the most tokens saved over order[:j]
    start = list(range(len(order) + 1))  # start[j]: where the last group of that best split begins
    for j in range(1, len(order) + 1):
        saved[j], start[j] = saved[j - 1], j - 1  # order[j - 1] alone
        low = lcp[j - 1]
        for a in range(j - 2, max(-1, j - 1 - WINDOW), -1):
            low = min(low, lcp[a + 1])
            if low < MIN_SHARED_PREFIX:  # only falls further as the run grows
                break
            gain = saved[a] + (j - a - 1) * low - MIN_SHARED_PREFIX
            if gain > saved[j]:
                saved[j], start[j] = gain, a
    out, j = [], len(order)
    while j > 0:
        members = order[start[j] : j]
        shared = min(lcp[start[j] + 1 : j], default=0)
        out.append((sorted(members), shared))
        j = start[j]
    return out[::-1]
