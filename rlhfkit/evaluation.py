"""Before/after evaluation with honest statistics.

Statistics (pure numpy; scores are one row per prompt, one column per sample):

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

The runner `evaluate` samples completions from each model on the same prompts
with the same seed (common random numbers), scores them with each reward
source, and adds KL(model || baseline) measured on the model's own responses:
the mean over responses of sum over tokens of (log p_model - log p_baseline).
`rlhfkit.summary.format_summary` prints the result; `save_json` writes it with every float
finite or null.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from rlhfkit.errors import UserError

from rlhfkit.summary import SIGN_CONVENTION


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


# ---------------------------------------------------------------- models to evaluate


class WithoutAdapters:
    """The base network of a peft policy: the same weights with its adapters disabled (no second copy).

        evaluate({"baseline": WithoutAdapters(policy), "tuned": policy}, ...)
    """

    def __init__(self, policy):
        model = getattr(policy, "model", policy)
        if not hasattr(model, "disable_adapter"):
            raise UserError("WithoutAdapters needs a peft (LoRA) policy; pass the baseline model itself instead")
        self.policy, self.model, self.tokenizer = policy, model, policy.tokenizer

    def context(self):
        return self.model.disable_adapter()

    def __repr__(self) -> str:
        return "WithoutAdapters(policy)"


@dataclasses.dataclass
class _Entry:
    name: str
    source: str
    model: object
    tokenizer: object
    context: Callable = contextlib.nullcontext


def _resolve(name: str, value, dtype, verbose: bool, loaded: dict) -> _Entry:
    if isinstance(value, (str, Path)):
        from rlhfkit.models import load_policy

        if str(value) not in loaded:  # the same source twice (A vs A) loads once
            loaded[str(value)] = load_policy(str(value), dtype=dtype, verbose=verbose)
        policy = loaded[str(value)]
        return _Entry(name, str(value), policy.model, policy.tokenizer)
    model, tokenizer = getattr(value, "model", None), getattr(value, "tokenizer", None)
    if model is None or tokenizer is None:
        raise UserError(f"model '{name}': pass a name/folder or a loaded Policy (with .model and .tokenizer), got {type(value).__name__}")
    if hasattr(model, "v_head") and hasattr(model, "pretrained_model"):
        model = model.pretrained_model  # a value-head wrapper: evaluate its language model
    context = getattr(value, "context", None) or contextlib.nullcontext
    return _Entry(name, repr(value) if isinstance(value, WithoutAdapters) else type(model).__name__, model, tokenizer, context)


@dataclasses.dataclass
class _Generations:
    queries: list      # per prompt: token ids
    responses: list    # per response (prompt-major, k per prompt): token ids
    texts: list        # per response
    seconds: float


def _generate(entry: _Entry, prompts, k: int, settings, batch_size: int, seed: int, max_prompt_tokens, progress) -> _Generations:
    """k sampled responses per prompt, keeping token ids (for the KL) and texts (for the scores)."""
    import torch
    from tqdm.auto import tqdm

    from rlhfkit.generation import encode_prompts, sample

    start = time.perf_counter()
    model, tok = entry.model, entry.tokenizer
    queries = encode_prompts(tok, prompts, max_length=max_prompt_tokens)
    per_batch = max(1, batch_size // k)
    responses: list = []
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        with entry.context(), tqdm(total=len(queries), desc=f"generating ({entry.name})", unit="prompt",
                                   disable=not progress) as bar:
            for i in range(0, len(queries), per_batch):
                chunk = queries[i:i + per_batch]
                responses += sample(model, tok, chunk, settings, num_return_sequences=k)
                bar.update(len(chunk))
    finally:
        model.train(was_training)
    texts = [t.strip() for t in tok.batch_decode(responses, skip_special_tokens=True)]
    return _Generations(queries, responses, texts, time.perf_counter() - start)


def _kl_to_baseline(entry: _Entry, base: _Entry, gen: _Generations, prompts, k, temperature, batch_size,
                    max_prompt_tokens, stats_kw) -> dict:
    """KL(model || baseline) on the model's responses; {'skipped': reason} when tokenizers differ."""
    from rlhfkit.generation import encode_prompts
    from rlhfkit.rollout import response_logprobs

    if base.tokenizer is not entry.tokenizer and (
        len(base.tokenizer) != len(entry.tokenizer)
        or encode_prompts(base.tokenizer, prompts, max_length=max_prompt_tokens) != gen.queries
    ):
        return {"skipped": "the baseline tokenizes differently, so per-token log-probs are not comparable"}
    queries = [q for q in gen.queries for _ in range(k)]
    pad_id = entry.tokenizer.pad_token_id
    logps = []
    for e in (entry, base):
        with e.context():
            logps.append(response_logprobs(e.model, queries, gen.responses, pad_id, temperature, batch_size))
    per = np.array([float((a.double() - b.double()).sum()) for a, b in zip(*logps)]).reshape(len(prompts), k)
    tokens = [len(x) for x in logps[0]]
    return {**kl_statistics(per, tokens, **stats_kw), "per_response": per.ravel().tolist()}


