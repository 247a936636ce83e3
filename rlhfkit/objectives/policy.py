"""Policy losses, chosen by name, and the critic's clipped value loss.

A policy loss takes log-probs (with grad), the rollout's old log-probs, advantages and
the mask, all [B, T], plus keyword settings, and returns (loss, stats). Register a new
one with `@register_policy_loss("name")`; it should accept and ignore settings it does
not use (`**_`), so every method can pass the same ones.
"""

from __future__ import annotations

import torch

from rlhfkit.objectives.aggregation import LossScale, aggregate
from rlhfkit.objectives.registry import Registry

POLICY_LOSSES = Registry("policy loss")
register_policy_loss = POLICY_LOSSES.register


def get_policy_loss(name: str):
    return POLICY_LOSSES.lookup(name)


@register_policy_loss("ppo")
def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, clip_low: float = 0.2, clip_high: float | None = None,
                        agg: str = "token-mean", scale: LossScale | None = None,
                        importance_sampling_level: str = "token", **_) -> tuple[torch.Tensor, dict]:
    """PPO's clipped surrogate per token, max(-A * ratio, -A * clamp(ratio, 1 - clip_low, 1 + clip_high)),
    aggregated by `agg` (see `aggregation`). `clip_high` defaults to `clip_low`; a larger one is
    DAPO's clip-higher. `importance_sampling_level="sequence"` uses one ratio per sequence, the geometric
    mean of its tokens' ratios (GSPO), on every token. Returns (loss, stats): clipfrac, approxkl
    (0.5 E[(log ratio)^2]), policykl, ratio.
    """
    clip_high = clip_low if clip_high is None else clip_high
    log_ratio = logprobs - old_logprobs
    if importance_sampling_level == "sequence":
        m = mask.to(log_ratio.dtype)
        weights = ((log_ratio * m).sum(-1) / m.sum(-1).clamp(min=1))[:, None].expand_as(log_ratio)
    elif importance_sampling_level == "token":
        weights = log_ratio
    else:
        raise ValueError(f"importance_sampling_level {importance_sampling_level!r}: use token or sequence")
    ratio = torch.exp(weights)
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = aggregate(torch.maximum(loss1, loss2), mask, agg, scale)
    with torch.no_grad():
        stats = {"clipfrac": aggregate((loss2 > loss1).to(logprobs.dtype), mask, "token-mean", scale),
                 "approxkl": aggregate(0.5 * log_ratio**2, mask, "token-mean", scale),
                 "policykl": aggregate(-log_ratio, mask, "token-mean", scale),
                 "ratio": aggregate(ratio, mask, "token-mean", scale)}
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float = 0.2, scale: LossScale | None = None) -> tuple[torch.Tensor, dict]:
    """Clipped value loss: 0.5 * token mean of max((V - R)^2, (clamp(V, V_old +- clip) - R)^2).

    values (with grad), old_values, returns, mask: [B, T]. Returns (loss, stats) with
    clipfrac and error (mean (V - R)^2).
    """
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    loss1 = (values - returns) ** 2
    loss2 = (clipped - returns) ** 2
    loss = 0.5 * aggregate(torch.maximum(loss1, loss2), mask, "token-mean", scale)
    with torch.no_grad():
        stats = {"clipfrac": aggregate((loss2 > loss1).to(values.dtype), mask, "token-mean", scale),
                 "error": aggregate(loss1, mask, "token-mean", scale)}
    return loss, stats
