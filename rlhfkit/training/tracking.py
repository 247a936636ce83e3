"""Experiment tracking for every trainer: `report_to` through accelerate's trackers.

`--report-to tensorboard` (or trackio, wandb, mlflow; several with commas; `none`, the
default, is off) makes the trainer's `Runtime` an `Accelerator(log_with=...)` whose
trackers log on the main process only. Both loops log the rows they already write to
metrics.jsonl, plus the shared names below, so one dashboard compares SFT, the reward
model, DPO and the online methods:

| shared name | supervised loop (SFT, reward, DPO) | online loop (PPO, GRPO, RLOO) |
|---|---|---|
| `train/loss` | `train/loss` | `ppo/loss/total` |
| `train/learning_rate` | `lr` | `ppo/learning_rate` |
| `train/epoch` | `epoch` | - |
| `train/reward` | - | `env/reward_mean` |
| `train/kl` | - | `objective/kl` |

Held-out numbers keep their `eval/` names (`eval/loss`, `eval/accuracy`). TensorBoard
writes event files under `OUTPUT_DIR/logs/rlhfkit/`; Trackio keeps its local database
(`TRACKIO_DIR`, default ~/.cache/huggingface/trackio) unless given a Space; wandb and
MLflow follow their own environment variables (`WANDB_MODE=offline`, `MLFLOW_TRACKING_URI`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

from rlhfkit.errors import UserError

TRACKERS = ("tensorboard", "trackio", "wandb", "mlflow")
PROJECT = "rlhfkit"
# the package each tracker needs, and how to install it
_PACKAGES = {"tensorboard": ("tensorboard", "pip install tensorboard"), "trackio": ("trackio", "pip install trackio"),
             "wandb": ("wandb", "pip install wandb"), "mlflow": ("mlflow", "pip install mlflow")}
SHARED_NAMES = {
    "train/loss": ("train/loss", "ppo/loss/total"),
    "train/learning_rate": ("lr", "ppo/learning_rate"),
    "train/epoch": ("epoch",),
    "train/reward": ("env/reward_mean",),
    "train/kl": ("objective/kl",),
}


def trackers(report_to) -> list[str]:
    """The tracker names of a `report_to` value ("none", "tensorboard", "tensorboard,trackio", a list)."""
    if report_to is None:
        return []
    names = report_to if isinstance(report_to, (list, tuple)) else str(report_to).split(",")
    names = [n.strip().lower() for n in names if n.strip()]
    if names == ["all"]:
        return [n for n in TRACKERS if importlib.util.find_spec(_PACKAGES[n][0]) is not None]
    if "none" in names:
        if len(names) > 1:
            raise UserError(f"--report-to {report_to}: 'none' cannot be combined with trackers")
        return []
    for name in names:
        if name not in TRACKERS:
            raise UserError(f"--report-to {name!r} is not a tracker; use none, {', '.join(TRACKERS)} (or several, "
                            "comma-separated)")
        package, install = _PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            raise UserError(f"--report-to {name} needs the {package} package, which is not installed; run: {install}")
    return names


def accelerator_kwargs(config, output_dir) -> dict:
    """The `Accelerator(...)` keywords for the config's `report_to` (none: no keywords)."""
    names = trackers(getattr(config, "report_to", None))
    if not names:
        return {}
    from accelerate.utils import ProjectConfiguration

    folder = Path(output_dir) if output_dir else Path("runs")
    return {"log_with": names, "project_config": ProjectConfiguration(project_dir=str(folder),
                                                                      logging_dir=str(folder / "logs"))}


def start(runtime, config, output_dir, method: str) -> None:
    """Start the run's trackers (main process) with the config as hyper-parameters; nothing when off."""
    names = trackers(getattr(config, "report_to", None))
    if not names or getattr(runtime, "_tracking_started", False):
        return
    run_name = f"{method}-{Path(output_dir).name}" if output_dir else method
    init = {"trackio": {"name": run_name}, "wandb": {"name": run_name}, "mlflow": {"run_name": run_name}}
    if runtime.is_main_process and output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
    runtime.init_trackers(PROJECT, config=hyperparameters(config, method),
                          init_kwargs={k: v for k, v in init.items() if k in names})
    runtime._tracking_started = True


def hyperparameters(config, method: str) -> dict:
    """The config as flat scalars (trackers take bool, int, float and str; lists become text)."""
    values = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config or {})
    out = {"method": method}
    for key, value in values.items():
        if value is None or isinstance(value, (bool, int, float, str)):
            out[key] = "None" if value is None else value
        else:
            out[key] = str(value)
    return out


def with_shared_names(row: dict) -> dict:
    """The row's numbers plus the shared names (see the module docstring)."""
    values = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for shared, sources in SHARED_NAMES.items():
        if shared not in values:
            for source in sources:
                if source in values:
                    values[shared] = values[source]
                    break
    return values


def log(runtime, row: dict, step: int) -> None:
    """Log a metrics row at `step` to every started tracker (main process; a no-op when off)."""
    if getattr(runtime, "_tracking_started", False):
        runtime.log(with_shared_names({k: v for k, v in row.items() if k != "step"}), step=int(step))


def finish(runtime) -> None:
    """Close the trackers (flushes TensorBoard's event file, ends the Trackio/wandb/MLflow run)."""
    if getattr(runtime, "_tracking_started", False):
        runtime.end_training()
        runtime._tracking_started = False
