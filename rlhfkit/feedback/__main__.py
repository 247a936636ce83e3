"""`python -m rlhfkit.feedback ...`: the `rlhfkit label` commands without the main CLI."""

import sys

from rlhfkit.feedback.cli import main

sys.exit(main())
