"""Moved to `rlhfkit.methods.reward`; this name stays for old imports (it is the same module object)."""

import sys

from rlhfkit.methods import reward as _moved

sys.modules[__name__] = _moved
