"""How a [B, T] matrix of per-token losses becomes one number (verl's `loss_agg_mode`).

- `token-mean`: sum over every real token / number of real tokens (PPO, DAPO);
- `seq-mean-token-mean`: each sequence's token mean, then the mean over sequences (GRPO);
- `seq-mean-token-sum`: each sequence's token sum, then the mean over sequences;
- `seq-mean-token-sum-norm`: token sums / (sequences x a constant horizon), the
  horizon being the maximum response length (Dr. GRPO: no length bias);
- `token-sum`: the plain sum, for loops that divide by a global count themselves.

Gradient accumulation and data parallelism split one optimisation step's batch into
pieces; a piece's loss is only the right share of the whole when it is divided by the
whole batch's denominators. `LossScale` carries them (count them once per step over
every process); without it, the piece's own are used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm", "token-sum")


@dataclass
class LossScale:
    """The denominators of one optimisation step: real tokens, sequences, and the horizon (max length)."""

    tokens: torch.Tensor | float
    sequences: torch.Tensor | float
    horizon: float = 1.0

    @classmethod
    def of(cls, mask: torch.Tensor, horizon: float | None = None) -> "LossScale":
        return cls(mask.to(torch.float32).sum().clamp(min=1), mask.shape[0], float(horizon or mask.shape[1]))


def aggregate(loss: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean", scale: LossScale | None = None) -> torch.Tensor:
    """One scalar from per-token `loss` [B, T] over `mask` [B, T] (see the module docstring)."""
    m = mask.to(loss.dtype)
    scale = scale or LossScale.of(mask)
    if mode == "token-mean":
        return (loss * m).sum() / scale.tokens
    if mode == "seq-mean-token-mean":
        return ((loss * m).sum(-1) / m.sum(-1).clamp(min=1)).sum() / scale.sequences
    if mode == "seq-mean-token-sum":
        return (loss * m).sum() / scale.sequences
    if mode == "token-sum":
        return (loss * m).sum()
    if mode == "seq-mean-token-sum-norm":
        return (loss * m).sum() / (scale.sequences * scale.horizon)
    raise ValueError(f"unknown loss aggregation {mode!r}; use one of {list(LOSS_AGG_MODES)}")
