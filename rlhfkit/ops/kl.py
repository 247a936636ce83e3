"""Per-token KL estimators and the KL coefficient's controllers.

The estimators follow Schulman's "Approximating KL divergence" (and verl/OpenRLHF's
names): with r = log p - log q on tokens sampled from the policy p,

- k1 = r                       unbiased, can be negative (verl "kl");
- k2 = r^2 / 2                 biased, never negative, low variance (verl "mse");
- k3 = (e^-r - 1) + r          unbiased, never negative, low variance (verl "low_var_kl").

Their gradients differ as loss terms: k2's gradient is that of KL(p || q) itself (the
on-policy gradient of k1 in the reward), which is why GRPO-style "KL in the loss" uses
k3 or k2 rather than k1.
"""

from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")
_ALIASES = {"kl": "k1", "mse": "k2", "low_var_kl": "k3"}


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the sampled tokens' log-probs.

    logprobs, ref_logprobs: [B, T]; kind: k1, k2 or k3 (or verl's names kl, mse, low_var_kl).
    """
    kind = _ALIASES.get(kind, kind)
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; use one of {list(KL_ESTIMATORS)}")


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


def kl_controller(coef: float, adaptive: bool = False, target: float = 6.0, horizon: int = 10000) -> FixedKLController:
    """The fixed controller, or the adaptive one steering towards `target` nats per sequence."""
    return AdaptiveKLController(coef, target, horizon) if adaptive else FixedKLController(coef)
