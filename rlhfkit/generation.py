"""Moved to `rlhfkit.models.generation`; this name stays for old imports (it is the same module object)."""

import sys

from rlhfkit.models import generation as _moved

sys.modules[__name__] = _moved
