"""`rlhfkit ppo --config ppo.yaml`: PPO on a policy with any reward source (flags override the YAML)."""

from __future__ import annotations

from rlhfkit.cli.online import add_online_command, run_online


def run_ppo(config, overrides: dict | None = None) -> int:
    """Train (or resume: the saved config plus `overrides`, the flags given on the command line)."""
    from rlhfkit.methods.ppo import PPOTrainer

    return run_online(PPOTrainer, config, overrides, "ppo")


def add_command(subparsers) -> None:
    from rlhfkit.methods.ppo import PPOTrainer

    add_online_command(subparsers, "ppo", "PPO with a KL leash: causal or seq2seq, LoRA, any reward; resumable",
                       PPOTrainer)
