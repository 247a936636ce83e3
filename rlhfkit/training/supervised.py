"""The supervised loop: epochs of optimisation steps over a fixed, seeded plan of batches.

Every supervised method (SFT, the reward model; DPO, KTO and distillation later) is a
`SupervisedTask`: how many units (tokens, pairs) a set of examples holds, and the
summed loss of a set of examples. The loop does the rest on accelerate: device
placement and mixed precision, AdamW with linear warm-up and decay, gradient
accumulation (each step's batch split into micro-batches whose summed losses are
divided by the whole batch's units, so the gradient is the batch's), data sharded
across processes (DDP averages the gradients), clipping, a non-finite-loss stop,
progress bars, metrics.jsonl, checkpoints every `save_every` steps and exact resume.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch

from rlhfkit.errors import UserError
from rlhfkit.training import tracking
from rlhfkit.training.checkpoint import STATE_FILE, find_checkpoint, load_checkpoint, save_checkpoint
from rlhfkit.training.runtime import Runtime, agree, linear_schedule, make_optimizer


class SupervisedTask(Protocol):
    def units(self, indices: list[int]) -> int:
        """How many units (label tokens, pairs) the examples hold: the loss is a mean over units."""

    def loss(self, model, indices: list[int]) -> tuple[torch.Tensor, dict]:
        """The summed loss over the examples' units, and stats to log (sums over units, e.g. correct pairs)."""

    # optional: `before_step(model, indices, step)` runs before each step's micro-batches, outside autocast
    # and without gradients, on this process's share of the batch (e.g. on-policy samples for distillation)


@dataclass
class LoopSettings:
    learning_rate: float
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    log_every: int = 10
    save_every: int = 0
    seed: int = 0

    @classmethod
    def of(cls, config, **overrides) -> "LoopSettings":
        """The loop's settings from a method's config (its shared optimiser fields)."""
        fields = {name: getattr(config, name) for name in cls.__dataclass_fields__ if hasattr(config, name)}
        return cls(**(fields | overrides))


class SupervisedLoop:
    """Trains `model` on a task over `plan` (epochs -> batches -> example indices); see the module docstring."""

    def __init__(self, model, settings: LoopSettings, plan: list[list[list[int]]], output_dir: str | Path,
                 config=None, runtime: Runtime | None = None):
        if settings.gradient_accumulation_steps < 1:
            raise UserError("gradient_accumulation_steps must be at least 1")
        self.settings, self.plan, self.config = settings, plan, config
        self.output_dir = Path(output_dir)
        from rlhfkit.models.card import check_push

        check_push(getattr(config, "push_to_hub", None))  # before any training, not after it
        self.runtime = runtime or Runtime(settings.mixed_precision, **tracking.accelerator_kwargs(config, output_dir))
        tracking.start(self.runtime, config, self.output_dir, _method_name(config))
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(params, settings.learning_rate, settings.weight_decay)
        self.model, self.optimizer = self.runtime.prepare_model_and_optimizer(model, optimizer)
        self.total_steps = sum(len(epoch) for epoch in plan)
        self.scheduler = linear_schedule(self.optimizer, self.total_steps, int(settings.warmup_ratio * self.total_steps))
        self.step, self.history = 0, []
        self.steps: list[dict] = []  # every step's stats

    @property
    def unwrapped(self):
        return self.runtime.unwrap_model(self.model)

    # ------------------------------------------------------------ one optimisation step

    def _shard(self, indices: list[int]) -> list[int]:
        return indices[self.runtime.process_index::self.runtime.num_processes]

    def train_step(self, task: SupervisedTask, indices: list[int]) -> dict:
        """One optimisation step on a batch: this process's share in micro-batches, one optimizer step."""
        rt, acc = self.runtime, self.settings.gradient_accumulation_steps
        mine = self._shard(indices)
        # a batch smaller than the number of processes leaves some with nothing: they still run one
        # example with zero weight, so every process joins DDP's gradient all-reduce
        idle = not mine
        mine = indices[:1] if idle else mine
        size = max(1, math.ceil(len(mine) / acc))
        micro = [mine[i:i + size] for i in range(0, len(mine), size)] or [[]]
        units = 0 if idle else sum(task.units(m) for m in micro)
        total = rt.reduce_sum(torch.tensor(float(units), device=rt.device))
        total = total.clamp(min=1)
        before = getattr(task, "before_step", None)
        if before is not None:
            with torch.no_grad():
                before(self.model, mine, self.step)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for k, m in enumerate(micro):
            with rt.no_sync_unless(k == len(micro) - 1, self.model), rt.autocast():
                loss_sum, stats = task.loss(self.model, m)
            # DDP averages gradients over processes: scale so their mean is the global batch's mean
            loss = loss_sum.float() * (0.0 if idle else rt.num_processes / total)
            if not torch.isfinite(loss):
                raise UserError(f"non-finite loss at step {self.step + 1}; lower learning_rate")
            rt.backward(loss)
            for key, v in {"loss": loss_sum.item(), **stats}.items():
                v = 0.0 if idle else v
                sums[key] = sums.get(key, 0.0) + float(v)
        if self.settings.max_grad_norm is not None:
            rt.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.settings.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        keys = sorted(sums)
        reduced = rt.reduce_sum(torch.tensor([sums[k] for k in keys], device=rt.device, dtype=torch.float64))
        return {k: float(v) / float(total) for k, v in zip(keys, reduced.tolist())} | {"units": float(total)}

    # ------------------------------------------------------------ epochs

    def fit(self, task: SupervisedTask, after_epoch: Callable[[dict], dict] | None = None,
            progress: bool = True) -> list[dict]:
        """Run the plan from `self.step` on; `after_epoch(record)` sees each epoch's record (train means)
        and may add to it (held-out numbers). Returns the epoch records (also in metrics.jsonl, with a
        line every `log_every` steps)."""
        from tqdm.auto import tqdm

        rt = self.runtime
        main = rt.is_main_process
        metrics = self.output_dir / "metrics.jsonl"
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        # every process must run the same plan from the same step, or the collectives pair up wrongly
        everything = sorted({i for epoch in self.plan for batch in epoch for i in batch})
        agree({"start step": self.step, "steps": self.total_steps, "examples": len(everything),
               "units": int(task.units(everything)),
               "plan": hashlib.sha256(json.dumps(self.plan).encode()).hexdigest()[:12]}, "the training run")
        done = 0
        for epoch, batches in enumerate(self.plan, 1):
            if done + len(batches) <= self.step:  # finished before a resume
                done += len(batches)
                continue
            skip, started = self.step - done, time.time()
            bar = tqdm(total=len(batches), initial=skip, desc=f"epoch {epoch}/{len(self.plan)}", unit="step",
                       disable=not (progress and main))
            for indices in batches[skip:]:
                stats = self.train_step(task, indices)
                self.steps.append({"epoch": epoch, **stats})
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in _epoch_means(self.steps, epoch).items()})
                if self.settings.log_every and self.step % self.settings.log_every == 0:
                    row = {"epoch": epoch, "step": self.step,
                           **{f"train/{k}": v for k, v in stats.items() if k != "units"},
                           "lr": self.scheduler.get_last_lr()[0]}
                    self._log(metrics, row)
                if self.settings.save_every and self.step % self.settings.save_every == 0:
                    self.save(self.output_dir / "checkpoints" / f"step-{self.step}")
            bar.close()
            done += len(batches)
            record = {"epoch": epoch, "step": self.step,
                      **{f"train/epoch_{k}": v for k, v in _epoch_means(self.steps, epoch).items()},
                      "seconds": time.time() - started}
            if after_epoch is not None:
                record.update(after_epoch(record))
            self.history.append(record)
            self._log(metrics, record)
        tracking.finish(rt)
        return self.history

    def _log(self, path: Path, row: dict) -> None:
        if self.runtime.is_main_process:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        tracking.log(self.runtime, row, row.get("step", self.step))

    # ------------------------------------------------------------ checkpoints

    def save(self, folder) -> Path:
        return save_checkpoint(folder, self.runtime, self.config, self.unwrapped, self.optimizer, self.scheduler,
                               {"step": self.step, "history": self.history, "steps": self.steps})

    def load_state(self, folder) -> None:
        """Restore a checkpoint of this loop (same model, data and settings); `fit` then continues it."""
        folder = find_checkpoint(folder)
        state = load_checkpoint(folder, self.runtime, self.unwrapped, self.optimizer, self.scheduler)
        self.step, self.history, self.steps = state["step"], state["history"], state["steps"]
        metrics = self.output_dir / "metrics.jsonl"
        if self.runtime.is_main_process and metrics.exists():  # the log as of the checkpoint
            rows = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
            metrics.write_text("".join(json.dumps(r) + "\n" for r in rows if r.get("step", 0) <= self.step),
                               encoding="utf-8")


