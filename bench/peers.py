"""Peer libraries in virtual environments of their own (bench/.venv-trl<version>), on the project's torch,
transformers, peft, accelerate and datasets, so both sides of a comparison run the same stack. Built on
first use (about a minute: pip from PyPI), under a lock, with a stamp of what was installed."""

from __future__ import annotations

import fcntl
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def ensure_trl_venv(version: str) -> Path:
    """The python of bench/.venv-trl<major><minor> with trl==version installed; builds it when missing."""
    major, minor = version.split(".")[:2]
    venv = BENCH / f".venv-trl{major}{minor}"
    python = venv / "bin" / "python"
    stamp = venv / ".bench-installed"
    reqs = [f"trl=={version}"] + [f"{n}=={metadata.version(n)}"
                                  for n in ("transformers", "peft", "accelerate", "datasets")]
    lock = Path(tempfile.gettempdir()) / f"rlhfkit-bench-{venv.name}.lock"
    with open(lock, "w") as f:  # two runs never build it at once
        fcntl.flock(f, fcntl.LOCK_EX)
        if python.exists() and stamp.exists() and stamp.read_text().split() == reqs:
            return python
        print(f"bench: installing {venv.relative_to(ROOT)}: {' '.join(reqs)} (a minute or two, once)", flush=True)
        if not python.exists():
            base = getattr(sys, "_base_executable", None) or "python3"
            subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True)
        probe = subprocess.run([str(python), "-c", "import sys; print(sys.prefix != sys.base_prefix)"],
                               capture_output=True, text=True)
        if probe.stdout.strip() != "True":
            raise SystemExit(f"bench: {python} is not a virtual environment; remove {venv} and run again")
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), *reqs],
                       check=True)
        stamp.write_text("\n".join(reqs) + "\n")
    return python
