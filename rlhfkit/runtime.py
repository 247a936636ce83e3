"""Process-level settings that must be in place before the interpreter starts.

glibc's malloc hands every block over 32 MB (a [4, 48, 49152] float32 logits
tensor, a tied embedding's gradient) straight back to the kernel when it is
freed, so the next step maps it again and takes a page fault per 4 KB page,
millions per PPO step. Tuned, malloc keeps freed memory for reuse
(mmap/trim thresholds) and backs what it maps with transparent huge pages.
glibc reads these tunables only at start-up, so `rlhfkit` re-executes itself
once with GLIBC_TUNABLES set. RLHFKIT_TUNED_MALLOC=0, an existing GLIBC_TUNABLES,
or a non-glibc platform leave the process as it is. Library users get the same
effect by exporting the variable themselves (see docs/ppo.md).
"""

from __future__ import annotations

import os
import platform
import sys

GLIBC_TUNABLES = ("glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=4294967296:"
                  "glibc.malloc.trim_threshold=4294967296")


def wants_tuned_malloc(environ=os.environ) -> bool:
    if environ.get("RLHFKIT_TUNED_MALLOC", "1") == "0" or "GLIBC_TUNABLES" in environ:
        return False
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def reexec_with_tuned_malloc() -> None:
    """Replace this process by the same command with GLIBC_TUNABLES set (once; call before heavy imports)."""
    if not wants_tuned_malloc():
        return
    os.environ["GLIBC_TUNABLES"] = GLIBC_TUNABLES
    argv = [sys.executable, *getattr(sys, "orig_argv", [sys.executable, *sys.argv])[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(sys.executable, argv)
    except OSError:  # cannot re-execute (unusual sandboxes): run on untuned
        return


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX on x86, the BF16 extension on Arm).

    Without it torch emulates bf16 matmuls: measured on an AVX2-only EPYC (2 threads), 0.2 GFLOP/s
    against 96 GFLOP/s in float32, so bf16 mixed precision there is hundreds of times slower, not faster.
    Reads /proc/cpuinfo; other platforms are assumed to have it.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    except OSError:
        pass
    return True


def quiet_torchao_import() -> None:
    """Keep torchao's import-time chatter off every command's stderr.

    transformers imports torchao whenever it is installed (its quantizer registry loads with the
    model classes), and torchao then warns about its CUDA-only extensions on a CPU machine
    ("Failed to load ... _C_mxfp8 ...so") and registers enums that torch's pytree now handles
    natively (a deprecation warning per enum), and at use warns that Triton (a GPU compiler) is
    missing. None is actionable for a user of rlhfkit: torchao's loggers keep their errors only,
    torch's pytree logger drops that one deprecation and keeps every other warning. Cheap:
    nothing is imported here.
    """
    import logging

    class _Drop(logging.Filter):
        def __init__(self, needles: tuple[str, ...]):
            super().__init__()
            self.needles = needles

        def filter(self, record: logging.LogRecord) -> bool:
            try:
                text = record.getMessage()
            except Exception:  # a malformed record is not ours to judge
                return True
            return not any(n in text for n in self.needles)

    # torchao's loggers (torchao, torchao.kernel.intmm, ...) inherit this level; its errors still show
    logging.getLogger("torchao").setLevel(logging.ERROR)
    pytree = logging.getLogger("torch.utils._pytree")
    if not any(isinstance(f, _Drop) for f in pytree.filters):
        pytree.addFilter(_Drop(("is an Enum subclass and is now natively supported",)))
