"""Run folders and checkpoints that resume exactly, for every loop.

A checkpoint folder holds `config.yaml`, the trainable weights (adapter or full
model, plus a value head), optimizer and scheduler state, the loop's own state
(`trainer_state.json`: step, controllers, data position, metrics so far, ...) and one
RNG file per process. The main process writes the shared files; every process its RNG.
`RunLog` appends metrics.jsonl / samples.jsonl and rewinds them on resume.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from rlhfkit.config import save_yaml
from rlhfkit.errors import UserError

STATE_FILE, WEIGHTS_FILE, OPTIMIZER_FILE = "trainer_state.json", "trainable.safetensors", "optimizer.pt"
ENGINE_DIR = "engine"  # accelerate's save_state of the sharded weights and optimizer (FSDP, DeepSpeed)


def trainable_state(model) -> dict:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(folder, runtime, config, model, optimizer, scheduler, state: dict) -> Path:
    """Write a checkpoint of `model`'s trainable weights, optimizer, scheduler, `state` and the RNGs.

    Everything goes into `FOLDER.partial` first, which is renamed to `FOLDER` once every process has
    written its part: a run killed mid-save leaves no half checkpoint that a resume would pick up.
    """
    import shutil

    from safetensors.torch import save_file

    folder = Path(folder)
    partial = folder.with_name(folder.name + ".partial")
    sharded = getattr(runtime, "sharded", False)
    runtime.wait_for_everyone()
    if runtime.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        save_yaml(config, partial / "config.yaml")
        if not sharded:
            save_file(trainable_state(model), str(partial / WEIGHTS_FILE))
        torch.save({"optimizer": None if sharded else optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler else None}, partial / OPTIMIZER_FILE)
        (partial / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")
    runtime.wait_for_everyone()
    if sharded:  # FSDP / DeepSpeed: each process writes its shards of the weights and optimizer state
        runtime.save_state(str(partial / ENGINE_DIR))
        runtime.wait_for_everyone()
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    torch.save(rng, partial / f"rng_state_{runtime.process_index}.pt")
    runtime.wait_for_everyone()
    if runtime.is_main_process:
        if folder.exists():
            shutil.rmtree(folder)
        partial.rename(folder)
    runtime.wait_for_everyone()
    return folder


def load_checkpoint(folder, runtime, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer, scheduler and RNGs that `save_checkpoint` wrote; returns the loop state."""
    from safetensors.torch import load_file

    folder = Path(folder)
    # safetensors and torch.load take "cpu", not the "cpu:0" that accelerate's gloo processes run on
    device = "cpu" if runtime.device.type == "cpu" else str(runtime.device)
    sharded = getattr(runtime, "sharded", False)
    if sharded != (folder / ENGINE_DIR).is_dir():
        raise UserError(f"{folder}: saved {'with' if not sharded else 'without'} a sharding engine (FSDP/DeepSpeed); "
                        "resume with the launch config it was saved with")
    if sharded:
        runtime.load_state(str(folder / ENGINE_DIR))
    else:
        weights = load_file(str(folder / WEIGHTS_FILE), device=device)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        if set(weights) != trainable:
            raise UserError(f"{folder}: checkpoint weights do not match this model ({len(set(weights) ^ trainable)} "
                            "names differ); resume with the same model and LoRA settings")
        model.load_state_dict(weights, strict=False)
    opt = torch.load(folder / OPTIMIZER_FILE, weights_only=False, map_location=device)
    if opt["optimizer"] is not None:
        optimizer.load_state_dict(opt["optimizer"])
    if scheduler is not None and opt["scheduler"] is not None:
        scheduler.load_state_dict(opt["scheduler"])
    state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    rng_file = folder / f"rng_state_{runtime.process_index}.pt"
    if not rng_file.exists():
        raise UserError(f"{folder}: no RNG state for process {runtime.process_index}; resume with the number of "
                        "processes the run was saved with")
    rng = torch.load(rng_file, weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state


def find_checkpoint(folder) -> Path:
    """A checkpoint folder itself, or the latest `checkpoints/step-N` of a run folder."""
    folder = Path(folder)
    if (folder / STATE_FILE).exists():
        return folder
    steps = sorted((int(p.name.split("-")[1]), p) for p in (folder / "checkpoints").glob("step-*")
                   if p.name.split("-")[1].isdigit() and (p / STATE_FILE).exists()) \
        if (folder / "checkpoints").is_dir() else []
    if not steps:
        raise UserError(f"{folder}: no checkpoint here (expected {STATE_FILE} or checkpoints/step-N/)")
    return steps[-1][1]


class RunLog:
    """metrics.jsonl and samples.jsonl of a run folder, written by the main process only."""

    def __init__(self, run_dir: Path | None, is_main: bool, samples_per_step: int = 0):
        self.run_dir, self.is_main, self.samples_per_step = run_dir, is_main, samples_per_step

    @property
    def active(self) -> bool:
        return self.run_dir is not None and self.is_main

    def append(self, row: dict, step: int, batch: dict | None = None, scores=None) -> None:
        """A stats row to metrics.jsonl and the first few `batch["query"]`/`batch["response"]` rows with scores."""
        if not self.active:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        n = self.samples_per_step
        if batch and "query" in batch and "response" in batch and n:
            from rlhfkit.data import prompt_text

            scores = [float(s) for s in scores] if scores is not None else [None] * len(batch["response"])
            with open(self.run_dir / "samples.jsonl", "a", encoding="utf-8") as f:
                for q, r, s in list(zip(batch["query"], batch["response"], scores))[:n]:
                    q = q if isinstance(q, str) else prompt_text(q) if isinstance(q, list) else str(q)
                    f.write(json.dumps({"step": step, "prompt": q, "response": r, "score": s}, ensure_ascii=False) + "\n")

    def rewind(self, history: list[dict], step: int) -> None:
        """The logs as of a checkpoint at `step` (a stopped run may have logged further)."""
        if not self.active or not self.run_dir.exists():
            return
        with open(self.run_dir / "metrics.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in history)
        samples = self.run_dir / "samples.jsonl"
        if samples.exists():
            rows = [line for line in samples.read_text(encoding="utf-8").splitlines()
                    if line and json.loads(line)["step"] <= step]
            samples.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
