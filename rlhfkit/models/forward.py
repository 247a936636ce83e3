"""Query + response batches and one forward pass giving their log-probs (and values).

Layout, so that the positions predicting response tokens line up across a batch:

- causal:  [pad.. query | response[:-1] ..pad]: queries padded on the left,
  responses on the right; the last R positions (R = longest response) predict
  the response tokens, so only those go through the LM head (`logits_to_keep`).
- seq2seq: the query feeds the encoder (right-padded); the decoder reads
  [start | response[:-1]] and every decoder position predicts a response token.

Position ids come from the attention mask, as `generate` computes them for
left-padded prompts, so log-probs here match the distribution that was sampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhfkit.models.generation import decode_cache_name, pad, prefill_once
from rlhfkit.ops.logprobs import linear_logprobs, logprobs_from_logits


@dataclass
class Batch:
    """Model inputs for a set of (query, response) pairs plus the response tokens and mask [B, R]."""

    inputs: dict
    responses: torch.Tensor
    mask: torch.Tensor

    @property
    def width(self) -> int:
        return self.responses.shape[1]

    def to(self, device) -> "Batch":
        return Batch({k: v.to(device) for k, v in self.inputs.items()}, self.responses.to(device), self.mask.to(device))


def _ids(seq) -> list[int]:
    return seq.tolist() if isinstance(seq, torch.Tensor) else list(seq)


def decoder_start_id(model) -> int:
    config = model.config
    start = getattr(config, "decoder_start_token_id", None)
    if start is None:
        start = getattr(getattr(model, "generation_config", None), "decoder_start_token_id", None)
    if start is None:
        start = config.pad_token_id
    return int(start)


def make_batch(queries, responses, pad_id: int, seq2seq: bool, start_id: int | None = None, device=None) -> Batch:
    """Pad queries and responses (lists of token-id lists or 1-D tensors) into model inputs."""
    queries = [_ids(q) for q in queries]
    responses = [_ids(r) for r in responses]
    if any(len(r) == 0 for r in responses):
        raise ValueError("empty response: every response needs at least one token (e.g. the EOS)")
    resp, mask = pad(responses, pad_id, side="right")
    if seq2seq:
        ids, attn = pad(queries, pad_id, side="right")
        dec, dec_mask = pad([[start_id] + r[:-1] for r in responses], pad_id, side="right")
        inputs = {"input_ids": ids, "attention_mask": attn, "decoder_input_ids": dec, "decoder_attention_mask": dec_mask}
    else:
        q_ids, q_mask = pad(queries, pad_id, side="left")
        r_ids, r_mask = pad([r[:-1] for r in responses], pad_id, side="right")
        r_ids, r_mask = r_ids[:, : resp.shape[1] - 1], r_mask[:, : resp.shape[1] - 1]
        ids, attn = torch.cat([q_ids, r_ids], 1), torch.cat([q_mask, r_mask], 1)
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
        inputs = {"input_ids": ids, "attention_mask": attn, "position_ids": position_ids}
    batch = Batch(inputs, resp, mask)
    return batch.to(device) if device is not None else batch


def forward(model, batch: Batch, temperature: float = 1.0, with_values: bool = True, with_entropy: bool = False):
    """Log-probs [B, R] of the response tokens, values [B, R] (or None), entropy [B, R] (or None;
    differentiable under grad, for an entropy bonus).

    `model` is a `ModelWithValueHead` (possibly wrapped by accelerate/DDP) or, with
    `with_values=False`, any HF/peft language model.
    """
    inner = getattr(model, "module", model)  # under accelerate/DDP: the ModelWithValueHead
    if getattr(inner, "chunked_head", False):  # log-probs from the hidden state, without full logits
        hidden, values = model(**batch.inputs, logits_to_keep=batch.width, with_values=with_values,
                               with_logits=False)
        head = inner.lm_head()
        logprobs, entropy = linear_logprobs(hidden[:, -batch.width:], head.weight, head.bias, batch.responses,
                                            temperature, with_entropy)
        return logprobs, (values.float() if values is not None else None), entropy
    if hasattr(inner, "v_head"):
        logits, values = model(**batch.inputs, logits_to_keep=batch.width, with_values=with_values)
    else:
        logits, values = _plain_logits(model, batch), None
    logits = logits[:, -batch.width:] if logits.shape[1] != batch.width else logits
    if with_entropy:
        logprobs, entropy = logprobs_from_logits(logits, batch.responses, temperature, with_entropy=True)
    else:
        logprobs, entropy = logprobs_from_logits(logits, batch.responses, temperature), None
    return logprobs, (values.float() if values is not None else None), entropy


def rollout_pass(model, micro_batches, ref_batches, ref_logprobs, temperature: float, n: int, device,
                 with_values: bool = True) -> dict:
    """Old log-probs, values, entropy, mask and reference log-probs, [n, R] each, in batch order.

    `micro_batches`: (indices, Batch) pairs, the first PPO epoch's micro-batches: the
    policy reads exactly those, because low-precision matmul kernels round differently
    for different batch shapes, so the first probability ratio is exactly 1 (tested).
    `ref_batches`: (indices, Batch) pairs for `ref_logprobs(batch)` (any grouping:
    larger is faster). `with_values=False` (no critic) leaves values at 0. Nothing records a graph: with eager attention (what the trainer
    uses on CPU) a forward gives the same bits with and without grad. (`no_grad`, not
    inference mode, under which autocast would re-cast float32 weights for every batch.)
    """
    width = max(b.width for _, b in micro_batches)
    out = {k: torch.zeros(n, width, device=device) for k in ("logprobs", "ref_logprobs", "values", "entropy", "mask")}

    def put(idx, batch, **values):
        rows = torch.tensor(idx, device=device)
        for key, value in values.items():
            out[key][rows, :batch.width] = value.float()

    with torch.no_grad():
        for idx, batch in micro_batches:
            lp, values, ent = forward(model, batch, temperature, with_values=with_values, with_entropy=True)
            put(idx, batch, logprobs=lp, entropy=ent, mask=batch.mask, **({} if values is None else {"values": values}))
        for idx, batch in ref_batches:
            put(idx, batch, ref_logprobs=ref_logprobs(batch))
    return out


def _plain_logits(model, batch: Batch) -> torch.Tensor:
    kwargs = dict(batch.inputs)
    seq2seq = "decoder_input_ids" in kwargs
    if not seq2seq:
        kwargs["logits_to_keep"] = batch.width
    try:
        return model(**kwargs, use_cache=False).logits
    except TypeError:  # a model without logits_to_keep
        kwargs.pop("logits_to_keep", None)
        return model(**kwargs, use_cache=False).logits


@torch.inference_mode()
def response_logprobs(model, queries: list[list[int]], responses: list[list[int]], pad_id: int,
                      temperature: float = 1.0, batch_size: int = 16) -> list[torch.Tensor]:
    """Per-token log-probs of each response given its query (length = len(response)).

    Works for causal and seq2seq models, plain HF or peft-wrapped (adapters as they
    are: wrap the call in a reference's `active()` for the base model). Runs in
    inference mode with dropout off; the model's train/eval mode is restored.
    """
    inner = model.pretrained_model if hasattr(model, "v_head") else model
    seq2seq = bool(getattr(inner.config, "is_encoder_decoder", False))
    # samples of one prompt in a row (evaluation's k per prompt): each batch reads each distinct prompt once
    shared = (not seq2seq and len(queries) > 1 and any(_ids(a) == _ids(b) for a, b in zip(queries, queries[1:]))
              and decode_cache_name(inner, {}))
    start = decoder_start_id(inner) if seq2seq else None
    device = next(inner.parameters()).device
    was_training = inner.training
    inner.eval()
    out: list[torch.Tensor] = []
    try:
        for i in range(0, len(queries), batch_size):
            q, r = queries[i:i + batch_size], responses[i:i + batch_size]
            if shared:
                out += _shared_prompt_logprobs(inner, q, r, pad_id, temperature, shared, device)
                continue
            empty = [j for j, x in enumerate(r) if len(_ids(x)) == 0]
            safe = [x if len(_ids(x)) else [pad_id] for x in r]
            batch = make_batch(q, safe, pad_id, seq2seq, start, device)
            logprobs, _, _ = forward(inner, batch, temperature, with_values=False)
            for j, n in enumerate(batch.mask.sum(1).tolist()):
                out.append(logprobs[j, :0] if j in empty else logprobs[j, :n].float().cpu())
    finally:
        inner.train(was_training)
    return out


def _shared_prompt_logprobs(model, queries, responses, pad_id: int, temperature: float, cache_name: str,
                            device) -> list[torch.Tensor]:
    """One batch of `response_logprobs` for a causal model whose queries repeat (`shared_prompt_outputs`).
    With 4 samples of a 58-token prompt and 32-token replies that is about half the tokens of the
    plain pass; the same numbers (tested)."""
    r = [_ids(x) for x in responses]
    logits, resp, _ = shared_prompt_outputs(model, queries, [x if x else [pad_id] for x in r], pad_id, cache_name,
                                            device)
    logprobs = logprobs_from_logits(logits, resp, temperature)
    return [logprobs[j, :len(x)].float().cpu() for j, x in enumerate(r)]


def shared_prompt_outputs(model, queries, responses, pad_id: int, cache_name: str, device, read=None):
    """The outputs [B, R, .] predicting each response of a causal model, each distinct query read once.

    The distinct queries (left-padded) go through the model once into a KV cache copied to their
    rows (`generation.prefill_once`); every row then reads only its response on its copy, with the
    positions and attention mask of the concatenated pass (`make_batch`), so the numbers are that
    pass's; under grad the gradient flows back through the copies into the one query pass.
    `read(output)` picks what to return of each output (default: its logits). Returns (outputs,
    responses [B, R], response mask [B, R]).
    """
    ids, mask = pad([_ids(q) for q in queries], pad_id, side="left", device=device)
    first, cache, mask = prefill_once(model, ids, mask, 1, cache_name, read)
    resp, resp_mask = pad([_ids(x) for x in responses], pad_id, side="right", device=device)
    out = first[:, None]
    if resp.shape[1] > 1:  # every response token but the last predicts the next one
        position = mask.sum(-1, keepdim=True) + torch.arange(resp.shape[1] - 1, device=device)
        rest = model(input_ids=resp[:, :-1], attention_mask=torch.cat([mask, resp_mask[:, :-1]], dim=1),
                     position_ids=position, use_cache=True, **{cache_name: cache})
        out = torch.cat([out, read(rest) if read is not None else rest.logits], dim=1)
    return out, resp, resp_mask
