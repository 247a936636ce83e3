"""Losses and the small maths around them, as pure functions on tensors.

Shapes are in the docstrings: B = batch, T = response tokens. Masks are 1 for
real tokens and 0 for padding. Tests check each against hand-worked numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, margin: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Pairwise reward-model loss: mean of -log sigmoid(r_chosen - r_rejected - margin).

    chosen_rewards, rejected_rewards: [B]; margin: scalar or [B] (how much the
    chosen answer should win by). Written with logsigmoid for stability at large gaps.
    """
    return -F.logsigmoid(chosen_rewards - rejected_rewards - margin).mean()
