"""Preference losses on pairs of (chosen, rejected) scores, and on tied pairs."""

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


def bradley_terry_tie_loss(first_rewards: torch.Tensor, second_rewards: torch.Tensor,
                           reduction: str = "mean") -> torch.Tensor:
    """A tie as half a win each way (a draw scored 1/2, as Elo and Bradley-Terry with draws score it):
    0.5 * (-log sigmoid(d) - log sigmoid(-d)), d = r_first - r_second. Smallest (log 2) at d = 0,
    so tied pairs pull their rewards together instead of being dropped.
    """
    d = first_rewards - second_rewards
    losses = 0.5 * (F.softplus(-d) + F.softplus(d))
    return losses.sum() if reduction == "sum" else losses.mean()
