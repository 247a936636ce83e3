"""`rlhfkit distill --teacher DIR --student NAME|--student-layers N --data prompts --out DIR`."""

from __future__ import annotations

from rlhfkit.config import add_config_command
from rlhfkit.methods.distill import DistillConfig, train_distill


def run_distill(config: DistillConfig) -> int:
    result = train_distill(config)
    if config.measure:
        from rlhfkit.compression.measure import MeasureSettings, deployment_table

        models = {"student": result["out"]}
        if result.get("undistilled"):
            models["layer-dropped, not distilled"] = result["undistilled"]
        deployment_table(config.teacher, models, result["out"], MeasureSettings.of(config), title="rlhfkit distill")
    return 0


def add_command(subparsers) -> None:
    add_config_command(subparsers, "distill", "distil the tuned model into a smaller student (soft targets at a "
                       "temperature + hard labels; reverse KL / generalised JSD with on-policy samples as GKD)",
                       DistillConfig, run_distill)
