"""Log-probabilities of sampled tokens, computed in float32 in row chunks with hand-written backwards.

Shapes: B = sequences, T = response tokens, V = vocabulary, H = hidden size.
`logprobs_from_logits` reads a model's logits; `linear_logprobs` computes them from the
LM head's input without holding them (for activation-checkpointed training); both give
the same bits as the no-grad path the rollout uses, so PPO's first ratio is exactly 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Rows of a [N, V] logits matrix handled at once in float32: with V = 49k, 32 rows are
# 6 MB, so temporaries stay in the allocator's reused heap (a fresh vocab-sized buffer
# per op costs page faults that, on CPU, can take longer than the maths).
_ROWS = 32


def _over_temperature(rows: torch.Tensor, temperature: float) -> torch.Tensor:
    """rows / T in float32 as one new tensor (`rows.float() / T` makes two when rows are bf16)."""
    return rows.to(torch.float32, copy=True).div_(temperature)


def _label_logprobs(flat: torch.Tensor, labels: torch.Tensor, temperature: float):
    """flat [N, V] logits, labels [N] -> (log p(label) [N], logsumexp [N]) of logits / T, in float32."""
    lse = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
    for i in range(0, flat.shape[0], _ROWS):
        lse[i:i + _ROWS] = torch.logsumexp(_over_temperature(flat[i:i + _ROWS], temperature), dim=-1)
    picked = flat.gather(-1, labels[:, None]).squeeze(-1).float() / temperature
    return picked - lse, lse


def _label_logprob_grad(out, flat, labels, lse, g, temperature, entropy=None, g_entropy=None):
    """d/dz of sum_n g_n log softmax(z_n / T)[label_n] = (1[j = label] - softmax(z / T)_j) g / T, into `out`,
    plus, with `g_entropy`, that of sum_n g_entropy_n H_n: -p_j (log p_j + H_n) g_entropy_n / T.

    `out` may be `flat` itself: each row chunk is read before it is overwritten.
    """
    g = g[:, None].float() / temperature
    ge = g_entropy[:, None].float() / temperature if g_entropy is not None else None
    for i in range(0, flat.shape[0], _ROWS):
        logp = _over_temperature(flat[i:i + _ROWS], temperature).sub_(lse[i:i + _ROWS, None])
        p = logp.exp()
        if ge is not None:  # computed before `out`'s rows (maybe `flat`'s) are overwritten
            dh = logp.add_(entropy[i:i + _ROWS, None]).mul_(p).mul_(-ge[i:i + _ROWS])
        out[i:i + _ROWS] = p.mul_(-g[i:i + _ROWS]).scatter_add_(-1, labels[i:i + _ROWS, None], g[i:i + _ROWS])
        if ge is not None:
            out[i:i + _ROWS] += dh
    return out


class _LabelLogprob(torch.autograd.Function):
    """log softmax(logits / T)[label] per row (and the entropy, when asked), with a hand-written backward.

    Autograd through `gather - logsumexp` keeps five vocab-sized temporaries per
    call (the division, the shift, the exponent, a zero-filled scatter target and
    their sum); this writes the one gradient buffer row-chunk by row-chunk.
    """

    @staticmethod
    def forward(ctx, logits, labels, temperature, with_entropy):
        flat, lab = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
        logprobs, lse = _label_logprobs(flat, lab, temperature)
        entropy = entropy_from_logits(flat, temperature) if with_entropy else lse.new_empty(0)
        ctx.save_for_backward(logits, labels, lse, entropy)
        ctx.temperature = temperature
        ctx.set_materialize_grads(False)
        return logprobs.view(labels.shape), (entropy.view(labels.shape) if with_entropy else entropy)

    @staticmethod
    def backward(ctx, grad_out, grad_entropy):
        logits, labels, lse, entropy = ctx.saved_tensors
        flat = logits.reshape(-1, logits.shape[-1])
        g = grad_out.reshape(-1) if grad_out is not None else lse.new_zeros(lse.shape)
        ge = grad_entropy.reshape(-1) if grad_entropy is not None and entropy.numel() else None
        grad = _label_logprob_grad(torch.empty_like(flat), flat, labels.reshape(-1), lse, g, ctx.temperature,
                                   entropy, ge)
        return grad.view(logits.shape), None, None, None


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                         with_entropy: bool = False):
    """log p(label) under softmax(logits / temperature): logits [B, T, V], labels [B, T] -> [B, T] (float32);
    with `with_entropy`, (log-probs, entropy [B, T]), both differentiable (an entropy bonus).

    Computed in float32 whatever the logits' dtype, in row chunks, with a fused backward.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logprobs, entropy = _LabelLogprob.apply(logits, labels, float(temperature), with_entropy)
    return (logprobs, entropy) if with_entropy else logprobs


