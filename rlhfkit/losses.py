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


# Rows of a [N, V] logits matrix handled at once: with V = 49k, 32 rows are 6 MB of
# float32, so temporaries stay in the allocator's reused heap (a fresh vocab-sized
# buffer per op costs page faults that, on CPU, can take longer than the maths).
_ROWS = 32


class _LabelLogprob(torch.autograd.Function):
    """log softmax(logits / T)[label] per row, with a hand-written backward.

    Autograd through `gather - logsumexp` keeps five vocab-sized temporaries per
    call (the division, the shift, the exponent, a zero-filled scatter target and
    their sum); this writes the one gradient buffer row-chunk by row-chunk:
    d/dz_j = (1[j = label] - softmax(z / T)_j) / T.
    """

    @staticmethod
    def forward(ctx, logits, labels, temperature):
        flat, lab = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1, 1)
        lse = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
        for i in range(0, flat.shape[0], _ROWS):
            lse[i:i + _ROWS] = torch.logsumexp(flat[i:i + _ROWS].float() / temperature, dim=-1)
        picked = flat.gather(-1, lab).squeeze(-1).float() / temperature
        ctx.save_for_backward(logits, labels, lse)
        ctx.temperature = temperature
        return (picked - lse).view(labels.shape)

    @staticmethod
    def backward(ctx, grad_out):
        logits, labels, lse = ctx.saved_tensors
        t = ctx.temperature
        flat, lab = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1, 1)
        g = grad_out.reshape(-1, 1).float() / t
        grad = torch.empty_like(flat)
        for i in range(0, flat.shape[0], _ROWS):
            p = (flat[i:i + _ROWS].float() / t).sub_(lse[i:i + _ROWS, None]).exp_()  # softmax rows
            grad[i:i + _ROWS] = p.mul_(-g[i:i + _ROWS]).scatter_add_(-1, lab[i:i + _ROWS], g[i:i + _ROWS])
        return grad.view(logits.shape), None, None


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(label) under softmax(logits / temperature): logits [B, T, V], labels [B, T] -> [B, T] (float32).

    Computed in float32 whatever the logits' dtype, in row chunks, with a fused backward.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return _LabelLogprob.apply(logits, labels, float(temperature))


@torch.no_grad()
def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) per position: [B, T, V] -> [B, T] (no gradient)."""
    flat = logits.reshape(-1, logits.shape[-1])
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
    for i in range(0, flat.shape[0], _ROWS):
        logp = torch.log_softmax(flat[i:i + _ROWS].float() / temperature, dim=-1)
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
