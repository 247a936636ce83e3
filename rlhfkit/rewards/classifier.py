"""Sequence classifiers as rewards: a reward model's output, or one label's logit or probability."""

from __future__ import annotations

from pathlib import Path

from rlhfkit.errors import UserError
from rlhfkit.rewards.base import RewardSource

BUILTIN = ("profanity", "profanity:logit", "toxicity", "vader", "concise[:WORDS]")  # named in the error for a bad model


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
    config = getattr(getattr(model, "module", model), "config", None)  # a DDP-wrapped model keeps it on .module
    extra = {"use_cache": False} if getattr(config, "use_cache", False) else {}
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
