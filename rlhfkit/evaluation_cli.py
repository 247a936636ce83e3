"""Moved to `rlhfkit.cli.eval`; this name stays for old imports (it is the same module object)."""

import sys

from rlhfkit.cli import eval as _moved

sys.modules[__name__] = _moved
