"""Reward sources behind one interface: prompts and completions in, one float per completion out.

    source = get_reward("0.7*profanity+0.3*vader")
    scores = source(prompts, completions)        # list[float], len(completions)

Every source is a `RewardSource`: callable on two equal-length lists (prompts may
be text or chat message lists), batched internally (`batch_size`), running on
the device of its model (`to(device)` moves it). `name` says what it is and
`higher_is_better` which way is good (False only for `toxicity`).

Spec grammar accepted by `get_reward` (and every `--reward` / `--by` flag):

    spec     := term ("+" term)*             weighted sum when there is more than one term or a weight
    term     := [weight "*"] source          weight is a float, may be negative: "1*profanity+-0.5*toxicity"
    source   := "profanity"                  1 - toxicity probability of alt-profanity-check, in [0, 1]
              | "profanity:logit"            log((1 - p) / p), unbounded, same order
              | "toxicity"                   the toxicity probability p itself; lower is better
              | "vader"                      VADER sentiment compound score, in [-1, 1]
              | "concise" [":" words]        1 - |words in the reply - target| / target, floored at 0
                                             (target 12 by default): a format task
              | module ":" function          a Python function f(prompts, completions) -> list[float],
                                             e.g. "mypkg.rewards:length_bonus" (module must be importable)
              | model [":" label [":" mode]]  a sequence classifier (folder, hub id or embedded name):
                                             no label: a single-output reward model, its raw output;
                                             label: that class's raw logit (mode "logit", default) or its
                                             probability (mode "prob"), e.g.
                                             "facebook/roberta-hate-speech-dynabench-r4-target:nothate:prob"

A term is read as a Python function when the part before ":" is a dotted
Python name (letters, digits, "_" and ".") that is not an existing folder;
anything else before ":" is a model. Hub ids hold a "/", so they never look
like modules.

Classifiers see the completion alone (as hate-speech and sentiment classifiers
are used on the response text), except reward models trained by
`rlhfkit reward`, whose config carries `rlhfkit_pair_input = True`: they see
(prompt, completion) as a text pair, as in training.
"""


from __future__ import annotations

import re
from pathlib import Path

from rlhfkit.errors import UserError
from rlhfkit.rewards.base import RewardSource
from rlhfkit.rewards.builtin import ConciseReward, ProfanityReward, ToxicityReward, VaderReward
from rlhfkit.rewards.classifier import (
    BUILTIN, ClassifierReward, classifier_logits, collate_features, encode_for_classifier,
)
from rlhfkit.rewards.function import FunctionReward, WeightedSum, _import_function

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def get_reward(spec, **kwargs) -> RewardSource:
    """A RewardSource from a RewardSource (as is), a callable f(prompts, completions), or a spec string.

    See the module docstring for the grammar. `kwargs` (batch_size, device,
    max_length, dtype) go to classifier sources.
    """
    if isinstance(spec, RewardSource):
        return spec
    if callable(spec):
        return FunctionReward(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"a reward is a spec string, a callable or a RewardSource, got {spec!r}; e.g. 'profanity'")
    spec = spec.strip()
    if Path(spec).exists():
        return ClassifierReward(spec, **kwargs)
    terms = [t.strip() for t in spec.split("+")]
    if len(terms) == 1 and "*" not in terms[0]:
        return _single(terms[0], kwargs)
    parts = []
    for term in terms:
        if not term:
            raise UserError(f"reward '{spec}': empty term; write terms like '0.7*profanity+0.3*vader'")
        weight, source = _split_weight(spec, term)
        parts.append((weight, _single(source, kwargs)))
    return WeightedSum(parts)


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _split_weight(spec: str, term: str) -> tuple[float, str]:
    head, star, rest = term.partition("*")
    if not star:
        return 1.0, term
    if not _is_float(head.strip()):
        raise UserError(f"reward '{spec}': '{head.strip()}' in '{term}' is not a number; write weight*source, e.g. 0.5*vader")
    if not rest.strip():
        raise UserError(f"reward '{spec}': '{term}' has a weight but no source after '*'")
    return float(head), rest.strip()


def _single(term: str, kwargs: dict) -> RewardSource:
    if term == "profanity" or term == "profanity:prob":
        return ProfanityReward("prob")
    if term == "profanity:logit":
        return ProfanityReward("logit")
    if term == "toxicity":
        return ToxicityReward()
    if term == "vader":
        return VaderReward()
    if term == "concise" or (term.startswith("concise:") and term[8:].isdigit()):
        return ConciseReward(int(term[8:]) if ":" in term else 12)
    if Path(term).exists():
        return ClassifierReward(term, **kwargs)
    head, colon, rest = term.partition(":")
    if head in ("profanity", "toxicity", "vader", "concise"):
        raise UserError(f"reward '{term}': unknown option; built-in rewards are {', '.join(BUILTIN)}")
    if colon and _DOTTED.match(head) and not Path(head).exists() and ":" not in rest and _DOTTED.match(rest):
        from rlhfkit.models import EMBEDDED

        if head not in EMBEDDED:
            return _import_function(term)
    label, mode = (rest.split(":") + [None])[:2] if colon else (None, None)
    if mode is not None and mode not in ("logit", "prob"):
        raise UserError(f"reward '{term}': mode '{mode}' is not 'logit' or 'prob'; e.g. 'MODEL:nothate:prob'")
    if colon and not label:
        raise UserError(f"reward '{term}': empty label after ':'; write MODEL:LABEL[:logit|prob]")
    return ClassifierReward(head, label=label, mode=mode or "logit", **kwargs)


def describe(source: RewardSource) -> dict:
    """A JSON-able description of a source (for run configs and reports)."""
    return {"name": source.name, "type": type(source).__name__, "higher_is_better": source.higher_is_better}


__all__ = [
    "RewardSource", "classifier_logits", "ConciseReward", "ProfanityReward", "ToxicityReward", "VaderReward", "FunctionReward", "ClassifierReward",
    "WeightedSum", "get_reward", "encode_for_classifier", "collate_features", "describe", "BUILTIN",
]