def _head_rows(vocab: int) -> int:
    """Rows of the LM head's matmul per chunk in `linear_logprobs`: about 16M logits at a time.

    A SmolLM2 or GPT-2 micro-batch of a few hundred response tokens is one chunk; a
    128k vocabulary (Llama 3) takes 130 rows at a time. Far fewer rows per matmul run
    slower on CPU (Llama 3's head, 1,024 rows, bf16 forward+backward: 5.0 s at 32 rows
    a chunk, 3.3 s at 128).
    """
    return max(16, (1 << 24) // vocab)


def _linear_logprobs_chunks(flat, weight, bias, labels, temperature, dtype, with_entropy):
    """Per row chunk: logits = flat @ W^T + b in `dtype`, then log p(label), logsumexp (and entropy) in float32."""
    n, rows = flat.shape[0], _head_rows(weight.shape[0])
    w, b = weight.to(dtype), (bias.to(dtype) if bias is not None else None)
    logprobs, lse = (torch.empty(n, dtype=torch.float32, device=flat.device) for _ in range(2))
    entropy = torch.empty(n, dtype=torch.float32, device=flat.device) if with_entropy else None
    for i in range(0, n, rows):
        z = F.linear(flat[i:i + rows].to(dtype), w, b)
        logprobs[i:i + rows], lse[i:i + rows] = _label_logprobs(z, labels[i:i + rows], temperature)
        if with_entropy:
            entropy[i:i + rows] = entropy_from_logits(z, temperature)
    return logprobs, lse, entropy


class _LinearLabelLogprob(torch.autograd.Function):
    """log softmax((hidden @ W^T + b) / T)[label] per row, without keeping the logits for the backward.

    `_LabelLogprob` on the LM head's output holds the [N, V] logits from the forward
    to the backward and then builds their [N, V] gradient beside them; this keeps
    only the hidden states and each row's logsumexp, and in the backward recomputes
    the logits a row chunk at a time, overwriting them with their gradient: one more
    head matmul for (at most) one chunk of logits held instead of two full copies.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, temperature, dtype, with_entropy):
        flat, lab = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
        logprobs, lse, entropy = _linear_logprobs_chunks(flat, weight, bias, lab, temperature, dtype, with_entropy)
        entropy = entropy if with_entropy else lse.new_empty(0)
        ctx.save_for_backward(hidden, weight, bias, labels, lse, entropy)
        ctx.temperature, ctx.dtype = temperature, dtype
        ctx.set_materialize_grads(False)
        return logprobs.view(labels.shape), (entropy.view(labels.shape) if with_entropy else entropy)

    @staticmethod
    def backward(ctx, grad_out, grad_entropy):
        hidden, weight, bias, labels, lse, entropy = ctx.saved_tensors
        dtype = ctx.dtype
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        flat, lab = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
        g = grad_out.reshape(-1) if grad_out is not None else lse.new_zeros(lse.shape)
        ge = grad_entropy.reshape(-1) if grad_entropy is not None and entropy.numel() else None
        w, b = weight.to(dtype), (bias.to(dtype) if bias is not None else None)
        d_hidden = torch.empty_like(flat) if need_hidden else None
        d_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        d_bias = torch.zeros_like(bias, dtype=torch.float32) if need_bias else None
        rows = _head_rows(weight.shape[0])
        for i in range(0, flat.shape[0], rows):
            h = flat[i:i + rows].to(dtype)
            dz = F.linear(h, w, b)
            _label_logprob_grad(dz, dz, lab[i:i + rows], lse[i:i + rows], g[i:i + rows], ctx.temperature,
                                entropy[i:i + rows] if ge is not None else None,
                                ge[i:i + rows] if ge is not None else None)
            if need_hidden:
                d_hidden[i:i + rows] = dz @ w
            if need_weight:
                d_weight += dz.t() @ h
            if need_bias:
                d_bias += dz.sum(0)
        return (d_hidden.view(hidden.shape) if need_hidden else None,
                d_weight.to(weight.dtype) if need_weight else None,
                d_bias.to(bias.dtype) if need_bias else None, None, None, None, None)


def linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
                    temperature: float = 1.0, with_entropy: bool = False):
    """`logprobs_from_logits(F.linear(hidden, weight, bias), labels, temperature)` without holding the logits.

    hidden [B, T, H], weight [V, H], labels [B, T] -> (log-probs [B, T] in float32, the
    entropy [B, T] when `with_entropy`, else None; both differentiable under grad). The head's matmul runs
    in autocast's dtype when autocast is on, else in the weight's; the softmax in
    float32. Differentiable in hidden, weight and bias: the backward recomputes the
    logits in row chunks (`_LinearLabelLogprob`). The log-probs computed without grad
    are bit-identical to those of the differentiable call on the same tensors.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    with torch.autocast(device, enabled=False):
        if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (hidden, weight, bias)):
            logprobs, entropy = _LinearLabelLogprob.apply(hidden, weight, bias, labels, float(temperature), dtype,
                                                          with_entropy)
            return logprobs, (entropy if with_entropy else None)
        flat, lab = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
        logprobs, _, entropy = _linear_logprobs_chunks(flat, weight, bias, lab, float(temperature), dtype,
                                                       with_entropy)
        return logprobs.view(labels.shape), (entropy.view(labels.shape) if with_entropy else None)


@torch.no_grad()
def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) per position: [B, T, V] -> [B, T] (no gradient)."""
    flat = logits.reshape(-1, logits.shape[-1])
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
    for i in range(0, flat.shape[0], _ROWS):
        logp = torch.log_softmax(_over_temperature(flat[i:i + _ROWS], temperature), dim=-1)
        out[i:i + _ROWS] = -(logp.exp() * logp).sum(-1)
    return out.view(logits.shape[:-1])
