"""Advantage estimators, chosen by name (verl's names): per-token advantages from rewards.

Every estimator takes an `AdvantageInputs` and returns (advantages [B, T], returns
[B, T] or None); `returns` are the value targets of estimators that use a critic.
Register a new one with `@register_advantage_estimator("name", critic=..., grouped=...)`:
`critic` says it reads `values`, `grouped` that it needs several samples per prompt
(`group_ids`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhfkit.objectives.registry import Registry
from rlhfkit.ops.masked import Reduce, masked_moments, masked_whiten

ADVANTAGE_ESTIMATORS = Registry("advantage estimator")
register_advantage_estimator = ADVANTAGE_ESTIMATORS.register


@dataclass
class AdvantageInputs:
    """What an estimator may read. B = sequences, T = response tokens (right-padded)."""

    token_rewards: torch.Tensor          # [B, T]: the score on each last token, plus any KL-in-reward terms
    scores: torch.Tensor                 # [B]: the sequence scores alone
    mask: torch.Tensor                   # [B, T]
    values: torch.Tensor | None = None   # [B, T]: the critic's values (estimators with critic=True)
    group_ids: torch.Tensor | None = None  # [B]: equal for the samples of one prompt
    gamma: float = 1.0
    lam: float = 0.95
    whiten: bool = True                  # normalise advantages over the (global) batch (gae, rloo)
    scale_rewards: str = "group"         # grpo: divide by the std of the group, the batch, or none
    reduce: Reduce = None                # sums a tensor across processes


def get_advantage_estimator(name: str):
    return ADVANTAGE_ESTIMATORS.lookup(name)


def shape_token_rewards(scores: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor | None = None,
                        kl_coef: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -kl_coef * kl on every token (KL in the reward) plus the score on the last one.

    scores [B], mask [B, T], kl [B, T] (already masked) -> (token rewards [B, T], the KL part [B, T]).
    """
    non_score = -kl_coef * kl if kl is not None else torch.zeros_like(mask, dtype=torch.float32)
    last = mask.sum(1).long() - 1
    rewards = non_score.clone()
    rewards[torch.arange(len(last), device=mask.device), last] += scores.to(mask.device)
    return rewards, non_score


