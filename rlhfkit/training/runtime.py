"""The accelerate runtime every loop runs on: devices, mixed precision, processes; the optimizer.

`Runtime` wraps one `accelerate.Accelerator`. accelerate keeps one mixed-precision
setting per process and refuses a second one; in a single process a later trainer may
want another (tests, notebooks), and then runs on the existing accelerator and
autocasts itself (bf16 autocast is exactly what accelerate would do; fp16 needs
accelerate's gradient scaler, so that case asks for a fresh process).
"""

from __future__ import annotations

import contextlib

import torch

from rlhfkit.errors import UserError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Runtime:
    """An Accelerator plus the precision this run asked for (`autocast`, `backward`, `prepare`, ...)."""

    def __init__(self, mixed_precision: str = "no", **accelerator_kwargs):
        from accelerate import Accelerator, PartialState

        self.mixed_precision = mixed_precision
        self._own_autocast = False
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
        """accelerate's `no_sync` for all but the last micro-batch of an optimisation step."""
        return contextlib.nullcontext() if last else self.accelerator.no_sync(model)


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
