"""The PPO run folder: metrics/sample logs, and checkpoints that resume exactly
(what `PPOTrainer.save` writes and `load_state` reads).

A checkpoint folder holds `config.yaml`, the trainable weights (adapter or full
model, plus value head), optimizer and scheduler state, the trainer state (step,
KL controller, running score statistics, data position, metrics so far) and one
RNG file per process. `PPOTrainer.save/load_state/resume` are the public API;
these functions do the work.
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


def save_checkpoint(trainer, folder) -> Path:
    """Write `trainer`'s full state to `folder` (every process writes its own RNG file)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    acc = trainer.accelerator
    acc.wait_for_everyone()
    if acc.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        save_yaml(trainer.config, folder / "config.yaml")
        weights = {n: p.detach().contiguous().cpu() for n, p in trainer.unwrapped.named_parameters() if p.requires_grad}
        save_file(weights, str(folder / WEIGHTS_FILE))
        torch.save({"optimizer": trainer.optimizer.state_dict(),
                    "scheduler": trainer.scheduler.state_dict() if trainer.scheduler else None}, folder / OPTIMIZER_FILE)
        state = {"step": trainer.step_count, "skipped_steps": trainer.skipped_steps, "bad_in_row": trainer.bad_in_row,
                 "kl_ctl": trainer.kl_ctl.state_dict(), "score_stats": trainer.score_stats.state_dict(),
                 "data_position": trainer.data_position, "history": trainer.history, "trend": trainer._trend,
                 "warned": sorted(trainer._warned)}
        (folder / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")
    acc.wait_for_everyone()
    folder.mkdir(parents=True, exist_ok=True)
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    torch.save(rng, folder / f"rng_state_{acc.process_index}.pt")
    acc.wait_for_everyone()
    return folder


def load_checkpoint(trainer, folder) -> None:
    """Restore everything `save_checkpoint` wrote into a freshly built `trainer`."""
    from safetensors.torch import load_file

    folder = Path(folder)
    device = trainer.accelerator.device
    weights = load_file(str(folder / WEIGHTS_FILE), device=str(device))
    trainable = {n for n, p in trainer.unwrapped.named_parameters() if p.requires_grad}
    if set(weights) != trainable:
        raise UserError(f"{folder}: checkpoint weights do not match this model ({len(set(weights) ^ trainable)} "
                        "names differ); resume with the same model and LoRA settings")
    trainer.unwrapped.load_state_dict(weights, strict=False)
    opt = torch.load(folder / OPTIMIZER_FILE, weights_only=False, map_location=device)
    trainer.optimizer.load_state_dict(opt["optimizer"])
    if trainer.scheduler is not None and opt["scheduler"] is not None:
        trainer.scheduler.load_state_dict(opt["scheduler"])
    state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    trainer.step_count, trainer.skipped_steps, trainer.bad_in_row = state["step"], state["skipped_steps"], state["bad_in_row"]
    trainer.kl_ctl.load_state_dict(state["kl_ctl"])
    trainer.score_stats.load_state_dict(state["score_stats"])
    trainer.data_position, trainer.history, trainer._trend = state["data_position"], state["history"], state["trend"]
    trainer._warned = set(state["warned"])
    rng = torch.load(folder / f"rng_state_{trainer.accelerator.process_index}.pt", weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    rewrite_logs(trainer)


def append_logs(trainer, row: dict, batch: dict | None = None, scores=None) -> None:
    """Append a step's stats row to metrics.jsonl and a few `batch["query"]`/`batch["response"]`
    rows with their scores to samples.jsonl (main process, with a run folder only)."""
    run_dir = trainer.run_dir
    if run_dir is None or not trainer.accelerator.is_main_process:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    n = trainer.config.samples_per_step
    if batch and "query" in batch and "response" in batch and n:
        from rlhfkit.data import prompt_text

        scores = [float(s) for s in scores] if scores is not None else [None] * len(batch["response"])
        with open(run_dir / "samples.jsonl", "a", encoding="utf-8") as f:
            for q, r, s in list(zip(batch["query"], batch["response"], scores))[:n]:
                q = q if isinstance(q, str) else prompt_text(q) if isinstance(q, list) else str(q)
                f.write(json.dumps({"step": trainer.step_count, "prompt": q, "response": r, "score": s},
                                   ensure_ascii=False) + "\n")


def rewrite_logs(trainer) -> None:
    """The run folder's logs as of the checkpoint (a stopped run may have logged further)."""
    run_dir = trainer.run_dir
    if run_dir is None or not trainer.accelerator.is_main_process or not run_dir.exists():
        return
    with open(run_dir / "metrics.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in trainer.history)
    samples = run_dir / "samples.jsonl"
    if samples.exists():
        rows = [line for line in samples.read_text(encoding="utf-8").splitlines()
                if line and json.loads(line)["step"] <= trainer.step_count]
        samples.write_text("".join(r + "\n" for r in rows), encoding="utf-8")


def save_final_model(trainer, folder) -> None:
    """The policy via save_pretrained (the adapter with LoRA), its tokenizer and the value head."""
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        trainer.unwrapped.save_pretrained(folder)
        trainer.tokenizer.save_pretrained(str(folder))


def find_checkpoint(folder) -> Path:
    """A checkpoint folder itself, or the latest `checkpoints/step-N` of a run folder."""
    folder = Path(folder)
    if (folder / STATE_FILE).exists():
        return folder
    steps = sorted((int(p.name.split("-")[1]), p) for p in (folder / "checkpoints").glob("step-*")
                   if (p / STATE_FILE).exists()) if (folder / "checkpoints").is_dir() else []
    if not steps:
        raise UserError(f"{folder}: no checkpoint here (expected {STATE_FILE} or checkpoints/step-N/)")
    return steps[-1][1]
