"""Language-modelling losses on per-token log-probs of target tokens."""

from __future__ import annotations

import torch

from rlhfkit.objectives.aggregation import LossScale, aggregate


def nll_loss(logprobs: torch.Tensor, mask: torch.Tensor, agg: str = "token-mean",
             scale: LossScale | None = None) -> torch.Tensor:
    """Negative log-likelihood of the target tokens: logprobs, mask [B, T] -> scalar (see `aggregation`)."""
    return aggregate(-logprobs, mask, agg, scale)


def sequence_logprobs(logprobs: torch.Tensor, mask: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Each sequence's summed (or, with `average`, mean) token log-prob: [B, T] -> [B]."""
    m = mask.to(logprobs.dtype)
    total = (logprobs * m).sum(-1)
    return total / m.sum(-1).clamp(min=1) if average else total
