"""The update of one online step: `ppo_epochs` passes over shuffled mini-batches, each split into
micro-batches whose gradients add up to the mini-batch's (accumulation, DDP), with the configured
policy loss, the critic's value loss, the entropy bonus (`entropy_coef`) and, with `kl_penalty="loss"`,
the KL term."""

from __future__ import annotations

import time

import torch

from rlhfkit.models.forward import forward
from rlhfkit.objectives.aggregation import LossScale, aggregate
from rlhfkit.objectives.policy import get_policy_loss, value_loss
from rlhfkit.ops.kl import kl_estimate
from rlhfkit.training.experience import micro_batches


def optimise(trainer, batches, data: dict, perms) -> dict | None:
    """Every epoch's mini-batches: zero grads, micro-steps, clip, step. Mean stats over mini-batches,
    or None on a non-finite loss (the step is then skipped with no update from it)."""
    c, runtime = trainer.config, trainer.runtime
    mask_key = "loss_mask" if "loss_mask" in data else "mask"
    trainer.minibatch_stats = []
    trainer.pass_seconds = 0.0  # forward + loss + backward of the micro-batches, without optimiser steps
    for perm in perms:
        for mini in micro_batches(perm, c.mini_batch_size, c.gradient_accumulation_steps):
            scale = _global_scale(runtime, sum(data[mask_key][i].sum() for i in mini), sum(len(m) for m in mini),
                                  c.max_new_tokens)
            trainer.optimizer.zero_grad(set_to_none=True)
            sums: dict[str, float] = {}
            for k, micro in enumerate(mini):
                t = time.perf_counter()
                with runtime.no_sync_unless(k == len(mini) - 1, trainer.model):
                    stats = micro_step(trainer, batches, data, micro, scale)
                trainer.pass_seconds += time.perf_counter() - t
                if stats is None:
                    trainer.optimizer.zero_grad(set_to_none=True)
                    return None
                for key, v in stats.items():
                    sums[key] = sums.get(key, 0.0) + v
            if c.max_grad_norm is not None:
                runtime.clip_grad_norm_([p for p in trainer.model.parameters() if p.requires_grad], c.max_grad_norm)
            trainer.optimizer.step()
            sums["ratio_max_dev"] = sums["ratio_max_dev"] / len(mini)
            trainer.minibatch_stats.append(sums)
    keys = trainer.minibatch_stats[0].keys()
    return {k: sum(s[k] for s in trainer.minibatch_stats) / len(trainer.minibatch_stats) for k in keys}


def _global_scale(runtime, tokens: torch.Tensor, sequences: int, horizon: int) -> LossScale:
    """The mini-batch's denominators over every process, divided by their number: DDP averages the
    processes' gradients, so each one's loss is its share of the global mini-batch's (a token mean over
    all processes' tokens, not a mean of per-process means)."""
    n = runtime.num_processes
    if n == 1:
        return LossScale(tokens.clamp(min=1), float(sequences), float(horizon))
    both = runtime.reduce_sum(torch.stack([tokens.float(), torch.tensor(float(sequences), device=tokens.device)]))
    return LossScale(both[0].clamp(min=1) / n, float(both[1]) / n, float(horizon))


def micro_step(trainer, batches, data: dict, micro: list[int], scale: LossScale) -> dict | None:
    """Forward, losses and backward of one micro-batch; its stats (None when the loss is not finite)."""
    c = trainer.config
    batch = batches(micro)
    idx, w = torch.tensor(micro, device=batch.mask.device), batch.width
    old = {k: data[k][idx, :w] for k in ("logprobs", "values", "advantages", "returns", "ref_logprobs", "loss_mask")
           if k in data}
    mask = old.get("loss_mask", batch.mask)
    with trainer.runtime.autocast():
        logprobs, values, entropy = forward(trainer.model, batch, c.temperature, with_values=trainer.critic,
                                            with_entropy=c.entropy_coef > 0)
    loss_fn = get_policy_loss(c.policy_loss)
    pl, ps = loss_fn(logprobs, old["logprobs"], old["advantages"], mask, clip_low=c.cliprange,
                     clip_high=c.cliprange_high, agg=c.loss_agg_mode, scale=scale,
                     importance_sampling_level=c.importance_sampling_level)
    loss, out = pl, {"loss/policy": pl.item()}
    if trainer.critic:
        vl, vs = value_loss(values, old["values"], old["returns"], mask, c.cliprange_value, scale)
        loss = pl + c.vf_coef * vl
        out.update({"loss/value": vl.item(), "val/clipfrac": vs["clipfrac"].item(), "val/error": vs["error"].item(),
                    "val/vpred": ((values.detach() * batch.mask).sum() / scale.tokens).item()})
    if c.entropy_coef > 0:
        ent = aggregate(entropy, mask, c.loss_agg_mode, scale)
        loss = loss - c.entropy_coef * ent
        out["loss/entropy"] = ent.item()
    if c.kl_penalty == "loss":
        kl = aggregate(kl_estimate(logprobs, old["ref_logprobs"], c.kl_estimator), mask, c.loss_agg_mode, scale)
        loss = loss + trainer.kl_ctl.value * kl
        out["loss/kl"] = kl.item()
    if not torch.isfinite(loss):
        return None
    trainer.runtime.backward(loss)
    m = batch.mask.bool()
    ratio_dev = (torch.exp(logprobs.detach() - old["logprobs"])[m] - 1).abs().max()
    out.update({"loss/total": loss.item(), "policy/clipfrac": ps["clipfrac"].item(),
                "policy/approxkl": ps["approxkl"].item(), "policy/policykl": ps["policykl"].item(),
                "policy/ratio": ps["ratio"].item(), "ratio_max_dev": ratio_dev.item()})
    return out
