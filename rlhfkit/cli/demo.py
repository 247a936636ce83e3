"""`rlhfkit demo`: the whole pipeline on the embedded default, offline."""

from __future__ import annotations

import argparse

from rlhfkit.config import add_config_command
from rlhfkit.demo import STAGES, DemoConfig, run_demo


def add_command(subparsers) -> None:
    parser = add_config_command(subparsers, "demo", "the whole pipeline on the embedded default, offline", DemoConfig,
                                run_demo, skip=("from_stage",))
    parser.add_argument("--from", dest="from_stage", default=argparse.SUPPRESS, metavar="STAGE",
                        help="redo this stage (" + ", ".join(s for s in STAGES if s != "train") + ", or a method's "
                             "stage: ppo, grpo, rloo, ppo-direct) and every later one (default: reuse finished stages)")
