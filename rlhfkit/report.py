"""Moved to `rlhfkit.evaluation.report`; this name stays for old imports (it is the same module object)."""

import sys

from rlhfkit.evaluation import report as _moved

sys.modules[__name__] = _moved
