"""Statistics for before/after comparisons, pure numpy; scores are one row per prompt, one column per sample.

- `bootstrap_ci`: percentile-bootstrap confidence interval of a statistic (mean,
  std, ...), resampling prompts (rows) with replacement;
- `summarize`: mean and std of scores with their CIs;
- `paired_change`: baseline vs model on the *same* prompts: the difference and
  the relative change of the mean and of the std, with CIs from a paired
  bootstrap (each replicate resamples prompts once and uses that resample for
  both models, so the CI reflects prompt-to-prompt variation only once).

Sign convention, everywhere: change = model - baseline, relative change =
(model - baseline) / |baseline|. A negative relative change means the number
fell; whether that is good depends on the score (toxicity: lower is better).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from rlhfkit.errors import UserError

# ---------------------------------------------------------------- statistics


def sample_std(x, axis=None):
    """Standard deviation with Bessel's correction (ddof=1) when there are at least 2 values."""
    x = np.asarray(x, dtype=float)
    n = x.size if axis is None else x.shape[axis]
    return np.std(x, axis=axis, ddof=1 if n > 1 else 0)


def _rows(values) -> np.ndarray:
    """Scores as a 2-D float array [prompts, samples per prompt]."""
    x = np.asarray(values, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"expected scores as [prompts] or [prompts, samples], got shape {x.shape}")
    return x


def _apply(stat: Callable, samples: np.ndarray) -> np.ndarray:
    """stat over each row of [n_boot, m]; vectorised when stat takes `axis`."""
    try:
        out = np.asarray(stat(samples, axis=1), dtype=float)
        if out.shape == (samples.shape[0],):
            return out
    except TypeError:
        pass
    return np.array([float(stat(row)) for row in samples])


def _percentile_interval(replicates: np.ndarray, level: float) -> tuple[float, float]:
    """The central `level` interval of the bootstrap replicates; NaN when too few are finite."""
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0 or finite.size < 0.9 * replicates.size:
        return (math.nan, math.nan)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return (float(low), float(high))


def _check_level(level: float, n_boot: int) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1 (e.g. 0.95), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")


