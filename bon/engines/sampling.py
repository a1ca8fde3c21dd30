"""Sampling on tensors, shared by the wave sampler (`hf.HFModel.sample`) and continuous batching (`stream`).

Every candidate draws each token by inverse CDF at one uniform of its own generator, so its
randomness depends on its seed alone, whatever else is decoded beside it. `pick` runs on the
device its logits are on: only the uniforms go there and the chosen ids come back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bon.engines.contract import SamplingSettings


def uniforms(seeds: Sequence[int], steps: int) -> torch.Tensor:
    """(len(seeds), steps) float64 uniforms, row ``i`` from a generator seeded ``seeds[i]``."""
    return torch.stack(
        [torch.rand(steps, generator=torch.Generator().manual_seed(sd), dtype=torch.float64) for sd in seeds]
    )


def left_padded(prompts: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, position ids) of prompts left-padded to one width: each row's last token is at -1."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def pick(logits: torch.Tensor, u: torch.Tensor | None, s: SamplingSettings) -> torch.Tensor:
    """One token per row: greedy at temperature 0, else the inverse CDF of the nucleus at ``u`` (a uniform per row)."""
    if s.temperature == 0 or u is None:
        return logits.argmax(-1)
    probs = torch.softmax(logits / s.temperature, dim=-1)
    if s.top_p >= 1.0:
        return _inverse_cdf(probs, u)
    # The nucleus is a prefix of the sorted probabilities: where the top 256 already hold top_p of
    # the mass it lies inside them (a full vocabulary sort per step costs ~0.3 s for 160 rows).
    top, order = probs.topk(min(256, probs.shape[-1]), dim=-1)
    full = top.sum(-1) < s.top_p
    if full.any():
        rest, rest_order = probs[full].sort(dim=-1, descending=True)
        picked = torch.empty(len(probs), dtype=torch.long, device=probs.device)
        picked[~full] = _nucleus(top[~full], order[~full], u[~full], s.top_p)
        picked[full] = _nucleus(rest, rest_order, u[full], s.top_p)
        return picked
    return _nucleus(top, order, u, s.top_p)


def _nucleus(sorted_p: torch.Tensor, order: torch.Tensor, u: torch.Tensor, top_p: float) -> torch.Tensor:
    """Sample from descending probabilities cut to the smallest prefix reaching ``top_p``.

    The top token always stays.
    """
    sorted_p = sorted_p.clone()
    sorted_p[(sorted_p.cumsum(-1) - sorted_p) >= top_p] = 0.0
    return order.gather(-1, _inverse_cdf(sorted_p, u)[:, None])[:, 0]


def _inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The index where each row's cumulative (unnormalised) mass first exceeds ``u`` times its total."""
    cdf = probs.double().cumsum(-1)
    return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp(max=probs.shape[-1] - 1)[:, 0]
