"""Pure tensor maths with no trainer state (torch only).

- `logprobs`: log-probs and entropy of sampled tokens (fused, chunked kernels);
- `masked`: statistics over the real tokens of padded batches, running moments;
- `kl`: per-token KL estimators (k1, k2, k3) and KL-coefficient controllers.
"""

from rlhfkit.ops.kl import AdaptiveKLController, FixedKLController, kl_controller, kl_estimate
from rlhfkit.ops.logprobs import entropy_from_logits, linear_logprobs, logprobs_from_logits
from rlhfkit.ops.masked import RunningMoments, masked_mean, masked_moments, masked_sum, masked_var, masked_whiten

__all__ = [
    "AdaptiveKLController", "FixedKLController", "RunningMoments", "entropy_from_logits", "kl_controller",
    "kl_estimate", "linear_logprobs", "logprobs_from_logits", "masked_mean", "masked_moments", "masked_sum",
    "masked_var", "masked_whiten",
]
