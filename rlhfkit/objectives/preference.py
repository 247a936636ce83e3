"""Preference losses on pairs of (chosen, rejected) scores."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                       margin: torch.Tensor | float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """Pairwise reward-model loss: -log sigmoid(r_chosen - r_rejected - margin), averaged ("mean") or summed.

    chosen_rewards, rejected_rewards: [B]; margin: scalar or [B] (how much the
    chosen answer should win by). Written with logsigmoid for stability at large gaps.
    """
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - margin)
    return losses.sum() if reduction == "sum" else losses.mean()
