import os
import subprocess
import sys

import pytest

from rlhfkit.runtime import GLIBC_TUNABLES, wants_tuned_malloc

SCRIPT = ("import os, sys; from rlhfkit.runtime import reexec_with_tuned_malloc; "
          "print('run', flush=True); reexec_with_tuned_malloc(); print(sys.argv[1:], os.environ.get('GLIBC_TUNABLES'))")


def test_opt_outs():
    assert not wants_tuned_malloc({"RLHFKIT_TUNED_MALLOC": "0"})
    assert not wants_tuned_malloc({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})  # the user's own settings win


@pytest.mark.skipif(not wants_tuned_malloc({}), reason="needs Linux with glibc")
def test_reexec_keeps_the_command_line_and_sets_the_tunables_once():
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "RLHFKIT_TUNED_MALLOC")}
    out = subprocess.run([sys.executable, "-c", SCRIPT, "a b", "--x"], env=env, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == ["run", "run", f"['a b', '--x'] {GLIBC_TUNABLES}"]  # re-executed exactly once, same arguments
    off = subprocess.run([sys.executable, "-c", SCRIPT, "y"], env={**env, "RLHFKIT_TUNED_MALLOC": "0"},
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert off == ["run", "['y'] None"]


def test_bf16_on_a_cpu_without_native_bf16_warns(monkeypatch):
    import pytest

    import rlhfkit.runtime
    from rlhfkit.training.runtime import Runtime

    monkeypatch.setattr(rlhfkit.runtime, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="without native bf16.*use mixed_precision 'no'"):
        Runtime("bf16")