def _lengths(gen: _Generations, tokenizer, max_new_tokens: int) -> dict:
    lengths = np.array([len(r) for r in gen.responses], dtype=float)
    eos = tokenizer.eos_token_id
    hit = [len(r) >= max_new_tokens and (not r or r[-1] != eos) for r in gen.responses]
    return {"mean_tokens": float(lengths.mean()) if lengths.size else math.nan,
            "hit_limit_fraction": float(np.mean(hit)) if hit else math.nan,
            "generation_seconds": gen.seconds}


def _scorer_sources(scorers) -> list:
    from rlhfkit.rewards import get_reward

    if isinstance(scorers, (str, Path)) or callable(scorers):
        scorers = [scorers]
    sources, seen = [], set()
    for spec in scorers:
        src = get_reward(str(spec) if isinstance(spec, Path) else spec)
        name = src.name
        i = 2
        while name in seen:  # two sources with the same name: keep both, distinguishable
            name, i = f"{src.name}#{i}", i + 1
        seen.add(name)
        sources.append((name, src))
    if not sources:
        raise UserError("no score source given; pass at least one, e.g. toxicity")
    return sources


def evaluate(models: dict, prompts, scorers, n_samples_per_prompt: int = 1, settings=None,
             baseline_name: str | None = None, seed: int = 0, batch_size: int = 16, n_boot: int = 2000,
             level: float = 0.95, kl: bool = True, max_prompt_tokens: int | None = None, dtype=None,
             progress: bool = True) -> dict:
    """Generate on the same prompts with each model, score, and compare with the baseline.

    models: {name: embedded name / hub id / folder / adapter folder, or a loaded
    Policy (or `WithoutAdapters(policy)`)}. scorers: reward specs or sources
    (`rlhfkit.rewards.get_reward`). Every model samples with the same seed.

    Result keys: models {name: source}, baseline, scorers [{name, higher_is_better}],
    n_prompts, n_samples_per_prompt, settings, seed, n_boot, level, sign_convention,
    summary {model: {scorer: summarize()}}, changes {model: {scorer: paired_change()
    + higher_is_better, verdict, std_verdict}}, scores {model: {scorer: [..]}},
    kl {model: kl_statistics() + per_response, or {skipped}}, lengths {model:
    {mean_tokens, hit_limit_fraction, generation_seconds}}, samples [{prompt,
    completions {model: [..]}, scores {model: {scorer: [..]}}}], kl_note.
    """
    from rlhfkit.data import prompt_text
    from rlhfkit.generation import GenerationSettings

    settings = settings or GenerationSettings()
    prompts, k = list(prompts), int(n_samples_per_prompt)
    if not models:
        raise UserError("no model to evaluate")
    if not prompts:
        raise UserError("no prompts to evaluate on")
    if k < 1:
        raise UserError("n_samples_per_prompt must be at least 1")
    if baseline_name is not None and baseline_name not in models:
        raise UserError(f"baseline '{baseline_name}' is not one of the models {sorted(models)}")
    stats_kw = dict(n_boot=n_boot, level=level, seed=seed)
    sources = _scorer_sources(scorers)
    loaded: dict = {}
    entries = {name: _resolve(name, value, dtype, progress, loaded) for name, value in models.items()}
    gens = {name: _generate(e, prompts, k, settings, batch_size, seed, max_prompt_tokens, progress)
            for name, e in entries.items()}
    flat_prompts = [p for p in prompts for _ in range(k)]
    scores = {m: {s: np.array(src(flat_prompts, g.texts), dtype=float).reshape(len(prompts), k) for s, src in sources}
              for m, g in gens.items()}
    result = {
        "models": {name: e.source for name, e in entries.items()}, "baseline": baseline_name,
        "scorers": [{"name": s, "higher_is_better": bool(src.higher_is_better), "spec": getattr(src, "name", s)}
                    for s, src in sources],
        "n_prompts": len(prompts), "n_samples_per_prompt": k, "settings": dataclasses.asdict(settings),
        "seed": seed, "n_boot": n_boot, "level": level, "sign_convention": SIGN_CONVENTION,
    }
    result.update(compare_scores(scores, {s: src.higher_is_better for s, src in sources}, baseline_name, **stats_kw))
    result["kl"] = {}
    if kl and baseline_name is not None:
        for name, e in entries.items():
            if name != baseline_name:
                result["kl"][name] = _kl_to_baseline(e, entries[baseline_name], gens[name], prompts, k,
                                                     settings.temperature, batch_size, max_prompt_tokens, stats_kw)
    result["kl_note"] = ("KL(model || baseline) in nats: mean over the model's own responses of the summed per-token "
                         f"log-ratio, at temperature {settings.temperature}"
                         + ("" if settings.top_k == 0 and settings.top_p >= 1 else
                            "; sampling used top-k/top-p truncation but log-probs are of the full distribution"))
    result["lengths"] = {m: _lengths(g, entries[m].tokenizer, settings.max_new_tokens) for m, g in gens.items()}
    result["samples"] = [
        {"prompt": prompt_text(p),
         "completions": {m: g.texts[i * k:(i + 1) * k] for m, g in gens.items()},
         "scores": {m: {s: scores[m][s][i].tolist() for s, _ in sources} for m in gens}}
        for i, p in enumerate(prompts)
    ]
    return result


# ---------------------------------------------------------------- JSON


def to_jsonable(obj):
    """Plain JSON types; non-finite floats become None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    return str(obj)


def save_json(result: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(result), indent=1, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    return path
