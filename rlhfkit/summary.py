"""Moved to `rlhfkit.evaluation.summary`; this name stays for old imports (it is the same module object)."""

import sys

from rlhfkit.evaluation import summary as _moved

sys.modules[__name__] = _moved
