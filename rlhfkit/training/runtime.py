"""The accelerate runtime every loop runs on: devices, mixed precision, processes; the optimizer.

`Runtime` wraps one `accelerate.Accelerator`. accelerate keeps one mixed-precision
setting per process and refuses a second one; in a single process a later trainer may
want another (tests, notebooks), and then runs on the existing accelerator and
autocasts itself (bf16 autocast is exactly what accelerate would do; fp16 needs
accelerate's gradient scaler, so that case asks for a fresh process).
"""

from __future__ import annotations

import contextlib
import os

import torch

from rlhfkit.errors import UserError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Runtime:
    """An Accelerator plus the precision this run asked for (`autocast`, `backward`, `prepare`, ...)."""

    def __init__(self, mixed_precision: str = "no", **accelerator_kwargs):
        from accelerate import Accelerator, PartialState

        self.mixed_precision = mixed_precision
        self._own_autocast = False
        if launched_on_cpu():
            accelerator_kwargs.setdefault("cpu", True)
        try:
            self.accelerator = Accelerator(mixed_precision=mixed_precision, **accelerator_kwargs)
        except ValueError as e:
            if "already been initialized" not in str(e) or PartialState().num_processes > 1:
                raise
            if mixed_precision == "fp16":
                raise UserError("mixed_precision fp16 needs a fresh process: an earlier trainer in this process "
                                "fixed accelerate's precision; restart Python (or use bf16)") from None
            self.accelerator = Accelerator(**accelerator_kwargs)
            self._own_autocast = True
        if mixed_precision == "bf16" and self.device.type == "cpu":
            from rlhfkit.runtime import cpu_has_native_bf16

            if not cpu_has_native_bf16():
                import warnings

                warnings.warn("mixed_precision bf16 on a CPU without native bf16 (no AVX512-BF16/AMX): torch emulates "
                              "bf16 matmuls, hundreds of times slower than float32; use mixed_precision 'no' here")

    def __getattr__(self, name):  # everything else is the Accelerator's
        if name == "accelerator":  # not built (yet): no recursion through __getattr__
            raise AttributeError(name)
        return getattr(self.accelerator, name)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def autocast(self):
        """The run's mixed-precision context (a no-op without mixed precision)."""
        if not self._own_autocast:
            return self.accelerator.autocast()
        if self.mixed_precision == "no":
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=_DTYPES[self.mixed_precision])

    def prepare_model_and_optimizer(self, model, optimizer):
        """`accelerator.prepare`, then without accelerate's fp32 output wrapper: under mixed precision
        it casts every output to float32, a full-vocabulary copy of the logits (and its backward) per
        pass that the float32 log-prob kernels do not need; every forward runs inside `autocast()`."""
        model, optimizer = self.accelerator.prepare(model, optimizer)
        self.accelerator.unwrap_model(model, keep_fp32_wrapper=False)
        return model, optimizer

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum across processes (the tensor itself in a single process)."""
        return self.accelerator.reduce(tensor, "sum") if self.accelerator.num_processes > 1 else tensor

    def no_sync_unless(self, last: bool, model):
        """accelerate's `no_sync` for all but the last micro-batch of an optimisation step. Under
        DeepSpeed the engine steps at every backward that syncs, so the others are marked as not syncing."""
        if self.engine == "deepspeed":
            return self._deepspeed_boundary(last)
        return contextlib.nullcontext() if last else self.accelerator.no_sync(model)

    @contextlib.contextmanager
    def _deepspeed_boundary(self, last: bool):
        state = self.accelerator.gradient_state
        state._set_sync_gradients(last)
        try:
            yield
        finally:
            state._set_sync_gradients(True)

    @property
    def engine(self) -> str:
        """"fsdp", "deepspeed" (weights or optimizer state split across processes) or "ddp" / "single"."""
        kind = str(self.accelerator.distributed_type).split(".")[-1]
        if kind in ("FSDP", "DEEPSPEED"):
            return kind.lower()
        return "ddp" if self.accelerator.num_processes > 1 else "single"

    @property
    def sharded(self) -> bool:
        return self.engine in ("fsdp", "deepspeed")

    def full_state_dict(self, model) -> dict | None:
        """The whole state dict of a prepared model where an engine splits it (FSDP, DeepSpeed), gathered:
        every process must call this (a collective); None where each process holds the whole model."""
        if not self.sharded:
            return None
        state = self.accelerator.get_state_dict(model)
        inner = self.accelerator.unwrap_model(model)
        # tied weights (GPT-2's lm_head is its embedding) come back as separate copies: keep one name,
        # as save_pretrained does for the shared tensors of an unsharded model
        aliases = set(dict(inner.named_parameters(remove_duplicate=False))) - set(dict(inner.named_parameters()))
        return {k: v for k, v in state.items() if k not in aliases}


# ---------------------------------------------------------------- processes


def launched_on_cpu() -> bool:
    """Several processes (accelerate launch / torchrun set WORLD_SIZE) on a machine with no accelerator.

    accelerate then gives every process a world of its own unless asked for the CPU, and
    a 2-process launch would train twice, side by side, into the same folder. Asked for
    the CPU it joins them in one gloo process group (DistributedType.MULTI_CPU). FSDP and
    DeepSpeed run on accelerators only (accelerate 1.16 enables them for GPU-type devices):
    a launch that asks for them here stops with a clear error instead of silently running DDP.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or _has_accelerator():
        return False
    for engine in ("FSDP", "DEEPSPEED"):
        if os.environ.get(f"ACCELERATE_USE_{engine}", "false").lower() in ("1", "true", "yes"):
            name = "FSDP" if engine == "FSDP" else "DeepSpeed"
            raise UserError(f"this launch asks for {name}, which accelerate runs on GPUs only, and this machine has "
                            "none; on CPUs use configs/accelerate/ddp.yaml (docs/distributed.md)")
    return True


