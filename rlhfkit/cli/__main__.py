"""`python -m rlhfkit.cli ...`: the same as the `rlhfkit` command."""

import sys

from rlhfkit.cli import entry_point

sys.exit(entry_point())
