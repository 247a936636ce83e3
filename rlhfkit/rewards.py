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

import importlib
import math
import re
from pathlib import Path
from typing import Callable, Sequence

from rlhfkit.errors import UserError

BUILTIN = ("profanity", "profanity:logit", "toxicity", "vader")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_EPS = 1e-6


def _as_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    from rlhfkit.data import prompt_text

    return prompt_text(prompt)


class RewardSource:
    """Base class: texts in, one float per completion out.

    Subclasses implement `score(prompts, completions)` for one batch of plain
    texts; `__call__` checks the inputs, converts chat prompts to text, splits
    into batches of `batch_size` and checks the outputs.
    """

    name: str = "reward"
    higher_is_better: bool = True
    batch_size: int = 64

    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        raise NotImplementedError

    def __call__(self, prompts: Sequence, completions: Sequence[str]) -> list[float]:
        prompts, completions = list(prompts), list(completions)
        if len(prompts) != len(completions):
            raise UserError(f"reward '{self.name}': {len(prompts)} prompts for {len(completions)} completions; give one prompt per completion")
        prompts = [_as_text(p) for p in prompts]
        out: list[float] = []
        step = max(1, int(self.batch_size or len(completions) or 1))
        for start in range(0, len(completions), step):
            batch = self.score(prompts[start:start + step], completions[start:start + step])
            out.extend(_check_scores(self.name, batch, len(completions[start:start + step])))
        return out

    def to(self, device) -> "RewardSource":
        """Move to a device where there is a model; a no-op for CPU-only sources."""
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _check_scores(name, scores, n) -> list[float]:
    try:
        values = [float(s) for s in scores]
    except (TypeError, ValueError):
        raise UserError(f"reward '{name}' must return a list of numbers, got {type(scores).__name__}") from None
    if len(values) != n:
        raise UserError(f"reward '{name}' returned {len(values)} scores for {n} completions; return one per completion")
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise UserError(f"reward '{name}' returned a non-finite score ({v}) for completion {i} of a batch")
    return values


# ---------------------------------------------------------------- embedded rule/linear sources


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


# ---------------------------------------------------------------- Python functions


class FunctionReward(RewardSource):
    """Any callable f(prompts, completions) -> list[float], called on batches of `batch_size` (None: all at once)."""

    def __init__(self, fn: Callable, name: str | None = None, batch_size: int | None = None, higher_is_better: bool = True):
        if not callable(fn):
            raise UserError(f"a function reward needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or "function"
        self.batch_size = batch_size or 0  # 0: one call for everything
        self.higher_is_better = higher_is_better

    def score(self, prompts, completions):
        return self.fn(prompts, completions)


def _import_function(spec: str) -> FunctionReward:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise UserError(
                f"reward '{spec}': no Python module '{e.name}'; make it importable (on PYTHONPATH or installed), "
                "or pass a model folder / hub id (those contain '/')"
            ) from None
        raise
    fn = getattr(module, attr, None)
    if fn is None:
        raise UserError(f"reward '{spec}': module '{module_name}' has no attribute '{attr}'")
    if not callable(fn):
        raise UserError(f"reward '{spec}': '{attr}' is not callable; it must be f(prompts, completions) -> list[float]")
    return FunctionReward(fn, name=spec)


# ---------------------------------------------------------------- sequence classifiers


def encode_for_classifier(tokenizer, prompts: list[str], completions: list[str], pair_input: bool,
                          max_length: int | None) -> list[dict[str, list[int]]]:
    """What a classifier sees, one feature dict per text: input_ids (and token_type_ids where the
    tokenizer makes them, e.g. BERT's segment ids for a pair); truncated to max_length, unpadded.

    pair_input: (prompt, completion) as a text pair, as `tokenizer(prompt, completion)`; else the completion alone.
    """
    kwargs = {"truncation": True, "max_length": max_length} if max_length else {}
    if pair_input:
        enc = tokenizer(list(prompts), list(completions), **kwargs)
    else:
        enc = tokenizer(list(completions), **kwargs)
    keys = [k for k in ("input_ids", "token_type_ids") if k in enc]
    return [{k: list(enc[k][i]) for k in keys} for i in range(len(completions))]


def collate_features(features: list[dict[str, list[int]]], pad_id: int, device=None) -> dict:
    """Right-padded tensors for a classifier forward: input_ids, attention_mask (+ token_type_ids)."""
    from rlhfkit.models.generation import pad

    ids, mask = pad([f["input_ids"] for f in features], pad_id, device=device)
    batch = {"input_ids": ids, "attention_mask": mask}
    if features and "token_type_ids" in features[0]:
        batch["token_type_ids"], _ = pad([f["token_type_ids"] for f in features], 0, device=device)
    return batch


def classifier_logits(model, batch: dict):
    """A sequence classifier's logits for a collated batch.

    Classifiers built on a decoder (SmolLM2 or GPT-2 reward models) default to
    use_cache=True and would keep every layer's keys and values, which one
    scoring pass never reads: 72 MB of a 116 MB peak for SmolLM2 at 16 x 98 tokens.
    """
    extra = {"use_cache": False} if getattr(model.config, "use_cache", False) else {}
    return model(**batch, **extra).logits


class ClassifierReward(RewardSource):
    """A sequence classifier's output for each completion.

    - No `label`: the model must have one output (a reward model); its raw value.
    - `label` (name, case-insensitive, or index): that class's raw logit
      (`mode="logit"`, the default) or its probability (`mode="prob"`: softmax
      over classes, or sigmoid for one output / multi-label models).

    `pair_input` (default: the model config's `rlhfkit_pair_input`, else False)
    feeds (prompt, completion) as a text pair instead of the completion alone.
    """

    def __init__(self, model_or_path, tokenizer=None, label: str | int | None = None, mode: str = "logit",
                 batch_size: int = 32, device=None, max_length: int | None = 512, pair_input: bool | None = None,
                 dtype=None):
        if mode not in ("logit", "prob"):
            raise UserError(f"classifier reward mode must be 'logit' or 'prob', got {mode!r}")
        if isinstance(model_or_path, (str, Path)):
            source = str(model_or_path)
            model = _load_classifier(source, dtype)
            if tokenizer is None:
                from rlhfkit.models import load_tokenizer

                tokenizer = load_tokenizer(source)
        else:
            model = model_or_path
            source = getattr(model.config, "_name_or_path", None) or type(model).__name__
            if tokenizer is None:
                raise UserError("ClassifierReward with a model object needs its tokenizer: ClassifierReward(model, tokenizer)")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.model, self.tokenizer, self.mode = model.eval(), tokenizer, mode
        self.batch_size, self.max_length = batch_size, max_length
        self.column = _label_column(model.config, label, source)
        self.pair_input = bool(getattr(model.config, "rlhfkit_pair_input", False)) if pair_input is None else pair_input
        n_labels = int(getattr(model.config, "num_labels", 1))
        self._sigmoid = n_labels == 1 or getattr(model.config, "problem_type", None) == "multi_label_classification"
        suffix = "" if label is None else f":{label}" + (":prob" if mode == "prob" else "")
        self.name = f"{source}{suffix}"
        if device is not None:
            self.to(device)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def to(self, device) -> "ClassifierReward":
        self.model.to(device)
        return self

    def score(self, prompts, completions):
        import torch

        feats = encode_for_classifier(self.tokenizer, prompts, completions, self.pair_input, self.max_length)
        order = sorted(range(len(feats)), key=lambda i: len(feats[i]["input_ids"]))  # similar lengths: less padding
        batch = collate_features([feats[i] for i in order], self.tokenizer.pad_token_id, self.device)
        with torch.inference_mode():
            logits = classifier_logits(self.model, batch).float()
        if self.mode == "prob":
            values = torch.sigmoid(logits) if self._sigmoid else torch.softmax(logits, dim=-1)
        else:
            values = logits
        picked = values[:, self.column].tolist()
        out = [0.0] * len(feats)
        for pos, i in enumerate(order):
            out[i] = picked[pos]
        return out


def _load_classifier(source: str, dtype=None):
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.models import _parse_dtype, resolve

    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            resolve(source), dtype=_parse_dtype(dtype), output_loading_info=True
        )
    except (OSError, ValueError) as e:
        raise UserError(
            f"cannot load sequence classifier '{source}': {str(e).splitlines()[0]}; pass a folder saved by "
            "`rlhfkit reward`, a classifier hub id (with network), or a built-in reward: " + ", ".join(BUILTIN)
        ) from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise UserError(
            f"'{source}' has no trained classification head (missing {', '.join(missing[:3])}); a reward needs a "
            "trained classifier: train one with `rlhfkit reward --backbone ...` and pass its folder"
        )
    return model


