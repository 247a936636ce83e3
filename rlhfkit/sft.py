"""Moved to `rlhfkit.methods.sft`; this name stays for old imports (it is the same module object)."""

import sys

from rlhfkit.methods import sft as _moved

sys.modules[__name__] = _moved
