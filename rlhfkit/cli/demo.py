"""`rlhfkit demo`: the whole pipeline on the embedded default, offline."""

from __future__ import annotations

import argparse

from rlhfkit.config import add_config_command
from rlhfkit.demo import STAGES, DemoConfig, run_demo


def add_command(subparsers) -> None:
    parser = add_config_command(subparsers, "demo", "the whole pipeline on the embedded default, offline", DemoConfig,
                                run_demo, skip=("from_stage",))
    parser.add_argument("--from", dest="from_stage", choices=STAGES, default=argparse.SUPPRESS,
                        help="redo this stage and every later one (default: reuse finished stages)")
