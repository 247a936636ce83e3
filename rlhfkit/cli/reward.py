"""`rlhfkit reward`: train a reward model on preference pairs or rankings (Bradley-Terry)."""

from __future__ import annotations

from rlhfkit.config import add_config_command
from rlhfkit.methods.reward import RewardConfig, train_reward_model


def add_command(subparsers) -> None:
    add_config_command(subparsers, "reward", "train a reward model on preference pairs or rankings (Bradley-Terry)",
                       RewardConfig, train_reward_model)
