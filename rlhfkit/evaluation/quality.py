"""Whether replies are still replies: length, diversity and repetition of a model's samples, and the
expected maximum of a score over each prompt's samples (RealToxicityPrompts' "expected maximum toxicity").

Reward hacking shows here first: a policy that learned one safe reply for every prompt scores low
toxicity but a high `top_reply_share` and a low `distinct_2`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct word n-grams over all n-grams of all texts (Li et al. 2016): 1 = no n-gram repeats."""
    grams = [tuple(words[i:i + n]) for t in texts for words in [t.split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def top_reply_share(texts: list[str]) -> float:
    """The share of the samples taken by the most frequent reply (after whitespace normalisation)."""
    if not texts:
        return 0.0
    counts = Counter(" ".join(t.split()).lower() for t in texts)
    return counts.most_common(1)[0][1] / len(texts)


def reply_quality(texts: list[str]) -> dict:
    words = [len(t.split()) for t in texts]
    return {"mean_words": float(np.mean(words)) if words else float("nan"), "distinct_2": distinct_n(texts, 2),
            "top_reply_share": top_reply_share(texts), "empty_fraction": float(np.mean([w == 0 for w in words]))
            if words else float("nan")}


def per_prompt_max(scores: np.ndarray) -> np.ndarray:
    """[prompts, samples] -> [prompts, 1]: each prompt's worst (largest) score over its samples."""
    return np.asarray(scores, dtype=float).max(axis=1, keepdims=True)
