"""Rewards that need no model download: toxicity (alt-profanity-check's linear model) and VADER sentiment."""

from __future__ import annotations

import math

from rlhfkit.errors import UserError
from rlhfkit.rewards.base import RewardSource

_EPS = 1e-6


def _toxicity(texts: list[str]) -> list[float]:
    try:
        from profanity_check import predict_prob
    except ImportError:
        raise UserError("the 'profanity'/'toxicity' rewards need alt-profanity-check; run: pip install alt-profanity-check") from None
    return [float(p) for p in predict_prob(list(texts))] if texts else []


class ProfanityReward(RewardSource):
    """1 - toxicity probability (alt-profanity-check), or its logit log((1-p)/p) with mode="logit"."""

    def __init__(self, mode: str = "prob", batch_size: int = 256):
        if mode not in ("prob", "logit"):
            raise UserError(f"profanity mode must be 'prob' or 'logit', got {mode!r}")
        self.mode, self.batch_size = mode, batch_size
        self.name = "profanity" if mode == "prob" else "profanity:logit"

    def score(self, prompts, completions):
        probs = _toxicity(completions)
        if self.mode == "prob":
            return [1.0 - p for p in probs]
        return [math.log(max(1 - p, _EPS) / max(p, _EPS)) for p in probs]


class ToxicityReward(RewardSource):
    """The toxicity probability of alt-profanity-check; lower is better (for evaluation reports)."""

    name = "toxicity"
    higher_is_better = False

    def __init__(self, batch_size: int = 256):
        self.batch_size = batch_size

    def score(self, prompts, completions):
        return _toxicity(completions)


class VaderReward(RewardSource):
    """VADER sentiment compound score of the completion, in [-1, 1]."""

    name = "vader"

    def __init__(self, batch_size: int = 256):
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError:
            raise UserError("the 'vader' reward needs vaderSentiment; run: pip install vaderSentiment") from None
        self.batch_size = batch_size
        self._analyzer = SentimentIntensityAnalyzer()

    def score(self, prompts, completions):
        return [self._analyzer.polarity_scores(c)["compound"] for c in completions]


class ConciseReward(RewardSource):
    """A format target a small model learns in minutes: replies of about `words` words.

    score = 1 - min(|n - words| / words, 1) for a reply of n words: 1 at the target, 0 at twice it or
    at nothing. The second task beside detoxification (docs/online-rl.md), as `concise` or `concise:N`.
    """

    def __init__(self, words: int = 12, batch_size: int = 1024):
        if words < 1:
            raise UserError(f"concise:{words}: the target is a number of words, at least 1")
        self.words, self.batch_size = int(words), batch_size
        self.name = f"concise:{self.words}"

    def score(self, prompts, completions):
        return [1.0 - min(abs(len(c.split()) - self.words) / self.words, 1.0) for c in completions]
