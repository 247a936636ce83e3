"""The `rlhfkit` command line: every command's --help renders (argparse formats each option's help
with %-substitution, so a stray '%' in a config field's description breaks the whole page)."""

import pytest

from rlhfkit.cli import build_parser


def commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_command_help_renders(name):
    text = commands()[name].format_help()
    assert text.startswith("usage: rlhfkit")


def test_ppo_help_lists_the_compile_switch():
    assert "--compile" in commands()["ppo"].format_help()
