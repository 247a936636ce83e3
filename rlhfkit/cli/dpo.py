"""`rlhfkit dpo`: direct preference optimisation (DPO, IPO, SimPO, ORPO, KTO, ...) on pairs, rankings or KTO rows."""

from __future__ import annotations

from rlhfkit.config import add_config_command
from rlhfkit.methods.dpo import DPOConfig, train_dpo


def add_command(subparsers) -> None:
    add_config_command(subparsers, "dpo", "direct preference optimisation (DPO family, KTO) on pairs, rankings or "
                       "KTO rows (causal or seq2seq)", DPOConfig, train_dpo)
