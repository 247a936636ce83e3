"""`rlhfkit sft`: supervised fine-tuning on prompt/completion rows (causal or seq2seq)."""

from __future__ import annotations

from rlhfkit.config import add_config_command
from rlhfkit.methods.sft import SFTConfig, train_sft


def add_command(subparsers) -> None:
    add_config_command(subparsers, "sft", "supervised fine-tuning on prompt/completion rows (causal or seq2seq)",
                       SFTConfig, train_sft)
