"""`rlhfkit <command>`: one module per command in this package, each registering its own subcommand.

A module's `add_command(subparsers)` adds one parser and sets `func` to a
function taking the parsed args and returning an exit code. Errors meant for
the user (`UserError`) print as one line with the fix, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from rlhfkit.errors import UserError

# Modules that register a top-level command, in the order `--help` lists them.
COMMAND_MODULES = [
    "rlhfkit.cli.generate",
    "rlhfkit.cli.sft",
    "rlhfkit.cli.reward",
    "rlhfkit.cli.label",
    "rlhfkit.cli.ppo",
    "rlhfkit.cli.grpo",
    "rlhfkit.cli.rloo",
    "rlhfkit.cli.dpo",
    "rlhfkit.cli.eval",
    "rlhfkit.cli.export",
    "rlhfkit.cli.distill",
    "rlhfkit.cli.quantize",
    "rlhfkit.cli.prune",
    "rlhfkit.cli.demo",
    "rlhfkit.cli.rag",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhfkit", description="The whole RLHF loop on Hugging Face models.")
    parser.add_argument("--version", action="version", version=f"rlhfkit {__import__('rlhfkit').__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # a command not built yet
                continue
            raise
        module.add_command(subparsers)
    return parser


def _quiet_libraries() -> None:
    """Library chatter (weight-loading bars, advisory warnings) buries our own progress bars."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"rlhfkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rlhfkit: interrupted", file=sys.stderr)
        return 130


def entry_point() -> int:
    """The `rlhfkit` console script: `main` in a process with tuned malloc (rlhfkit/runtime.py)."""
    from rlhfkit.runtime import reexec_with_tuned_malloc

    reexec_with_tuned_malloc()
    return main()
