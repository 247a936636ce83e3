"""Moved to `rlhfkit.models.forward`; this name stays for old imports (it is the same module object)."""

import sys

from rlhfkit.models import forward as _moved

sys.modules[__name__] = _moved
