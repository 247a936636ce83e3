"""The DPO family: preference losses on sequence log-probs, chosen by name, combinable with weights.

Every loss is a pure function of one `PairLogps` (summed completion log-probs of the
policy and, for the reference-based ones, of the reference, with the completions'
token counts) and keyword settings, returning per-pair losses [B]. TRL's semantics
(DPOTrainer 1.16 for the DPO losses, CPOTrainer for simpo, ORPOTrainer for orpo,
KTOTrainer for kto), so values and gradients match it (bench/parity_dpo.py):

- `sigmoid` (DPO): -log sigmoid(beta * d), d = (pi_c - ref_c) - (pi_r - ref_r); with
  `label_smoothing` eps > 0 it is conservative DPO (cDPO):
  -(1 - eps) log sigmoid(beta d) - eps log sigmoid(-beta d);
- `robust` (rDPO): (-(1 - eps) log sigmoid(beta d) + eps log sigmoid(-beta d)) / (1 - 2 eps),
  unbiased under label noise eps;
- `hinge` (SLiC): relu(1 - beta d);
- `ipo`: (d_avg - 1 / (2 beta))^2 with per-token-averaged log-ratios (TRL's normalisation);
- `sft`: the NLL of the chosen completion (a token mean over the batch, TRL's; RPO's term);
- `simpo` (reference-free): -log sigmoid(beta (avg pi_c - avg pi_r) - gamma), avg = per-token mean;
- `orpo` (reference-free): the chosen NLL (as `sft`) - lambda log sigmoid(log odds(c) - log odds(r))
  on per-token-mean log-probs, odds(p) = p / (1 - p);
- `kto` (unpaired): 1 - sigmoid(beta (r - KL)) for desirable and 1 - sigmoid(beta (KL - r))
  for undesirable examples, r = pi - ref, weighted by `desirable_weight` / `undesirable_weight`;
  KL is the batch's detached estimate (`kto_kl`).

`combined_loss(names, weights, logps, ...)` sums the weighted batch means, as TRL's list-valued
`loss_type` with `loss_weights`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlhfkit.objectives.registry import Registry

PAIR_LOSSES = Registry("DPO loss")
register_pair_loss = PAIR_LOSSES.register
REFERENCE_FREE = ("sft", "simpo", "orpo")


@dataclass
class PairLogps:
    """Summed completion log-probs [B] of a batch of pairs; tokens are each completion's token counts [B].

    `ref_*` are the reference's (None for reference-free losses). `tokens_per_pair` is
    the whole optimisation batch's chosen tokens / pairs, so that the `sft` term of a
    micro-batch is its share of the batch's token mean (default: this batch's own).
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None
    tokens_per_pair: torch.Tensor | float | None = None

    def logratios(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.ref_chosen is None or self.ref_rejected is None:
            raise ValueError("this loss needs the reference's log-probs (ref_chosen, ref_rejected)")
        return self.chosen - self.ref_chosen, self.rejected - self.ref_rejected

    def averages(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token mean log-probs (length-normalised), as SimPO and ORPO use."""
        return (self.chosen / self.chosen_tokens.clamp(min=1).to(self.chosen.dtype),
                self.rejected / self.rejected_tokens.clamp(min=1).to(self.rejected.dtype))


def get_pair_loss(name: str):
    return PAIR_LOSSES.lookup(name)


def _delta(x: PairLogps) -> torch.Tensor:
    c, r = x.logratios()
    return c - r


@register_pair_loss("sigmoid")
def sigmoid_loss(x: PairLogps, beta: float = 0.1, label_smoothing: float = 0.0, **_) -> torch.Tensor:
    """DPO; with label_smoothing > 0, conservative DPO (labels flipped with probability eps)."""
    z = beta * _delta(x)
    if label_smoothing == 0:
        return -F.logsigmoid(z)
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


@register_pair_loss("robust")
def robust_loss(x: PairLogps, beta: float = 0.1, label_smoothing: float = 0.0, **_) -> torch.Tensor:
    """rDPO (Chowdhury et al. 2024): the unbiased loss under label-flip rate eps in [0, 0.5)."""
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"the robust loss needs label_smoothing in [0, 0.5), got {label_smoothing}")
    z = beta * _delta(x)
    return (-(1 - label_smoothing) * F.logsigmoid(z) + label_smoothing * F.logsigmoid(-z)) / (1 - 2 * label_smoothing)


@register_pair_loss("hinge")
def hinge_loss(x: PairLogps, beta: float = 0.1, **_) -> torch.Tensor:
    """SLiC's hinge on the reward margin: relu(1 - beta d)."""
    return torch.relu(1 - beta * _delta(x))


@register_pair_loss("ipo")
def ipo_loss(x: PairLogps, beta: float = 0.1, **_) -> torch.Tensor:
    """IPO (Azar et al., eq. 17) on per-token-mean log-ratios (the normalisation TRL and the authors use)."""
    c, r = x.logratios()
    d = c / x.chosen_tokens.clamp(min=1).to(c.dtype) - r / x.rejected_tokens.clamp(min=1).to(r.dtype)
    return (d - 1 / (2 * beta)) ** 2


@register_pair_loss("sft")
def sft_loss(x: PairLogps, chosen_nll: torch.Tensor | None = None, **_) -> torch.Tensor:
    """NLL of the chosen completions, the batch's token mean, on every pair (RPO's term in a combination).

    `chosen_nll` [B]: each pair's summed chosen-token NLL (default: -x.chosen).
    """
    nll = -x.chosen if chosen_nll is None else chosen_nll
    n = nll.shape[0]
    per_pair = x.chosen_tokens.sum().clamp(min=1) / n if x.tokens_per_pair is None else x.tokens_per_pair
    # this piece's NLL as equal shares per pair: over a whole batch of N pairs and T chosen tokens,
    # the pairs' losses sum to N * (sum NLL / T), so their mean is the token mean
    return (nll.sum() / n / per_pair).expand(n)


@register_pair_loss("simpo")
def simpo_loss(x: PairLogps, beta: float = 2.0, simpo_gamma: float = 0.5, label_smoothing: float = 0.0,
               **_) -> torch.Tensor:
    """SimPO (Meng et al. 2024), reference-free: -log sigmoid(beta (avg_c - avg_r) - gamma), TRL CPOTrainer's form."""
    c, r = x.averages()
    z = beta * (c - r) - simpo_gamma
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable at both ends (Maechler 2012)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


@register_pair_loss("orpo")
def orpo_loss(x: PairLogps, beta: float = 0.1, **_) -> torch.Tensor:
    """ORPO (Hong et al. 2024, eqs. 4-7), reference-free: the chosen NLL (`sft`'s token mean) plus
    -beta log sigmoid(log odds ratio) on per-token-mean log-probs; TRL ORPOTrainer's `beta` is the paper's lambda."""
    c, r = x.averages()
    c, r = c.float(), r.float()
    log_odds = (c - r) - (log1mexp(c) - log1mexp(r))
    return sft_loss(x) - beta * F.logsigmoid(log_odds)


def combined_loss(names: list[str], weights: list[float] | None, x: PairLogps, **settings) -> torch.Tensor:
    """Per-pair sum of the weighted losses (TRL's list `loss_type` + `loss_weights`): [B]."""
    weights = [1.0] * len(names) if weights is None else list(weights)
    if len(weights) != len(names):
        raise ValueError(f"{len(weights)} loss weights for {len(names)} losses {names}; give one weight per loss")
    total = None
    for name, w in zip(names, weights):
        term = w * get_pair_loss(name)(x, **settings)
        total = term if total is None else total + term
    return total


def pair_rewards(x: PairLogps, beta: float, reference_free: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The implicit rewards TRL logs: beta * log-ratio (DPO), or beta * the policy's log-prob where the
    losses are reference-free (CPO/SimPO: per-token means; ORPO likewise). Detached."""
    if reference_free:
        c, r = x.averages()
        return beta * c.detach(), beta * r.detach()
    c, r = x.logratios()
    return beta * c.detach(), beta * r.detach()


# ---------------------------------------------------------------- KTO (unpaired)


def kto_kl(policy_logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point: the batch mean of log pi - log ref on mismatched (prompt, completion) pairs,
    detached and clamped at 0 (Ethayarajh et al. 2024; TRL's estimate)."""
    return (policy_logps - ref_logps).mean().detach().clamp(min=0)


def kto_loss(logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor, kl: torch.Tensor | float,
             beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> torch.Tensor:
    """Per-example KTO losses [B] (eq. 7): w_d (1 - sigmoid(beta (r - KL))) for desirable examples,
    w_u (1 - sigmoid(beta (KL - r))) for undesirable ones, r = log pi - log ref. Their mean is TRL's loss."""
    r = logps - ref_logps
    kl = torch.as_tensor(kl, dtype=r.dtype, device=r.device)
    good = 1 - torch.sigmoid(beta * (r - kl))
    bad = 1 - torch.sigmoid(beta * (kl - r))
    return torch.where(desirable.bool(), desirable_weight * good, undesirable_weight * bad)


__all__ = [
    "PAIR_LOSSES", "PairLogps", "REFERENCE_FREE", "combined_loss", "get_pair_loss", "hinge_loss", "ipo_loss",
    "kto_kl", "kto_loss", "log1mexp", "orpo_loss", "pair_rewards", "register_pair_loss", "robust_loss",
    "sft_loss", "sigmoid_loss", "simpo_loss",
]
