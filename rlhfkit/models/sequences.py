"""Log-probs of whole completions given their prompts: what DPO, KTO and their kin compare.

    out = completion_logps(model, prompts, completions, pad_id)   # token-id lists
    out.sums       # [N] summed log-probs of each completion's tokens
    out.per_token  # [N, R] and out.mask [N, R]
    out.tokens     # [N] completion lengths
    out.logit_sums # [N] sum over completion tokens of the mean logit over the vocabulary (TRL's logits/* metric)

Causal models read [pad.. prompt | completion[:-1] ..pad] and only the last R
positions (those predicting completion tokens) go through the LM head
(`logits_to_keep`); seq2seq models read the prompt on the encoder and the
completion as decoder labels. The layout is `models.forward.make_batch`'s, the one
PPO's rollout uses. A preference batch puts chosen and rejected completions of the
same prompts into one forward (`pair_logps`), as TRL's concatenated forward does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhfkit.models.forward import decoder_start_id, make_batch
from rlhfkit.ops.logprobs import logprobs_from_logits


@dataclass
class SequenceLogps:
    per_token: torch.Tensor
    mask: torch.Tensor
    logit_sums: torch.Tensor

    @property
    def sums(self) -> torch.Tensor:
        return (self.per_token * self.mask).sum(-1)

    @property
    def tokens(self) -> torch.Tensor:
        return self.mask.sum(-1)

    def split(self) -> tuple["SequenceLogps", "SequenceLogps"]:
        """The first and second halves (chosen, rejected) of a batch built by `pair_logps`."""
        n = self.per_token.shape[0] // 2
        return (SequenceLogps(self.per_token[:n], self.mask[:n], self.logit_sums[:n]),
                SequenceLogps(self.per_token[n:], self.mask[n:], self.logit_sums[n:]))


def _inner(model):
    inner = getattr(model, "module", model)  # DDP / accelerate wrapper
    return inner


def is_encoder_decoder(model) -> bool:
    return bool(getattr(_inner(model).config, "is_encoder_decoder", False))


def completion_logps(model, prompts: list[list[int]], completions: list[list[int]], pad_id: int,
                     with_logits: bool = True) -> SequenceLogps:
    """Per-token log-probs of each completion given its prompt, in one forward pass (see the module docstring).

    Gradients flow when called with grad enabled. `with_logits=False` skips the logits metric."""
    inner = _inner(model)
    seq2seq = is_encoder_decoder(inner)
    device = next(inner.parameters()).device
    batch = make_batch(prompts, completions, pad_id, seq2seq, decoder_start_id(inner) if seq2seq else None, device)
    kwargs = dict(batch.inputs, use_cache=False)
    if not seq2seq:
        kwargs["logits_to_keep"] = batch.width
    logits = model(**kwargs).logits
    logits = logits[:, -batch.width:] if logits.shape[1] != batch.width else logits
    per_token = logprobs_from_logits(logits, batch.responses)
    mask = batch.mask.to(per_token.dtype)
    if with_logits:
        with torch.no_grad():
            logit_sums = (logits.detach().float().mean(-1) * mask).sum(-1)
    else:
        logit_sums = torch.zeros(mask.shape[0], device=mask.device)
    return SequenceLogps(per_token * mask, mask, logit_sums)


def pair_logps(model, prompts: list[list[int]], chosen: list[list[int]], rejected: list[list[int]], pad_id: int,
               with_logits: bool = True) -> tuple[SequenceLogps, SequenceLogps]:
    """(chosen, rejected) log-probs of preference pairs, both halves in one forward pass."""
    out = completion_logps(model, list(prompts) + list(prompts), list(chosen) + list(rejected), pad_id, with_logits)
    return out.split()


__all__ = ["SequenceLogps", "completion_logps", "is_encoder_decoder", "pair_logps"]
