"""What training minimises, as pure functions on tensors, chosen by name where methods differ.

- `aggregation`: per-token losses to one number (token-mean, seq-mean-token-mean, ...);
- `advantages`: registry of advantage estimators (gae, ...) and token-reward shaping;
- `policy`: registry of policy losses (ppo's clipped surrogate, ...) and the value loss;
- `preference`: pairwise losses (Bradley-Terry);
- `lm`: negative log-likelihood and sequence log-probs;
- `distill`: registry of distillation divergences (forward KL at a temperature, reverse KL, generalised JSD).
"""

from rlhfkit.objectives.advantages import (
    ADVANTAGE_ESTIMATORS, AdvantageInputs, gae, get_advantage_estimator, masked_gae, register_advantage_estimator,
    shape_token_rewards,
)
from rlhfkit.objectives.aggregation import LOSS_AGG_MODES, LossScale, aggregate
from rlhfkit.objectives.distill import DISTILL_LOSSES, generalized_jsd, get_distill_loss
from rlhfkit.objectives.lm import nll_loss, sequence_logprobs
from rlhfkit.objectives.policy import POLICY_LOSSES, get_policy_loss, register_policy_loss, value_loss
from rlhfkit.objectives.preference import bradley_terry_loss

__all__ = [
    "ADVANTAGE_ESTIMATORS", "DISTILL_LOSSES", "AdvantageInputs", "LOSS_AGG_MODES", "LossScale", "POLICY_LOSSES", "aggregate",
    "bradley_terry_loss", "gae", "generalized_jsd", "get_advantage_estimator", "get_distill_loss", "get_policy_loss", "masked_gae", "nll_loss",
    "register_advantage_estimator", "register_policy_loss", "sequence_logprobs", "shape_token_rewards", "value_loss",
]
