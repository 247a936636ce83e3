"""Moved to `rlhfkit.cli.ppo`; this name stays for old imports (it is the same module object)."""

import sys

from rlhfkit.cli import ppo as _moved

sys.modules[__name__] = _moved
