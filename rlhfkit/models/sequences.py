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
same prompts into one pass (`pair_logps`), as TRL's concatenated forward does; with
`share_prompt` each distinct prompt is read once for all its completions. Where the
model's logits are exactly its linear head's output (`models.head.plain_head`) the
log-probs come from the head's input a row chunk at a time: no [N, R, V] logits held.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from rlhfkit.models.forward import decoder_start_id, make_batch, shared_prompt_outputs
from rlhfkit.models.generation import cache_keyword, pad
from rlhfkit.models.head import head_inputs, plain_head
from rlhfkit.ops.logprobs import linear_logprobs, logprobs_from_logits


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
                     with_logits: bool = True, share_prompt: bool = False) -> SequenceLogps:
    """Per-token log-probs of each completion given its prompt (see the module docstring).

    Gradients flow when called with grad enabled. `with_logits=False` skips the logits metric.
    `share_prompt` reads each distinct prompt once (`_shared_prompt_pass`): the same numbers with
    fewer tokens; not under activation checkpointing, which drops the KV cache it needs."""
    inner = _inner(model)
    seq2seq = is_encoder_decoder(inner)
    device = next(inner.parameters()).device
    if any(len(c) == 0 for c in completions):
        raise ValueError("empty completion: every completion needs at least one token (e.g. the EOS)")
    probe = make_batch(prompts[:1], [completions[0][:2]], pad_id, seq2seq,
                       decoder_start_id(inner) if seq2seq else None, device)
    head = plain_head(model, dict(probe.inputs, use_cache=False))
    shared = share_prompt and len(set(map(tuple, prompts))) < len(prompts)
    if shared and (seq2seq or cache_keyword(inner) is not None):
        out, responses, mask = _shared_prompt_pass(model, prompts, completions, pad_id, device, seq2seq, head)
    else:
        batch = make_batch(prompts, completions, pad_id, seq2seq, decoder_start_id(inner) if seq2seq else None, device)
        kwargs = dict(batch.inputs, use_cache=False)
        if not seq2seq:
            kwargs["logits_to_keep"] = batch.width
        with _reading(model, head) as read:
            out = read(model(**kwargs))
        out = out[:, -batch.width:] if out.shape[1] != batch.width else out
        responses, mask = batch.responses, batch.mask
    if head is not None:  # `out` is the head's input: log-probs a row chunk of logits at a time
        per_token, _ = linear_logprobs(out, head.weight, head.bias, responses)
    else:
        per_token = logprobs_from_logits(out, responses)
    mask = mask.to(per_token.dtype)
    if with_logits:
        with torch.no_grad():
            mean_logit = (out.detach().float() @ head.weight.float().mean(0)
                          + (head.bias.float().mean() if head.bias is not None else 0.0)
                          if head is not None else out.detach().float().mean(-1))
            logit_sums = (mean_logit * mask).sum(-1)
    else:
        logit_sums = torch.zeros(mask.shape[0], device=mask.device)
    return SequenceLogps(per_token * mask, mask, logit_sums)


@contextlib.contextmanager
def _reading(model, head):
    """Yields `read(output)`: the output's logits, or with `head` the input the (skipped) head would have
    read at the same positions."""
    if head is None:
        yield lambda output: output.logits
        return
    with head_inputs(head) as seen:
        yield lambda output: seen[-1]


def _shared_prompt_pass(model, prompts, completions, pad_id: int, device, seq2seq: bool, head):
    """Logits (or head inputs) [N, R, .] predicting each completion, reading each distinct prompt once.

    Causal: `forward.shared_prompt_outputs` (a KV cache per distinct prompt, copied to its completions).
    Seq2seq: the encoder reads each distinct prompt once and its output is copied to the decoder rows.
    With chosen and rejected of one prompt that halves the prompt tokens; rankings' pairs share more.
    """
    inner = _inner(model)
    with _reading(model, head) as read:
        if not seq2seq:
            return shared_prompt_outputs(model, prompts, completions, pad_id, cache_keyword(inner), device, read)
        from transformers.modeling_outputs import BaseModelOutput

        distinct = list(dict.fromkeys(tuple(p) for p in prompts))
        which = {p: j for j, p in enumerate(distinct)}
        expand = torch.tensor([which[tuple(p)] for p in prompts], device=device)
        ids, attn = pad(distinct, pad_id, side="right", device=device)
        encoded = inner.get_encoder()(input_ids=ids, attention_mask=attn, return_dict=True).last_hidden_state
        dec, dec_mask = pad([[decoder_start_id(inner)] + list(c[:-1]) for c in completions], pad_id,
                            side="right", device=device)
        out = read(model(encoder_outputs=BaseModelOutput(last_hidden_state=encoded[expand]),
                         attention_mask=attn[expand], decoder_input_ids=dec, decoder_attention_mask=dec_mask,
                         use_cache=False))
        responses, mask = pad(completions, pad_id, side="right", device=device)
        return out, responses, mask


def pair_logps(model, prompts: list[list[int]], chosen: list[list[int]], rejected: list[list[int]], pad_id: int,
               with_logits: bool = True, share_prompt: bool = False) -> tuple[SequenceLogps, SequenceLogps]:
    """(chosen, rejected) log-probs of preference pairs, both halves in one pass (with `share_prompt`,
    each prompt read once for both)."""
    out = completion_logps(model, list(prompts) + list(prompts), list(chosen) + list(rejected), pad_id, with_logits,
                           share_prompt)
    return out.split()


__all__ = ["SequenceLogps", "completion_logps", "is_encoder_decoder", "pair_logps"]
