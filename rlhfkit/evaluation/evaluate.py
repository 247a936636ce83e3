"""Before/after evaluation: sample from each model on the same prompts, score, compare with the baseline.

The runner `evaluate` samples completions from each model on the same prompts
with the same seed (common random numbers), scores them with each reward
source, and adds KL(model || baseline) measured on the model's own responses:
the mean over responses of sum over tokens of (log p_model - log p_baseline).
`rlhfkit.evaluation.summary.format_summary` prints the result; `save_json` writes
it with every float finite or null. Statistics are in `rlhfkit.evaluation.statistics`.
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
from rlhfkit.evaluation.statistics import compare_scores, kl_statistics
from rlhfkit.evaluation.summary import SIGN_CONVENTION

# ---------------------------------------------------------------- models to evaluate


class WithoutAdapters:
    """The base network of a peft policy: the same weights with its adapters disabled (no second copy),
    an adapters-off `Reference`.

        evaluate({"baseline": WithoutAdapters(policy), "tuned": policy}, ...)
    """

    def __init__(self, policy):
        from rlhfkit.models.reference import Reference

        model = getattr(policy, "model", policy)
        if not hasattr(model, "peft_config"):
            raise UserError("WithoutAdapters needs a peft (LoRA) policy; pass the baseline model itself instead")
        self.policy, self.model, self.tokenizer = policy, model, policy.tokenizer
        self.reference = Reference.adapters_off(model)

    def context(self):
        return self.reference.active()

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
    logprobs: list | None = None  # per response: its tokens' log-probs at the temperature, when the sampler gave them


def _generate(entry: _Entry, prompts, k: int, settings, batch_size: int, seed: int, max_prompt_tokens, progress) -> _Generations:
    """k sampled responses per prompt, keeping token ids (for the KL) and texts (for the scores)."""
    import torch
    from tqdm.auto import tqdm

    from rlhfkit.models.generation import encode_prompts, sample

    start = time.perf_counter()
    model, tok = _sampler(entry), entry.tokenizer
    queries = encode_prompts(tok, prompts, max_length=max_prompt_tokens)
    per_batch = max(1, batch_size // k)
    responses: list = []
    logprobs: list = []  # None for a chunk `generate()` sampled
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        with entry.context(), tqdm(total=len(queries), desc=f"generating ({entry.name})", unit="prompt",
                                   disable=not progress) as bar:
            for i in range(0, len(queries), per_batch):
                chunk = queries[i:i + per_batch]
                got, lps = sample(model, tok, chunk, settings, num_return_sequences=k, with_logprobs=True)
                responses += got
                logprobs += [None] * len(got) if lps is None else lps
                bar.update(len(chunk))
    finally:
        model.train(was_training)
    texts = [t.strip() for t in tok.batch_decode(responses, skip_special_tokens=True)]
    return _Generations(queries, responses, texts, time.perf_counter() - start,
                        None if any(lp is None for lp in logprobs) else logprobs)


def _sampler(entry: _Entry):
    """The network that samples for an entry: a LoRA model with its adapters on samples from a
    merged copy (peft's `merge_and_unload` on a deep copy: the adapters' extra matmuls cost ~15% of
    sampling time); everything else, and a model whose adapters are off, samples as it is."""
    model = entry.model
    if entry.context is not contextlib.nullcontext or not hasattr(model, "merge_and_unload"):
        return model
    import copy

    return copy.deepcopy(model).merge_and_unload()


def _kl_to_baseline(entry: _Entry, base: _Entry, gen: _Generations, prompts, k, temperature, batch_size,
                    max_prompt_tokens, stats_kw, progress: bool = True) -> dict:
    """KL(model || baseline) on the model's responses; {'skipped': reason} when tokenizers differ."""
    from rlhfkit.models.forward import response_logprobs
    from rlhfkit.models.generation import encode_prompts

    if base.tokenizer is not entry.tokenizer and (
        len(base.tokenizer) != len(entry.tokenizer)
        or encode_prompts(base.tokenizer, prompts, max_length=max_prompt_tokens) != gen.queries
    ):
        return {"skipped": "the baseline tokenizes differently, so per-token log-probs are not comparable"}
    from tqdm.auto import tqdm

    queries = [q for q in gen.queries for _ in range(k)]
    pad_id, chunk = entry.tokenizer.pad_token_id, 8 * batch_size

    def scored_under(e: _Entry) -> list:
        scored = []
        with e.context(), tqdm(total=len(queries), desc=f"KL: scoring {entry.name}'s replies under {e.name}",
                               unit="reply", disable=not progress) as bar:
            for i in range(0, len(queries), chunk):
                scored += response_logprobs(e.model, queries[i:i + chunk], gen.responses[i:i + chunk], pad_id,
                                            temperature, batch_size)
                bar.update(len(queries[i:i + chunk]))
        return scored

    # the model's own log-probs come from its sampler where it gave them (the same numbers: tests/test_generation.py)
    logps = [gen.logprobs if gen.logprobs is not None else scored_under(entry), scored_under(base)]
    per = np.array([float((a.double() - b.double()).sum()) for a, b in zip(*logps)]).reshape(len(prompts), k)
    tokens = [len(x) for x in logps[0]]
    return {**kl_statistics(per, tokens, **stats_kw), "per_response": per.ravel().tolist()}


def _lengths(gen: _Generations, tokenizer, max_new_tokens: int) -> dict:
    """Length, limit hits, diversity and repetition of the replies (`quality.reply_quality`), sampling speed."""
    from rlhfkit.evaluation.quality import reply_quality

    lengths = np.array([len(r) for r in gen.responses], dtype=float)
    eos = tokenizer.eos_token_id
    hit = [len(r) >= max_new_tokens and (not r or r[-1] != eos) for r in gen.responses]
    return {"mean_tokens": float(lengths.mean()) if lengths.size else math.nan,
            "hit_limit_fraction": float(np.mean(hit)) if hit else math.nan,
            "generation_seconds": gen.seconds,
            "tokens_per_second": float(lengths.sum() / gen.seconds) if gen.seconds else math.nan,
            **reply_quality(gen.texts)}


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
    {mean_tokens, hit_limit_fraction, generation_seconds, tokens_per_second, mean_words, distinct_2,
    top_reply_share, empty_fraction}}, expected_max (with k > 1 samples, lower-is-better scores: the
    compare_scores of each prompt's worst sample), samples [{prompt, completions {model: [..]},
    scores {model: {scorer: [..]}}}], kl_note.
    """
    from rlhfkit.data import prompt_text
    from rlhfkit.models.generation import GenerationSettings

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
                                                     settings.temperature, batch_size, max_prompt_tokens, stats_kw,
                                                     progress)
    result["kl_note"] = ("KL(model || baseline) in nats: mean over the model's own responses of the summed per-token "
                         f"log-ratio, at temperature {settings.temperature}"
                         + ("" if settings.top_k == 0 and settings.top_p >= 1 else
                            "; sampling used top-k/top-p truncation but log-probs are of the full distribution"))
    result["lengths"] = {m: _lengths(g, entries[m].tokenizer, settings.max_new_tokens) for m, g in gens.items()}
    if k > 1:  # the worst of each prompt's samples, for scores where lower is better (expected maximum toxicity)
        from rlhfkit.evaluation.quality import per_prompt_max

        worst = {m: {s: per_prompt_max(scores[m][s]) for s, src in sources if not src.higher_is_better}
                 for m in scores}
        if any(worst.values()):
            result["expected_max"] = compare_scores(worst, {s: False for s in next(iter(worst.values()))},
                                                    baseline_name, **stats_kw)
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
