"""Statistics over the real tokens of right-padded batches, and running moments of scores.

Shapes: B = sequences, T = tokens; `mask` [B, T] is 1 on real tokens, 0 on padding.
`reduce`, where a function takes one, sums a tensor across processes (e.g.
`lambda t: accelerator.reduce(t, "sum")`), so a statistic covers the global batch.
"""

from __future__ import annotations

from typing import Callable

import torch

Reduce = Callable[[torch.Tensor], torch.Tensor] | None


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of x over the positions where mask is 1 (all of them, or along `dim`)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over the positions where mask is 1 (all of them, or along `dim`)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of x over the masked positions (Bessel-corrected when `unbiased`)."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_moments(x: torch.Tensor, mask: torch.Tensor, reduce: Reduce = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, unbiased variance) of x over the masked positions, in one pass of sums that `reduce`
    can add up across processes (the global batch's statistics on every process)."""
    m = mask.to(x.dtype)
    sums = torch.stack([(x * m).sum(), (x * x * m).sum(), m.sum()])
    if reduce is not None:
        sums = reduce(sums)
    n = sums[2].clamp(min=1)
    mean = sums[0] / n
    var = (sums[1] / n - mean**2).clamp(min=0) * (n / (n - 1) if n > 1 else 1.0)
    return mean, var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
                  reduce: Reduce = None) -> torch.Tensor:
    """(x - mean) / std over the masked positions (of every process, with `reduce`); padding comes out 0.

    x, mask: [B, T]. With `shift_mean=False` the mean is added back (scale only).
    """
    mean, var = masked_moments(x, mask, reduce)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(out.dtype)


class RunningMoments:
    """Running mean and std of scores across batches (Chan et al. parallel update)."""

    def __init__(self):
        self.mean, self.var, self.count = 0.0, 1.0, 1e-24

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double().flatten()
        n = x.numel()
        if n == 0:
            return
        b_mean, b_var = x.mean().item(), x.var(unbiased=False).item()
        delta, total = b_mean - self.mean, self.count + n
        m2 = self.var * self.count + b_var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var, self.count = m2 / total, total

    @property
    def std(self) -> float:
        return max(self.var, 0.0) ** 0.5

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]
