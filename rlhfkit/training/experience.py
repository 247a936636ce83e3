"""From sampled responses to training data: processed scores, the rollout pass, advantages.

`Experience` holds, per sequence of one batch, everything the update reads: the
rollout's log-probs, the reference's, values (with a critic), entropy, the mask, the
KL per token, the token rewards and the advantages (and returns). All [B, T].
"""

from __future__ import annotations

import torch

from rlhfkit.models.forward import Batch, decoder_start_id, forward, make_batch, rollout_pass
from rlhfkit.objectives.advantages import AdvantageInputs, get_advantage_estimator, shape_token_rewards
from rlhfkit.ops.kl import kl_estimate


def process_scores(scores: torch.Tensor, responses, config, eos_id: int, score_stats, runtime) -> torch.Tensor:
    """The cap, the EOS penalty, running normalisation (over every process's scores) and clipping of raw scores."""
    if config.score_cap is not None:
        scores = scores.clamp(max=config.score_cap)
    if config.missing_eos_penalty is not None:
        missing = torch.tensor([r[-1] != eos_id for r in responses])
        scores = scores - config.missing_eos_penalty * missing.float()
    if config.normalize_scores:
        score_stats.update(runtime.gather(scores.to(runtime.device)).cpu())
        scores = (scores - score_stats.mean) / (score_stats.std + 1e-8)
    if config.score_clip is not None:
        scores = scores.clamp(-config.score_clip, config.score_clip)
    return scores


def permutation(seed: int, step: int, n: int, epoch: int) -> list[int]:
    """The mini-batch order of an epoch: a function of (seed, step, epoch), so resume replays it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 1009 + epoch)
    return torch.randperm(n, generator=g).tolist()


def micro_batches(perm: list[int], mini_batch_size: int, accumulation: int):
    """Mini-batches of the permutation, each a list of micro-batches (lists of indices)."""
    micro = mini_batch_size // accumulation
    for i in range(0, len(perm), mini_batch_size):
        chunk = perm[i:i + mini_batch_size]
        yield [chunk[j:j + micro] for j in range(0, len(chunk), micro)]


class BatchMaker:
    """Padded model inputs for a subset of one step's (query, response) pairs."""

    def __init__(self, queries, responses, pad_id: int, seq2seq: bool, start_id: int | None, device):
        self.queries, self.responses = queries, responses
        self.pad_id, self.seq2seq, self.start_id, self.device = pad_id, seq2seq, start_id, device

    @classmethod
    def for_model(cls, queries, responses, tokenizer, pretrained_model, seq2seq: bool, device) -> "BatchMaker":
        start = decoder_start_id(pretrained_model) if seq2seq else None
        return cls(queries, responses, tokenizer.pad_token_id, seq2seq, start, device)

    def __call__(self, idx) -> Batch:
        return make_batch([self.queries[i] for i in idx], [self.responses[i] for i in idx], self.pad_id,
                          self.seq2seq, self.start_id, self.device)


def rollout(model, reference, batches: BatchMaker, perm, config, runtime, with_reference: bool) -> dict:
    """Old log-probs, values, entropy and mask of the policy, in the first epoch's micro-batches (so the
    first ratio is exactly 1), and the reference's log-probs (`forward_batch_size` at once), all without
    grad under the run's autocast. `reference` is a `models.reference.Reference`."""
    micro = [(m, batches(m)) for mini in micro_batches(perm, config.mini_batch_size, config.gradient_accumulation_steps)
             for m in mini]
    n, size = len(batches.responses), config.forward_batch_size
    if not with_reference:
        ref = []
    elif not size and config.mixed_precision != "no":
        # Low-precision matmul kernels round differently for different batch shapes: reading the
        # reference in the policy's own micro-batches keeps the KL before any update exactly 0.
        ref = micro
    else:
        size = size or n
        ref = [(i, batches(i)) for i in (list(range(j, min(j + size, n))) for j in range(0, n, size))]

    def ref_logprobs(batch: Batch) -> torch.Tensor:
        network = model if reference.kind == "adapters_off" else reference.network
        with reference.active():
            return forward(network, batch, config.temperature, with_values=False)[0]

    with runtime.autocast():
        return rollout_pass(model, micro, ref, ref_logprobs, config.temperature, n, runtime.device,
                            with_values=config.uses_critic)


def advantages(data: dict, scores: torch.Tensor, config, kl_coef: float, group_ids, reduce) -> dict:
    """The per-token KL, token rewards (with the KL in them when `kl_penalty` is "reward") and the
    chosen estimator's advantages (and returns)."""
    mask = data["mask"]
    has_ref = config.kl_penalty != "none"
    kl = kl_estimate(data["logprobs"], data["ref_logprobs"], config.kl_estimator) * mask if has_ref else None
    in_reward = config.kl_penalty == "reward"
    token_rewards, non_score = shape_token_rewards(scores, mask, kl if in_reward else None, kl_coef if in_reward else 0.0)
    estimator = get_advantage_estimator(config.advantage_estimator)
    adv, returns = estimator(AdvantageInputs(
        token_rewards=token_rewards, scores=scores.to(mask.device), mask=mask,
        values=data["values"] if config.uses_critic else None,
        group_ids=group_ids.to(mask.device) if group_ids is not None else None, gamma=config.gamma, lam=config.lam,
        whiten=config.whiten_advantages, scale_rewards=config.scale_rewards, reduce=reduce))
    out = {"non_score": non_score, "advantages": adv, "returns": returns if returns is not None else torch.zeros_like(adv)}
    if kl is not None:
        out["kl"] = kl
    return out


def truncated_out_of_loss(data: dict, responses, eos_id: int, max_new_tokens: int) -> None:
    """`loss_mask`: the mask without the completions that hit the length limit without EOS (DAPO)."""
    cut = torch.tensor([len(r) >= max_new_tokens and r[-1] != eos_id for r in responses], device=data["mask"].device)
    data["loss_mask"] = data["mask"] * (~cut)[:, None].to(data["mask"].dtype)
