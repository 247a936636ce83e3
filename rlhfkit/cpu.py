"""Moved to `rlhfkit.models.speed`; this name stays for old imports (it is the same module object)."""

import sys

from rlhfkit.models import speed as _moved

sys.modules[__name__] = _moved
