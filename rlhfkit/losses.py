"""Moved to `rlhfkit.ops` (log-probs, masked statistics, KL) and `rlhfkit.objectives` (advantages, policy,
value, preference losses); these names stay for old imports, with their old signatures."""

from __future__ import annotations

import torch

from rlhfkit.objectives.advantages import discount_matrix, gae, masked_gae
from rlhfkit.objectives.aggregation import LossScale
from rlhfkit.objectives.policy import clipped_policy_loss
from rlhfkit.objectives.policy import value_loss as _value_loss
from rlhfkit.objectives.preference import bradley_terry_loss
from rlhfkit.ops.kl import AdaptiveKLController, FixedKLController, kl_estimate
from rlhfkit.ops.logprobs import entropy_from_logits, linear_logprobs, logprobs_from_logits
from rlhfkit.ops.masked import RunningMoments, masked_mean, masked_var, masked_whiten


def _scale(mask, n_tokens):
    return LossScale.of(mask) if n_tokens is None else LossScale(n_tokens, mask.shape[0])


def policy_loss(logprobs, old_logprobs, advantages, mask, clip: float = 0.2,
                n_tokens: torch.Tensor | float | None = None) -> tuple[torch.Tensor, dict]:
    """PPO's clipped surrogate, token mean over `n_tokens` (default: this batch's): `objectives.policy`."""
    return clipped_policy_loss(logprobs, old_logprobs, advantages, mask, clip_low=clip, scale=_scale(mask, n_tokens))


def value_loss(values, old_values, returns, mask, clip: float = 0.2,
               n_tokens: torch.Tensor | float | None = None) -> tuple[torch.Tensor, dict]:
    """The clipped value loss, token mean over `n_tokens`: `objectives.policy.value_loss`."""
    return _value_loss(values, old_values, returns, mask, clip, _scale(mask, n_tokens))


__all__ = [
    "AdaptiveKLController", "FixedKLController", "RunningMoments", "bradley_terry_loss", "discount_matrix",
    "entropy_from_logits", "gae", "kl_estimate", "linear_logprobs", "logprobs_from_logits", "masked_gae",
    "masked_mean", "masked_var", "masked_whiten", "policy_loss", "value_loss",
]
