"""Moved to `rlhfkit.cli.generate`; this name stays for old imports (it is the same module object)."""

import sys

from rlhfkit.cli import generate as _moved

sys.modules[__name__] = _moved
