"""`rlhfkit grpo`: GRPO (group-relative advantages, no critic) on the online loop, with any reward."""

from __future__ import annotations

from rlhfkit.cli.online import add_online_command


def add_command(subparsers) -> None:
    from rlhfkit.methods.grpo import GRPOTrainer

    add_online_command(subparsers, "grpo", "GRPO / Dr. GRPO / DAPO / GSPO: group-relative advantages, no critic; "
                       "any reward; resumable", GRPOTrainer)