def bootstrap_ci(values, stat: Callable = np.mean, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap CI (low, high) of `stat` over `values`.

    values: [n] or [n_prompts, k]; rows (prompts) are resampled with
    replacement, keeping a prompt's k samples together. stat: a function of a
    1-D array, ideally accepting `axis` (np.mean, np.median, `sample_std`) so the
    replicates are computed in one vectorised call. Empty input gives (nan, nan).
    """
    _check_level(level, n_boot)
    rows = _rows(values)
    n = rows.shape[0]
    if n == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    replicates = _apply(stat, rows[idx].reshape(n_boot, -1))
    return _percentile_interval(replicates, level)


def summarize(scores, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """mean, std (ddof=1) and their bootstrap CIs; n = prompts, n_values = scores (prompts x samples)."""
    rows = _rows(scores)
    flat = rows.ravel()
    if flat.size == 0:
        nan2 = (math.nan, math.nan)
        return dict(mean=math.nan, std=math.nan, mean_ci=nan2, std_ci=nan2, n=0, n_values=0,
                    median=math.nan, min=math.nan, max=math.nan)
    return dict(
        mean=float(flat.mean()), std=float(sample_std(flat)),
        mean_ci=bootstrap_ci(rows, np.mean, n_boot, level, seed),
        std_ci=bootstrap_ci(rows, sample_std, n_boot, level, seed),
        n=int(rows.shape[0]), n_values=int(flat.size),
        median=float(np.median(flat)), min=float(flat.min()), max=float(flat.max()),
    )


def _excludes_zero(ci) -> bool:
    low, high = ci
    return bool(math.isfinite(low) and math.isfinite(high) and (low > 0 or high < 0))


def paired_change(before, after, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Change of mean and std from `before` (baseline) to `after` (model) on the same prompts.

    before, after: [n] or [n_prompts, k], row i of both answering prompt i.
    Each bootstrap replicate draws one resample of prompts and applies it to
    both, so the CIs are paired. Keys:

      before_mean, after_mean, diff (= after - before), diff_ci,
      relative_change (= diff / |before_mean|, None-like NaN when before_mean is 0),
      relative_change_ci, excludes_zero (the diff CI excludes 0);
      the same for the std: before_std, after_std, std_diff, std_diff_ci,
      std_relative_change, std_relative_change_ci, std_excludes_zero;
      n (prompts), n_boot, level.
    """
    _check_level(level, n_boot)
    b, a = _rows(before), _rows(after)
    if b.shape != a.shape:
        raise ValueError(f"paired scores must have the same shape, got {b.shape} and {a.shape}")
    n = b.shape[0]
    out: dict = {"n": int(n), "n_boot": int(n_boot), "level": float(level)}
    if n == 0:
        idx = np.zeros((n_boot, 0), dtype=int)
    else:
        idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    b_rep, a_rep = b[idx].reshape(n_boot, -1), a[idx].reshape(n_boot, -1)
    for name, fn in (("mean", np.mean), ("std", sample_std)):
        prefix = "" if name == "mean" else "std_"
        if n == 0:
            stat_b = stat_a = math.nan
            rep_b = rep_a = np.full(n_boot, math.nan)
        else:
            stat_b, stat_a = float(fn(b.ravel())), float(fn(a.ravel()))
            rep_b, rep_a = fn(b_rep, axis=1), fn(a_rep, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = (stat_a - stat_b) / abs(stat_b) if stat_b != 0 else math.nan
            rel_rep = (rep_a - rep_b) / np.abs(rep_b)
        diff_ci = _percentile_interval(rep_a - rep_b, level)
        out[f"before_{name}"], out[f"after_{name}"] = stat_b, stat_a
        out[f"{prefix}diff"] = stat_a - stat_b
        out[f"{prefix}diff_ci"] = diff_ci
        out[f"{prefix}relative_change"] = float(rel)
        out[f"{prefix}relative_change_ci"] = _percentile_interval(rel_rep, level) if math.isfinite(rel) else (math.nan, math.nan)
        out[f"{prefix}excludes_zero"] = _excludes_zero(diff_ci)
    return out


def verdict(change: dict, higher_is_better: bool, prefix: str = "") -> str:
    """'better', 'worse' or 'no clear change' (the diff CI includes 0)."""
    if not change.get(f"{prefix}excludes_zero"):
        return "no clear change"
    up = change[f"{prefix}diff"] > 0
    return "better" if up == higher_is_better else "worse"


def compare_scores(scores: dict, higher_is_better: dict, baseline: str | None = None, n_boot: int = 2000,
                   level: float = 0.95, seed: int = 0) -> dict:
    """Summaries of each model's scores and paired changes of each model vs the baseline.

    scores: {model: {scorer: [n_prompts] or [n_prompts, k]}} on the same prompts;
    higher_is_better: {scorer: bool}. Returns {"summary": {model: {scorer:
    summarize()}}, "changes": {model: {scorer: paired_change() + higher_is_better,
    verdict, std_verdict}}, "scores": {model: {scorer: flat list}}}.
    """
    if baseline is not None and baseline not in scores:
        raise UserError(f"baseline '{baseline}' is not one of the models {sorted(scores)}")
    summary = {m: {s: summarize(v, n_boot, level, seed) for s, v in per.items()} for m, per in scores.items()}
    changes: dict = {}
    if baseline is not None:
        for model, per in scores.items():
            if model == baseline:
                continue
            changes[model] = {}
            for scorer, values in per.items():
                c = paired_change(scores[baseline][scorer], values, n_boot, level, seed)
                hib = bool(higher_is_better.get(scorer, True))
                c.update(higher_is_better=hib, verdict=verdict(c, hib), std_verdict=verdict(c, hib, "std_"))
                changes[model][scorer] = c
    flat = {m: {s: _rows(v).ravel().tolist() for s, v in per.items()} for m, per in scores.items()}
    return {"summary": summary, "changes": changes, "scores": flat}


def kl_statistics(per_response, tokens, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """KL summary from per-response sums of log-ratios [n_prompts, k] and response lengths in tokens."""
    rows = _rows(per_response)
    total_tokens = int(np.sum(tokens))
    flat = rows.ravel()
    return dict(
        mean=float(flat.mean()) if flat.size else math.nan,
        ci=bootstrap_ci(rows, np.mean, n_boot, level, seed),
        std=float(sample_std(flat)) if flat.size else math.nan,
        per_token=float(flat.sum() / total_tokens) if total_tokens else math.nan,
        negative_fraction=float(np.mean(flat < 0)) if flat.size else math.nan,
        n=int(rows.shape[0]), tokens=total_tokens,
    )
