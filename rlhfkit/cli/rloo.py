"""`rlhfkit rloo`: RLOO (leave-one-out baseline, KL in the reward, no critic) on the online loop."""

from __future__ import annotations

from rlhfkit.cli.online import add_online_command


def add_command(subparsers) -> None:
    from rlhfkit.methods.rloo import RLOOTrainer

    add_online_command(subparsers, "rloo", "RLOO: leave-one-out baseline, KL in the reward, no critic; any reward; "
                       "resumable", RLOOTrainer)
