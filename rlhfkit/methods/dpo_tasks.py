"""DPO's and KTO's tasks on the supervised loop: what one micro-batch's loss and TRL-named metrics are.

`PairTask` (units: pairs) computes both completions' log-probs in one pass (each prompt read
once, `models.sequences.pair_logps`) and the weighted loss combination of `objectives.dpo`;
`KTOTask` (units: examples) first estimates the batch's KL reference point on mismatched pairs.
`ReferenceLogps` gives the reference's summed log-probs, from the reference network or from a
cache filled once (`--precompute-ref`).
"""

from __future__ import annotations

import gc

from rlhfkit.methods.dpo_config import DPOConfig
from rlhfkit.methods.dpo_encoding import EncodedExample, EncodedPair, mismatched


class ReferenceLogps:
    """The reference's summed log-probs: from a precomputed cache, or a forward of the Reference."""

    def __init__(self, reference, pad_id: int, share_prompt: bool = False):
        self.reference, self.pad_id, self.share_prompt = reference, pad_id, share_prompt
        self.cache: dict[tuple, float] = {}

    def logps(self, prompts, completions):
        import torch

        from rlhfkit.models.sequences import completion_logps

        keys = [(tuple(p), tuple(c)) for p, c in zip(prompts, completions)]
        if self.reference is None:
            missing = [k for k in keys if k not in self.cache]
            if missing:
                raise RuntimeError(f"{len(missing)} sequences have no precomputed reference log-probs")
            return torch.tensor([self.cache[k] for k in keys])
        with torch.no_grad(), self.reference.active():
            return completion_logps(self.reference.network, prompts, completions, self.pad_id, with_logits=False,
                                    share_prompt=self.share_prompt).sums

    def precompute(self, prompts, completions, batch_size: int, progress: bool) -> None:
        """Fill the cache, then drop the reference network (nothing but the numbers is kept)."""
        from tqdm.auto import tqdm

        todo = sorted({(tuple(p), tuple(c)) for p, c in zip(prompts, completions)}, key=lambda k: len(k[0]) + len(k[1]))
        for i in tqdm(range(0, len(todo), batch_size), desc="reference log-probs", unit="batch", disable=not progress):
            chunk = todo[i:i + batch_size]
            values = self.logps([list(k[0]) for k in chunk], [list(k[1]) for k in chunk])
            self.cache.update(zip(chunk, values.float().cpu().tolist()))
        self.reference = None
        gc.collect()


class PairTask:
    """The supervised loop's view of DPO: units are pairs, the loss the summed per-pair loss of the combination."""

    def __init__(self, pairs: list[EncodedPair], pad_id: int, config: DPOConfig, ref: ReferenceLogps | None):
        self.pairs, self.pad_id, self.config, self.ref = pairs, pad_id, config, ref
        self.settings = dict(beta=config.beta, label_smoothing=config.label_smoothing, simpo_gamma=config.simpo_gamma)
        self._step = None

    def units(self, indices) -> int:
        return len(indices)

    def before_step(self, model, indices, step) -> None:
        """This step's batch shape (this process's share): the sft term is a token mean over the whole batch,
        and logits/* are token means, so every micro-batch scales by the batch's counts."""
        chosen = sum(len(self.pairs[i].chosen) for i in indices)
        rejected = sum(len(self.pairs[i].rejected) for i in indices)
        self._step = (len(indices), max(chosen, 1), max(rejected, 1))

    def loss(self, model, indices):
        import torch

        from rlhfkit.models.sequences import pair_logps
        from rlhfkit.objectives.dpo import REFERENCE_FREE, PairLogps, combined_loss, pair_rewards

        ps = [self.pairs[i] for i in indices]
        prompts, chosen, rejected = [p.prompt for p in ps], [p.chosen for p in ps], [p.rejected for p in ps]
        if self._step is None:
            self.before_step(model, indices, None)
        pairs, chosen_tokens, rejected_tokens = self._step
        c, r = pair_logps(model, prompts, chosen, rejected, self.pad_id, share_prompt=self.config.shares_prompt)
        ref_c = ref_r = None
        if self.ref is not None:
            ref = self.ref.logps(prompts + prompts, chosen + rejected).to(c.sums.device)
            ref_c, ref_r = ref[:len(ps)], ref[len(ps):]
        x = PairLogps(c.sums, r.sums, c.tokens, r.tokens, ref_c, ref_r, tokens_per_pair=chosen_tokens / pairs)
        losses = combined_loss(self.config.loss_type, self.config.loss_weights, x, **self.settings)
        reference_free = all(t in REFERENCE_FREE for t in self.config.loss_type)
        with torch.no_grad():
            rc, rr = pair_rewards(x, self.config.beta, reference_free)
            lc, lr = x.averages() if reference_free else (x.chosen, x.rejected)  # TRL's CPO logs per-token means
            stats = {"rewards/chosen": rc.sum().item(), "rewards/rejected": rr.sum().item(),
                     "rewards/margins": (rc - rr).sum().item(), "rewards/accuracies": (rc > rr).sum().item(),
                     "logps/chosen": lc.sum().item(), "logps/rejected": lr.sum().item(),
                     # token means over the whole batch: this piece's sums x (batch pairs / batch tokens)
                     "logits/chosen": c.logit_sums.sum().item() * pairs / chosen_tokens,
                     "logits/rejected": r.logit_sums.sum().item() * pairs / rejected_tokens}
            if "sft" in self.config.loss_type or "orpo" in self.config.loss_type:
                stats["nll_loss"] = (-c.sums.sum()).item() * pairs / chosen_tokens
        return losses.sum(), stats


