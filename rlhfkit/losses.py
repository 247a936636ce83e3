"""Losses and the small maths around them, as pure functions on tensors.

Shapes are in the docstrings: B = batch, T = response tokens. Masks are 1 for
real tokens and 0 for padding. Tests check each against hand-worked numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, margin: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Pairwise reward-model loss: mean of -log sigmoid(r_chosen - r_rejected - margin).

    chosen_rewards, rejected_rewards: [B]; margin: scalar or [B] (how much the
    chosen answer should win by). Written with logsigmoid for stability at large gaps.
    """
    return -F.logsigmoid(chosen_rewards - rejected_rewards - margin).mean()


# ---------------------------------------------------------------- PPO maths
#
# Shapes: B = sequences, T = response tokens (right-padded), V = vocabulary.
# `mask` [B, T] is 1 on real response tokens, 0 on padding.


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over the positions where mask is 1 (all of them, or along `dim`)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of x over the masked positions (Bessel-corrected when `unbiased`)."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked positions; padding positions come out as 0.

    x, mask: [B, T]. With `shift_mean=False` the mean is added back (scale only).
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(out.dtype)


def discount_matrix(length: int, factor: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """[T, T] upper-triangular M with M[k, t] = factor**(k - t) for k >= t, else 0.

    `deltas @ M` gives, at each t, sum over k >= t of factor**(k-t) * deltas[k].
    """
    idx = torch.arange(length, device=device)
    power = (idx[:, None] - idx[None, :]).to(dtype)
    return torch.where(power >= 0, torch.as_tensor(factor, dtype=dtype, device=device) ** power.clamp(min=0),
                       torch.zeros((), dtype=dtype, device=device))


def gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation, vectorised over batch and time.

    rewards, values: [B, T]; the value after the last step is 0 (episode ends).
    delta_t = r_t + gamma * V_{t+1} - V_t;  A_t = sum_{k>=t} (gamma*lam)^(k-t) delta_k.
    Returns (advantages [B, T], returns [B, T] = advantages + values).
    """
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    deltas = rewards + gamma * next_values - values
    advantages = deltas @ discount_matrix(rewards.shape[1], gamma * lam, deltas.dtype, deltas.device)
    return advantages, advantages + values


def masked_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
               lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE for right-padded responses: padding carries no reward and no value, so each
    sequence ends at its last real token. rewards, values, mask: [B, T]; returns
    (advantages, returns), both 0 on padding."""
    m = mask.to(values.dtype)
    advantages, returns = gae(rewards * m, values * m, gamma, lam)
    return advantages * m, returns * m


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


def _label_logprob_grad(out, flat, labels, lse, g, temperature):
    """d/dz of sum_n g_n log softmax(z_n / T)[label_n] = (1[j = label] - softmax(z / T)_j) g / T, into `out`.

    `out` may be `flat` itself: each row chunk is read before it is overwritten.
    """
    g = g[:, None].float() / temperature
    for i in range(0, flat.shape[0], _ROWS):
        p = _over_temperature(flat[i:i + _ROWS], temperature).sub_(lse[i:i + _ROWS, None]).exp_()  # softmax rows
        out[i:i + _ROWS] = p.mul_(-g[i:i + _ROWS]).scatter_add_(-1, labels[i:i + _ROWS, None], g[i:i + _ROWS])
    return out


class _LabelLogprob(torch.autograd.Function):
    """log softmax(logits / T)[label] per row, with a hand-written backward.

    Autograd through `gather - logsumexp` keeps five vocab-sized temporaries per
    call (the division, the shift, the exponent, a zero-filled scatter target and
    their sum); this writes the one gradient buffer row-chunk by row-chunk.
    """

    @staticmethod
    def forward(ctx, logits, labels, temperature):
        flat, lab = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
        logprobs, lse = _label_logprobs(flat, lab, temperature)
        ctx.save_for_backward(logits, labels, lse)
        ctx.temperature = temperature
        return logprobs.view(labels.shape)

    @staticmethod
    def backward(ctx, grad_out):
        logits, labels, lse = ctx.saved_tensors
        flat = logits.reshape(-1, logits.shape[-1])
        grad = _label_logprob_grad(torch.empty_like(flat), flat, labels.reshape(-1), lse, grad_out.reshape(-1),
                                   ctx.temperature)
        return grad.view(logits.shape), None, None


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(label) under softmax(logits / temperature): logits [B, T, V], labels [B, T] -> [B, T] (float32).

    Computed in float32 whatever the logits' dtype, in row chunks, with a fused backward.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return _LabelLogprob.apply(logits, labels, float(temperature))


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
    def forward(ctx, hidden, weight, bias, labels, temperature, dtype):
        flat, lab = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
        logprobs, lse, _ = _linear_logprobs_chunks(flat, weight, bias, lab, temperature, dtype, with_entropy=False)
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        ctx.temperature, ctx.dtype = temperature, dtype
        return logprobs.view(labels.shape)

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        dtype = ctx.dtype
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        flat, lab, g = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1), grad_out.reshape(-1)
        w, b = weight.to(dtype), (bias.to(dtype) if bias is not None else None)
        d_hidden = torch.empty_like(flat) if need_hidden else None
        d_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        d_bias = torch.zeros_like(bias, dtype=torch.float32) if need_bias else None
        rows = _head_rows(weight.shape[0])
        for i in range(0, flat.shape[0], rows):
            h = flat[i:i + rows].to(dtype)
            dz = F.linear(h, w, b)
            _label_logprob_grad(dz, dz, lab[i:i + rows], lse[i:i + rows], g[i:i + rows], ctx.temperature)
            if need_hidden:
                d_hidden[i:i + rows] = dz @ w
            if need_weight:
                d_weight += dz.t() @ h
            if need_bias:
                d_bias += dz.sum(0)
        return (d_hidden.view(hidden.shape) if need_hidden else None,
                d_weight.to(weight.dtype) if need_weight else None,
                d_bias.to(bias.dtype) if need_bias else None, None, None, None)


def linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
                    temperature: float = 1.0, with_entropy: bool = False):
    """`logprobs_from_logits(F.linear(hidden, weight, bias), labels, temperature)` without holding the logits.

    hidden [B, T, H], weight [V, H], labels [B, T] -> (log-probs [B, T] in float32, the
    entropy [B, T] when `with_entropy` (no gradient), else None). The head's matmul runs
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
            if with_entropy:
                raise ValueError("with_entropy needs no grad: the entropy is a statistic, not a loss term")
            return _LinearLabelLogprob.apply(hidden, weight, bias, labels, float(temperature), dtype), None
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


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the sampled tokens' log-probs.

    logprobs, ref_logprobs: [B, T]. k1 = log p - log q (unbiased, can be negative);
    k3 = (q/p - 1) - log(q/p) (unbiased, never negative, lower variance).
    """
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; use 'k1' or 'k3'")


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float = 0.2, n_tokens: torch.Tensor | float | None = None) -> tuple[torch.Tensor, dict]:
    """PPO clipped surrogate: mean over tokens of max(-A * ratio, -A * clamp(ratio, 1-clip, 1+clip)).

    logprobs (with grad), old_logprobs, advantages, mask: [B, T]. The sum is divided by
    `n_tokens` (default: tokens in this batch); pass the mini-batch's token count when
    accumulating micro-batches so the gradients add up to the mini-batch's.
    Returns (loss, stats) with clipfrac, approxkl (0.5 E[(log ratio)^2]), policykl, ratio mean.
    """
    m = mask.to(logprobs.dtype)
    n = m.sum().clamp(min=1) if n_tokens is None else n_tokens
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = (torch.maximum(loss1, loss2) * m).sum() / n
    with torch.no_grad():
        stats = {
            "clipfrac": ((loss2 > loss1).to(m.dtype) * m).sum() / n,
            "approxkl": 0.5 * (log_ratio**2 * m).sum() / n,
            "policykl": (-log_ratio * m).sum() / n,
            "ratio": (ratio * m).sum() / n,
        }
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float = 0.2, n_tokens: torch.Tensor | float | None = None) -> tuple[torch.Tensor, dict]:
    """Clipped value loss: 0.5 * mean over tokens of max((V - R)^2, (clamp(V, V_old +- clip) - R)^2).

    values (with grad), old_values, returns, mask: [B, T]. `n_tokens` as in `policy_loss`.
    Returns (loss, stats) with clipfrac and error (mean (V - R)^2).
    """
    m = mask.to(values.dtype)
    n = m.sum().clamp(min=1) if n_tokens is None else n_tokens
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    loss1 = (values - returns) ** 2
    loss2 = (clipped - returns) ** 2
    loss = 0.5 * (torch.maximum(loss1, loss2) * m).sum() / n
    with torch.no_grad():
        stats = {"clipfrac": ((loss2 > loss1).to(m.dtype) * m).sum() / n, "error": (loss1 * m).sum() / n}
    return loss, stats


class FixedKLController:
    """A constant KL coefficient beta."""

    def __init__(self, value: float):
        self.value = float(value)

    def update(self, current_kl: float, n_samples: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Adaptive beta (Ziegler et al. 2019): beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon.

    `current_kl` is the mean per-sequence KL of the last batch, `n_samples` its size
    (summed over processes)."""

    def __init__(self, value: float, target: float, horizon: int):
        super().__init__(value)
        self.target, self.horizon = float(target), int(horizon)

    def update(self, current_kl: float, n_samples: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_samples / self.horizon


class RunningMoments:
    """Running mean and std of scores across batches (Chan et al. parallel update)."""

    def __init__(self):
        self.mean, self.var, self.count = 0.0, 1.0, 1e-24

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double().flatten()
        n = x.numel()
        if n == 0:
            return
        b_mean, b_var = x.mean().item(), x.var(unbiased=False).item()
        delta, total = b_mean - self.mean, self.count + n
        m2 = self.var * self.count + b_var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var, self.count = m2 / total, total

    @property
    def std(self) -> float:
        return max(self.var, 0.0) ** 0.5

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]