def discount_matrix(length: int, factor: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """[T, T] upper-triangular M with M[k, t] = factor**(k - t) for k >= t, else 0.

    `deltas @ M` gives, at each t, sum over k >= t of factor**(k-t) * deltas[k].
    """
    idx = torch.arange(length, device=device)
    power = (idx[:, None] - idx[None, :]).to(dtype)
    return torch.where(power >= 0, torch.as_tensor(factor, dtype=dtype, device=device) ** power.clamp(min=0),
                       torch.zeros((), dtype=dtype, device=device))


def gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation, vectorised over batch and time.

    rewards, values: [B, T]; the value after the last step is 0 (episode ends).
    delta_t = r_t + gamma * V_{t+1} - V_t;  A_t = sum_{k>=t} (gamma*lam)^(k-t) delta_k.
    Returns (advantages [B, T], returns [B, T] = advantages + values).
    """
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    deltas = rewards + gamma * next_values - values
    advantages = deltas @ discount_matrix(rewards.shape[1], gamma * lam, deltas.dtype, deltas.device)
    return advantages, advantages + values


def masked_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
               lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE for right-padded responses: padding carries no reward and no value, so each
    sequence ends at its last real token. rewards, values, mask: [B, T]; returns
    (advantages, returns), both 0 on padding."""
    m = mask.to(values.dtype)
    advantages, returns = gae(rewards * m, values * m, gamma, lam)
    return advantages * m, returns * m


@register_advantage_estimator("gae", critic=True, grouped=False)
def gae_advantages(x: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's estimator: GAE over the token rewards and the critic's values, whitened over the batch."""
    if x.values is None:
        raise ValueError("the gae estimator needs the critic's values")
    advantages, returns = masked_gae(x.token_rewards, x.values, x.mask, x.gamma, x.lam)
    if x.whiten:
        advantages = masked_whiten(advantages, x.mask, reduce=x.reduce)
    return advantages, returns


# ---------------------------------------------------------------- critic-free (outcome) estimators


def group_statistics(values: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per element: its group's (sum, size, unbiased std). values, group_ids: [B]; a group of one has std 0."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    n = int(inverse.max()) + 1 if inverse.numel() else 0
    size = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, inverse, torch.ones_like(values))
    total = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, inverse, values)
    mean = total / size
    sq = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, inverse, (values - mean[inverse]) ** 2)
    std = (sq / (size - 1).clamp(min=1)).sqrt() * (size > 1)
    return total[inverse], size[inverse], std[inverse]


def _sequence_rewards(x: AdvantageInputs) -> torch.Tensor:
    """Each sequence's total reward: its score plus its summed KL-in-reward terms (the outcome estimators' signal)."""
    return (x.token_rewards * x.mask.to(x.token_rewards.dtype)).sum(-1)


def _per_token(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return advantages[:, None] * mask.to(advantages.dtype)


def _groups(x: AdvantageInputs) -> torch.Tensor:
    if x.group_ids is None:
        raise ValueError("a group-relative estimator needs group_ids: several samples per prompt (num_generations >= 2)")
    return x.group_ids


@register_advantage_estimator("grpo", critic=False, grouped=True)
def grpo_advantages(x: AdvantageInputs) -> tuple[torch.Tensor, None]:
    """GRPO: (r - mean of the prompt's group) / (std + 1e-4), std of the group (`scale_rewards="group"`),
    of the whole batch ("batch") or none ("none", Dr. GRPO), the same on every token of the sequence."""
    r = _sequence_rewards(x)
    total, size, std = group_statistics(r, _groups(x))
    advantages = r - total / size
    if x.scale_rewards == "batch":
        ones = torch.ones_like(r)[:, None]
        advantages = advantages / (masked_moments(r[:, None], ones, x.reduce)[1].sqrt() + 1e-4)
    elif x.scale_rewards == "group":
        advantages = advantages / (std + 1e-4)
    elif x.scale_rewards != "none":
        raise ValueError(f"scale_rewards {x.scale_rewards!r}: use group, batch or none")
    return _per_token(advantages, x.mask), None


@register_advantage_estimator("dr_grpo", critic=False, grouped=True)
def dr_grpo_advantages(x: AdvantageInputs) -> tuple[torch.Tensor, None]:
    """Dr. GRPO: r - mean of the prompt's group, not divided by a std (no difficulty bias)."""
    r = _sequence_rewards(x)
    total, size, _ = group_statistics(r, _groups(x))
    return _per_token(r - total / size, x.mask), None


@register_advantage_estimator("rloo", critic=False, grouped=True)
def rloo_advantages(x: AdvantageInputs) -> tuple[torch.Tensor, None]:
    """REINFORCE leave-one-out: r - the mean reward of the prompt's other samples; whitened over the batch
    when `whiten` (TRL's `normalize_advantages`)."""
    r = _sequence_rewards(x)
    total, size, _ = group_statistics(r, _groups(x))
    advantages = torch.where(size > 1, r - (total - r) / (size - 1).clamp(min=1), torch.zeros_like(r))
    advantages = _per_token(advantages, x.mask)
    if x.whiten:
        advantages = masked_whiten(advantages, x.mask, reduce=x.reduce)
    return advantages, None


@register_advantage_estimator("reinforce_plus_plus", critic=False, grouped=False)
def reinforce_plus_plus_advantages(x: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++: the discounted reward-to-go of the token rewards (per-token KL in them), whitened over
    the (global) batch; returns are the reward-to-go."""
    zeros = torch.zeros_like(x.token_rewards)
    returns, _ = masked_gae(x.token_rewards, zeros, x.mask, x.gamma, 1.0)
    return masked_whiten(returns, x.mask, reduce=x.reduce), returns