def _epoch_means(steps: list[dict], epoch: int) -> dict:
    """Each statistic's mean over an epoch's steps so far, weighted by their units."""
    rows = [r for r in steps if r["epoch"] == epoch]
    units = sum(r["units"] for r in rows) or 1.0
    keys = [k for k in rows[0] if k not in ("epoch", "units")] if rows else []
    return {k: sum(r[k] * r["units"] for r in rows) / units for k in keys}


def _method_name(config) -> str:
    """sft, reward, dpo, ... from the config class (SFTConfig -> sft)."""
    name = type(config).__name__ if config is not None else "supervised"
    return name[:-len("Config")].lower() if name.endswith("Config") and len(name) > 6 else name.lower()


def shuffled_plan(n: int, epochs: int, batch_size: int, rng) -> list[list[list[int]]]:
    """`epochs` passes over examples 0..n-1, each shuffled by `rng` and cut into batches."""
    plan = []
    for _ in range(epochs):
        order = list(range(n))
        rng.shuffle(order)
        plan.append([order[i:i + batch_size] for i in range(0, n, batch_size)])
    return plan


def start_loop(model, plan, config, name: str) -> SupervisedLoop:
    """The loop for a method's run folder (`config.output_dir`): resumed from its latest checkpoint with
    `config.resume`, else with a fresh metrics.jsonl; `--merge` refused under a sharded engine."""
    out = Path(config.output_dir)
    loop = SupervisedLoop(model, LoopSettings.of(config), plan, out, config)
    if getattr(config, "merge", False) and loop.runtime.sharded:
        raise UserError("--merge under FSDP/DeepSpeed is not supported; save the adapter and run "
                        "`rlhfkit export --model DIR --merge --out DIR`")
    if getattr(config, "resume", False) and latest_checkpoint(out) is not None:
        loop.load_state(out)
        print(f"rlhfkit {name}: resuming at step {loop.step} of {loop.total_steps}")
    elif (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()
    return loop


def latest_checkpoint(output_dir) -> Path | None:
    """The newest checkpoint under output_dir/checkpoints, or None."""
    try:
        return find_checkpoint(output_dir)
    except UserError:
        return None


__all__ = ["LoopSettings", "STATE_FILE", "SupervisedLoop", "SupervisedTask", "latest_checkpoint", "shuffled_plan",
           "start_loop"]