class KTOTask:
    """KTO on the supervised loop: units are examples; `before_step` estimates the batch's KL reference point
    (no grad) on mismatched pairs, which every micro-batch's loss then uses."""

    def __init__(self, examples: list[EncodedExample], pad_id: int, config: DPOConfig, ref: ReferenceLogps,
                 reduce=None):
        self.examples, self.pad_id, self.config, self.ref, self.reduce = examples, pad_id, config, ref, reduce
        self.partner = mismatched(len(examples), config.batch_size)
        self._kl, self._counts = None, None

    def units(self, indices) -> int:
        return len(indices)

    def kl_pairs(self, indices):
        return ([self.examples[i].prompt for i in indices],
                [self.examples[self.partner[i]].completion for i in indices])

    def before_step(self, model, indices, step) -> None:
        import torch

        from rlhfkit.models.sequences import completion_logps
        from rlhfkit.objectives.dpo import kto_kl

        prompts, completions = self.kl_pairs(indices)
        policy = completion_logps(model, prompts, completions, self.pad_id, with_logits=False).sums
        ref = self.ref.logps(prompts, completions).to(policy.device)
        diff = (policy - ref).float()
        if self.reduce is not None:  # the KL of the global batch, as TRL gathers it
            total = self.reduce(torch.stack([diff.sum(), torch.tensor(float(len(diff)), device=diff.device)]))
            self._kl = kto_kl(total[0:1] / total[1], torch.zeros(1, device=diff.device))
        else:
            self._kl = kto_kl(diff, torch.zeros_like(diff))
        good = sum(self.examples[i].label for i in indices)
        self._counts = (len(indices), good, len(indices) - good,
                        sum(len(self.examples[i].completion) for i in indices if self.examples[i].label),
                        sum(len(self.examples[i].completion) for i in indices if not self.examples[i].label))

    def loss(self, model, indices):
        import torch

        from rlhfkit.models.sequences import completion_logps
        from rlhfkit.objectives.dpo import kto_loss

        if self._kl is None:
            with torch.no_grad():
                self.before_step(model, indices, None)
        ex = [self.examples[i] for i in indices]
        prompts, completions = [e.prompt for e in ex], [e.completion for e in ex]
        out = completion_logps(model, prompts, completions, self.pad_id)
        ref = self.ref.logps(prompts, completions).to(out.sums.device)
        desirable = torch.tensor([e.label for e in ex], device=out.sums.device)
        c = self.config
        losses = kto_loss(out.sums, ref, desirable, self._kl.to(out.sums.device), c.beta, c.desirable_weight,
                          c.undesirable_weight)
        n, good, bad, good_tokens, bad_tokens = self._counts
        with torch.no_grad():
            rewards = c.beta * (out.sums.detach() - ref)
            d, u = desirable, ~desirable
            stats = {"kl": self._kl.item() * len(ex)}
            # class means over the whole batch (TRL's): this piece's class sums x (batch size / class size);
            # every step logs every key (the loop averages them), a batch without a class gives that class 0
            for key, mask, count, tokens in (("chosen", d, good, good_tokens), ("rejected", u, bad, bad_tokens)):
                stats[f"rewards/{key}"] = rewards[mask].sum().item() * n / max(count, 1)
                stats[f"logps/{key}"] = out.sums.detach()[mask].sum().item() * n / max(count, 1)
                stats[f"logits/{key}"] = out.logit_sums[mask].sum().item() * n / max(tokens, 1)
            stats["rewards/margins"] = (rewards[d].sum().item() * n / good - rewards[u].sum().item() * n / bad
                                        if good and bad else 0.0)
        return losses.sum(), stats


# ---------------------------------------------------------------- evaluation


def evaluate_task(model, task, n: int, batch_size: int, autocast: bool = False) -> dict:
    """Mean loss and metrics over `n` held-out units, in batches (no grad, dropout off)."""
    import torch

    if not n:
        return {}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    totals: dict[str, float] = {}
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        for start in range(0, n, batch_size):
            idx = list(range(start, min(start + batch_size, n)))
            task.before_step(model, idx, None)
            loss, stats = task.loss(model, idx)
            for k, v in {"loss": loss.item(), **stats}.items():
                totals[k] = totals.get(k, 0.0) + float(v)
    model.train(was_training)
    return {k: v / n for k, v in totals.items()}


__all__ = ["KTOTask", "PairTask", "ReferenceLogps", "evaluate_task"]