def _has_accelerator() -> bool:
    accel = getattr(torch, "accelerator", None)
    if accel is not None and hasattr(accel, "is_available"):
        return bool(accel.is_available())
    return torch.cuda.is_available()


def process_state():
    """accelerate's process state (the process group), joined the way `Runtime` joins it."""
    from accelerate import PartialState

    return PartialState(cpu=True) if launched_on_cpu() else PartialState()


def everywhere(load, what: str = "inputs"):
    """`load()` on every process, then agree: when it fails on any (a file missing on one node, a
    bad row), every process raises the same UserError naming the ranks, so none goes on to a
    collective that a failed one never joins (a hang until the timeout). One process: just `load()`."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return load()
    from accelerate.utils import gather_object

    state = process_state()
    try:
        result, error = load(), None
    except (UserError, OSError, ValueError) as e:
        result, error = None, str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
    errors = gather_object([error]) if state.num_processes > 1 else [error]
    failed = [(rank, e) for rank, e in enumerate(errors) if e is not None]
    if failed:
        lines = "; ".join(f"process {rank}: {e}" for rank, e in failed)
        raise UserError(f"loading the {what} failed on {len(failed)} of {len(errors)} processes ({lines})")
    return result


def agree(value, what: str) -> None:
    """Stop on every process when the processes' `value` differ (the data each read, the step a
    resume starts at): the ranks would otherwise train on different plans and hang or diverge."""
    state = process_state()
    if state.num_processes <= 1:
        return
    from accelerate.utils import gather_object

    values = gather_object([value])
    if any(v != values[0] for v in values[1:]):
        shown = ", ".join(f"process {rank}: {v}" for rank, v in enumerate(values))
        raise UserError(f"the processes disagree on {what} ({shown}); every process must see the same files "
                        "and settings")


def make_optimizer(params: list, learning_rate: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """AdamW (the same update as Adam at weight_decay 0); the fused kernel where it exists (CPU and
    CUDA): several times faster than the per-tensor loop on CPU, where the step over a full model's
    weights is a large share of a PPO step."""
    if params and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
        try:
            return torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay, fused=True)
        except (RuntimeError, ValueError):
            pass
    return torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)


def linear_schedule(optimizer, total_steps: int, warmup_steps: int = 0):
    """Linear warm-up to the peak rate, then linear decay to 0 at `total_steps` (transformers' schedule)."""
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(getattr(optimizer, "optimizer", optimizer), warmup_steps, total_steps)
