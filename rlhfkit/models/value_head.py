"""A language model with a scalar value head, for causal and seq2seq models.

The head reads the final hidden state the LM head reads (captured by a forward
pre-hook on the output embedding), so one forward pass gives both logits and
values, for any architecture, with or without peft adapters. For seq2seq models
that is the decoder's state. The head starts at zero: the first values are 0
and the first value loss does not disturb the policy.
"""

from __future__ import annotations

import contextlib
import inspect
from pathlib import Path

import torch
from torch import nn

from rlhfkit.models.head import head_skipped


VALUE_HEAD_FILE = "value_head.safetensors"


class ValueHead(nn.Module):
    """hidden [.., H] -> value [..], a zero-initialised linear layer (kept in float32)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)


def hidden_size(config) -> int:
    for name in ("hidden_size", "d_model", "n_embd", "dim"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    text = getattr(config, "get_text_config", lambda: None)()
    if text is not None and text is not config:
        return hidden_size(text)
    raise ValueError(f"cannot find the hidden size in {type(config).__name__}")


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


class ModelWithValueHead(nn.Module):
    """`pretrained_model` (HF or peft) plus `v_head`.

    `forward(**inputs, logits_to_keep=R)` returns (logits, values): for causal models
    only the last R positions (the ones that predict response tokens), for seq2seq
    every decoder position. `values` is None when `with_values=False`. With
    `with_logits=False` the LM head is skipped and the first output is the hidden
    state it would have read, for `losses.linear_logprobs`; `chunked_head` says the
    trainer should take that path (set it only where `head_is_last_op` holds).
    """

    def __init__(self, pretrained_model, v_head: ValueHead | None = None):
        super().__init__()
        self.pretrained_model = pretrained_model
        config = pretrained_model.config
        self.is_encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
        self.is_peft_model = is_peft_model(pretrained_model)
        self.v_head = v_head if v_head is not None else ValueHead(hidden_size(config))
        self._hidden: torch.Tensor | None = None
        head = self.lm_head()
        if head is None:
            raise ValueError(f"{type(pretrained_model).__name__} has no LM head; PPO needs a language model")
        head.register_forward_pre_hook(self._capture)
        self.chunked_head = False
        base = self.base_model()
        self._keeps_logits = "logits_to_keep" in inspect.signature(base.forward).parameters

    @property
    def config(self):
        return self.pretrained_model.config

    def base_model(self):
        """The transformers model under any peft wrapping."""
        model = self.pretrained_model
        return model.get_base_model() if self.is_peft_model else model

    def _capture(self, module, args):
        self._hidden = args[0]

    def forward(self, logits_to_keep: int | None = None, with_values: bool = True, with_logits: bool = True,
                **inputs):
        if logits_to_keep and self._keeps_logits and not self.is_encoder_decoder:
            inputs["logits_to_keep"] = logits_to_keep
        self._hidden = None
        with contextlib.nullcontext() if with_logits else head_skipped(self.lm_head()):
            out = self.pretrained_model(**inputs, use_cache=False, return_dict=True)
        logits, hidden = out.logits, self._hidden
        self._hidden = None
        if logits_to_keep and not self.is_encoder_decoder and hidden.shape[1] != logits_to_keep:
            logits, hidden = logits[:, -logits_to_keep:], hidden[:, -logits_to_keep:]
        values = self.v_head(hidden) if with_values else None
        return (logits if with_logits else hidden), values

    def lm_head(self) -> nn.Module:
        return self.pretrained_model.get_output_embeddings()

    def head_is_last_op(self, **inputs) -> bool:
        """Whether the logits are exactly a plain linear LM head applied to the captured hidden state.

        Not so when the model transforms them afterwards (Gemma 2's softcapping, Cohere's
        logit scale) or the head is a peft/quantised layer: log-probs must then come from
        the model's own logits. Checked on `inputs` (one small batch is enough), in the
        caller's autocast state (`models.head.plain_head`).
        """
        from rlhfkit.models.head import head_is_plain

        if self.is_encoder_decoder or not self._keeps_logits:
            inputs.pop("logits_to_keep", None)
        return head_is_plain(self.pretrained_model, dict(inputs, use_cache=False, return_dict=True))

    def generate(self, *args, **kwargs):
        return self.pretrained_model.generate(*args, **kwargs)

    def save_value_head(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().cpu() for k, v in self.v_head.state_dict().items()}
        save_file(state, str(Path(folder) / VALUE_HEAD_FILE))

    def load_value_head(self, folder: str | Path) -> None:
        from safetensors.torch import load_file

        state = load_file(str(Path(folder) / VALUE_HEAD_FILE))
        self.v_head.load_state_dict(state)

    def save_pretrained(self, folder: str | Path, with_value_head: bool = True, **kwargs) -> None:
        """The LM via `save_pretrained` (the adapter only, with peft) and the value head beside it."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.pretrained_model.save_pretrained(str(folder), **kwargs)
        if with_value_head:
            self.save_value_head(folder)
