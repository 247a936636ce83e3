"""`rlhfkit prune --model DIR --method magnitude|wanda|depth --sparsity 0.5 [--pattern 2:4] --calibration prompts --out DIR`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhfkit.config import add_config_command, option


@dataclass
class PruneConfig:
    model: str = option(None, "the tuned model: a full folder, an adapter folder (merged first) or a model name")
    output_dir: str = option(None, "folder to write the pruned transformers model into (dense, with zeros)")
    method: Literal["magnitude", "wanda", "depth"] = option(
        "wanda", "magnitude: smallest |w| per layer; wanda: smallest |w| x input norm per output row (needs "
                 "--calibration); depth: drop whole blocks of lowest block influence (needs --calibration)")
    sparsity: float | None = option(None, "fraction of block weights to remove, in (0, 1) (depth: of blocks)")
    pattern: str | None = option(None, "N:M pattern instead of --sparsity: keep N of every M weights, e.g. 2:4")
    drop_layers: int | None = option(None, "depth: how many blocks to drop")
    calibration: str | None = option(None, "calibration prompts file (rows {prompt}); the shipped training prompts "
                                           "when not given and the method needs some")
    n_calibration: int = option(64, "calibration prompts used")
    recover_steps: int = option(0, "then distil from the unpruned model for this many steps to recover (zeros kept "
                                   "at zero); 0 = off")
    recover_data: str | None = option(None, "prompts for the recovery distillation (default: the calibration prompts)")
    heldout_prompts: str | None = option(None, "held-out prompts for the deployment table (default: the shipped ones)")
    heldout_text: str | None = option(None, "held-out text for perplexity (default: the shipped documents)")
    n_prompts: int = option(32, "held-out prompts the table samples on")
    max_new_tokens: int = option(32, "tokens per sampled completion in the table")
    measure: bool = option(True, "write the deployment table (metrics.json, report.html) comparing the input")
    seed: int = option(0, "random seed")


def run_prune(config: PruneConfig) -> int:
    from pathlib import Path

    from rlhfkit.compression.measure import ASSETS
    from rlhfkit.compression.prune import prune_model
    from rlhfkit.errors import UserError

    calibration = config.calibration
    if calibration is None and config.method in ("wanda", "depth"):
        calibration = str(ASSETS / "prompts_train.jsonl")
        print(f"rlhfkit prune: calibrating on {calibration}")
    if config.recover_steps < 0:
        raise UserError("--recover-steps must be >= 0")
    result = prune_model(config.model, config.output_dir, config.method, config.sparsity, config.pattern,
                         calibration, config.n_calibration, config.drop_layers)
    folder = result.out
    if config.recover_steps:
        import shutil

        from rlhfkit.methods.distill import DistillConfig, train_distill

        data = config.recover_data or calibration or str(ASSETS / "prompts_train.jsonl")
        pruned = Path(str(folder) + ".before-recovery")
        if pruned.exists():
            shutil.rmtree(pruned)
        folder.rename(pruned)
        batch = 8
        train_distill(DistillConfig(teacher=config.model, student=str(pruned), data=data, output_dir=str(folder),
                                    keep_sparsity=config.method != "depth", limit=config.recover_steps * batch,
                                    batch_size=batch, measure=False, seed=config.seed))
        print(f"rlhfkit prune: recovered by distillation into {folder} (the pruned model before it: {pruned})")
    if config.measure:
        from rlhfkit.compression.measure import MeasureSettings, deployment_table

        models = {f"{config.method}": str(folder)}
        if config.recover_steps:
            models = {f"{config.method} (no recovery)": str(Path(str(folder) + ".before-recovery")), **models}
        deployment_table(config.model, models, folder, MeasureSettings.of(config), title=f"rlhfkit prune ({config.method})")
    return 0


def add_command(subparsers) -> None:
    add_config_command(subparsers, "prune", "prune the tuned model (magnitude, Wanda, N:M, depth by block "
                       "influence), optionally recover by distillation; writes a plain folder and the deployment table",
                       PruneConfig, run_prune)
