"""Plots (PNG) of a run: training curves from metrics.jsonl, score distributions from an evaluation.

- `plot_training(metrics, out_dir)`: reward and KL per step, reward against KL;
- `plot_distributions(result, out_dir)`: each score's distribution per model
  (histogram and cumulative fraction), from an `rlhfkit.evaluation` result.

Plots use matplotlib's `Figure` directly (the Agg renderer, no pyplot global
state), so they work headless and from threads.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from rlhfkit.errors import UserError

REWARD_KEY, REWARD_STD_KEY, KL_KEY = "env/reward_mean", "env/reward_std", "objective/kl"
_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


# ---------------------------------------------------------------- metrics


def load_metrics(metrics) -> list[dict]:
    """Rows of a metrics.jsonl file (path) or a list of dicts, as given."""
    if metrics is None:
        return []
    if isinstance(metrics, (str, Path)):
        path = Path(metrics)
        if not path.exists():
            raise UserError(f"{path}: metrics file not found; point to the run's metrics.jsonl")
        rows = []
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError(f"{path}: line {line_no} is not valid JSON") from None
        return rows
    return [dict(r) for r in metrics]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    """(steps, values) of the rows holding a finite `key`; the step is row['step'] or its position."""
    steps, values = [], []
    for i, r in enumerate(rows):
        if _finite(r.get(key)):
            steps.append(r["step"] if _finite(r.get("step")) else i + 1)
            values.append(float(r[key]))
    return steps, values


# ---------------------------------------------------------------- plots


def _figure(nrows: int = 1, ncols: int = 1, size=(7.0, 4.2), **kw):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=110, layout="constrained")
    axes = fig.subplots(nrows, ncols, **kw)
    return fig, axes


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})
    return path


def plot_training(metrics, out_dir) -> list[Path]:
    """`training_curves.png` (reward and KL per PPO step) and `reward_vs_kl.png`; [] without the keys.

    metrics: a metrics.jsonl path or a list of per-step dicts holding
    `env/reward_mean` (optionally `env/reward_std`) and `objective/kl`.
    """
    rows = load_metrics(metrics)
    out = Path(out_dir)
    r_steps, reward = _series(rows, REWARD_KEY)
    k_steps, kl = _series(rows, KL_KEY)
    paths = []
    if reward or kl:
        fig, (ax_r, ax_k) = _figure(2, 1, size=(7.0, 5.6), sharex=True)
        if reward:
            ax_r.plot(r_steps, reward, marker="o", ms=3, color=_COLORS[0], label="batch mean reward")
            s_steps, std = _series(rows, REWARD_STD_KEY)
            if std and s_steps == r_steps:
                low = [m - s for m, s in zip(reward, std)]
                high = [m + s for m, s in zip(reward, std)]
                ax_r.fill_between(r_steps, low, high, color=_COLORS[0], alpha=0.15, label="± 1 std over the batch")
            ax_r.legend(loc="best", fontsize=8)
        ax_r.set_title("Reward per PPO step")
        ax_r.set_ylabel("reward (score units)")
        ax_r.grid(alpha=0.3)
        if kl:
            ax_k.plot(k_steps, kl, marker="o", ms=3, color=_COLORS[1], label="KL(policy || reference)")
            ax_k.axhline(0, color="grey", lw=0.8, ls="--")
            ax_k.legend(loc="best", fontsize=8)
        ax_k.set_title("KL to the reference per PPO step")
        ax_k.set_ylabel("KL (nats per response)")
        ax_k.set_xlabel("PPO step")
        ax_k.grid(alpha=0.3)
        paths.append(_save(fig, out / "training_curves.png"))
    both = [(r, k, s) for s, r in zip(r_steps, reward) for s2, k in zip(k_steps, kl) if s == s2]
    if both:
        fig, ax = _figure()
        xs, ys, steps = [b[1] for b in both], [b[0] for b in both], [b[2] for b in both]
        ax.plot(xs, ys, color="grey", lw=0.8, alpha=0.6)
        points = ax.scatter(xs, ys, c=steps, cmap="viridis", s=28, zorder=3, label="one PPO step")
        fig.colorbar(points, ax=ax, label="PPO step")
        ax.set_title("Reward against KL: what the reward cost in drift from the reference")
        ax.set_xlabel("KL(policy || reference) (nats per response)")
        ax.set_ylabel("batch mean reward (score units)")
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
        paths.append(_save(fig, out / "reward_vs_kl.png"))
    return paths


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "score"


def plot_distributions(result: dict, out_dir) -> list[Path]:
    """One `scores_<scorer>.png` per score: histogram and cumulative fraction per model (before/after)."""
    import numpy as np

    out, paths = Path(out_dir), []
    scores = result.get("scores") or {}
    models = list(scores)
    if result.get("baseline") in models:  # baseline first: "before", then "after"
        models.remove(result["baseline"])
        models.insert(0, result["baseline"])
    for scorer in result.get("scorers", []):
        name = scorer["name"]
        data = {m: np.array([v for v in scores[m].get(name, []) if _finite(v)]) for m in models}
        data = {m: v for m, v in data.items() if v.size}
        if not data:
            continue
        lo = min(float(v.min()) for v in data.values())
        hi = max(float(v.max()) for v in data.values())
        bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 31)
        fig, (ax_h, ax_c) = _figure(1, 2, size=(10.0, 4.0))
        for i, (m, v) in enumerate(data.items()):
            color = _COLORS[i % len(_COLORS)]
            role = " (baseline)" if m == result.get("baseline") and "baseline" not in m.lower() else ""
            label = f"{m}{role}: mean {v.mean():.3f}"
            ax_h.hist(v, bins=bins, histtype="stepfilled", alpha=0.25, color=color)
            ax_h.hist(v, bins=bins, histtype="step", lw=1.5, color=color, label=label)
            ax_h.axvline(v.mean(), color=color, ls="--", lw=1)
            xs = np.sort(v)
            ax_c.step(xs, np.arange(1, xs.size + 1) / xs.size, where="post", color=color, lw=1.5, label=f"{m}{role}")
        better = "higher" if scorer.get("higher_is_better", True) else "lower"
        ax_h.set_title(f"{name}: distribution before and after (dashed: means)")
        ax_h.set_xlabel(f"{name} score per response ({better} is better)")
        ax_h.set_ylabel("responses")
        ax_h.legend(loc="best", fontsize=8)
        ax_h.grid(alpha=0.3)
        ax_c.set_title(f"{name}: cumulative fraction of responses")
        ax_c.set_xlabel(f"{name} score per response ({better} is better)")
        ax_c.set_ylabel("fraction of responses with score ≤ x")
        ax_c.set_ylim(0, 1.02)
        ax_c.legend(loc="best", fontsize=8)
        ax_c.grid(alpha=0.3)
        paths.append(_save(fig, out / f"scores_{_safe_name(name)}.png"))
    return paths