def _label_column(config, label, source) -> int:
    n = int(getattr(config, "num_labels", 1))
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    names = [id2label.get(i, f"LABEL_{i}") for i in range(n)]
    if label is None:
        if n != 1:
            raise UserError(
                f"classifier '{source}' has {n} labels {names}; pick one, e.g. '{source}:{names[-1]}' "
                f"(or label='{names[-1]}' in Python)"
            )
        return 0
    if isinstance(label, int) or (isinstance(label, str) and label.isdigit()):
        index = int(label)
        if not 0 <= index < n:
            raise UserError(f"classifier '{source}' has labels 0..{n - 1} {names}; label index {index} is out of range")
        return index
    lowered = [x.lower() for x in names]
    if str(label).lower() in lowered:
        return lowered.index(str(label).lower())
    raise UserError(f"classifier '{source}' has no label '{label}'; its labels are {names}")


# ---------------------------------------------------------------- weighted sums


class WeightedSum(RewardSource):
    """sum_i weight_i * source_i(prompts, completions); each part may be a RewardSource, callable or spec."""

    def __init__(self, parts: Sequence[tuple[float, object]]):
        if not parts:
            raise UserError("a weighted sum needs at least one (weight, source) part")
        self.parts = [(float(w), get_reward(s)) for w, s in parts]
        self.name = "+".join(f"{w:g}*{s.name}" for w, s in self.parts)
        self.batch_size = 0  # the parts batch themselves

    def to(self, device) -> "WeightedSum":
        for _, s in self.parts:
            s.to(device)
        return self

    def score(self, prompts, completions):
        total = [0.0] * len(completions)
        for w, source in self.parts:
            for i, v in enumerate(source(prompts, completions)):
                total[i] += w * v
        return total


# ---------------------------------------------------------------- specs


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
    if Path(term).exists():
        return ClassifierReward(term, **kwargs)
    head, colon, rest = term.partition(":")
    if head in ("profanity", "toxicity", "vader"):
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
    "RewardSource", "ProfanityReward", "ToxicityReward", "VaderReward", "FunctionReward", "ClassifierReward",
    "WeightedSum", "get_reward", "encode_for_classifier", "collate_features", "describe", "BUILTIN",
]
