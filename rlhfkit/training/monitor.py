"""What an online step reports and guards: statistics under the familiar names, warnings once each.

Names follow the classic PPO dashboards (`objective/kl`, `env/reward_mean`,
`ppo/policy/clipfrac`, `ppo/loss/value`, ...), so they carry over from other libraries.
"""

from __future__ import annotations

import math

import warnings

import numpy as np
import torch

from rlhfkit.errors import UserError
from rlhfkit.ops.masked import masked_mean, masked_moments, masked_var


def step_stats(trainer, data: dict, scores, raw_scores, queries, responses, train: dict, group_ids=None) -> dict:
    """The step's statistics, averaged over processes."""
    mask = data["mask"]
    mean, var = masked_mean, masked_var
    if trainer.runtime.num_processes > 1:  # token statistics of the global batch, not a mean of per-process means
        reduce = trainer.runtime.reduce_sum
        mean, var = (lambda x, m: masked_moments(x, m, reduce)[0]), (lambda x, m: masked_moments(x, m, reduce)[1])
    local = {}
    if "kl" in data:
        local["objective/kl"] = data["kl"].sum(1).mean()
    local.update({
        "objective/entropy": (-data["logprobs"] * mask).sum(1).mean(),
        "objective/scores": scores.mean(),
        "ppo/mean_non_score_reward": data["non_score"].sum(1).mean(),
        "ppo/mean_scores": scores.mean(),
        "ppo/std_scores": scores.std() if len(scores) > 1 else torch.tensor(0.0),
        "ppo/policy/entropy": mean(data["entropy"], mask),
        "ppo/policy/advantages_mean": mean(data["advantages"], mask),
    })
    if trainer.critic:
        local.update({"ppo/returns/mean": mean(data["returns"], mask),
                      "ppo/returns/var": var(data["returns"], mask),
                      "ppo/val/mean": mean(data["values"], mask),
                      "ppo/val/var": var(data["values"], mask)})
    local.update({
        "env/reward_mean": raw_scores.mean(),
        "env/reward_std": raw_scores.std() if len(raw_scores) > 1 else torch.tensor(0.0),
        "env/hit_length_limit": torch.tensor(np.mean([hit_limit(trainer, r) for r in responses])),
        "tokens/queries_len_mean": torch.tensor(float(np.mean([len(q) for q in queries]))),
        "tokens/responses_len_mean": mask.sum(1).mean(),
    })
    local.update({f"ppo/{k}": torch.tensor(v) for k, v in train.items() if k != "ratio_max_dev"})
    names = list(local)
    values = torch.stack([local[k].float().to(trainer.runtime.device) for k in names])
    if trainer.runtime.num_processes > 1:
        values = trainer.runtime.reduce(values, "mean")
    stats = {k: float(v) for k, v in zip(names, values.tolist())}
    stats.update(trl_names(stats))
    if group_ids is not None and trainer.config.num_generations > 1:
        from rlhfkit.objectives.advantages import group_statistics

        zero = group_statistics(raw_scores.double(), group_ids.cpu())[2] == 0
        stats["frac_reward_zero_std"] = float(zero.double().mean())
    stats["objective/kl_coef"] = float(trainer.kl_ctl.value)
    stats["ppo/learning_rate"] = float(trainer.optimizer.param_groups[0]["lr"])
    stats["ppo/skipped_steps"] = float(trainer.skipped_steps)
    return stats


# TRL's GRPO/RLOO dashboards name the same numbers so
_TRL_NAMES = {"reward": "env/reward_mean", "reward_std": "env/reward_std", "kl": "objective/kl",
              "entropy": "ppo/policy/entropy", "completions/mean_length": "tokens/responses_len_mean",
              "clip_ratio/region_mean": "ppo/policy/clipfrac"}


def trl_names(stats: dict) -> dict:
    return {new: stats[old] for new, old in _TRL_NAMES.items() if old in stats}


def hit_limit(trainer, response: list[int]) -> bool:
    return len(response) >= trainer.config.max_new_tokens and response[-1] != trainer.tokenizer.eos_token_id


def warn_once(trainer, key: str, message: str) -> None:
    if key not in trainer.warned:
        trainer.warned.add(key)
        warnings.warn(message)


def check(trainer, stats: dict) -> None:
    """Warn (once each) when the KL is negative, completions hit the length limit, or KL runs away."""
    kl = stats.get("objective/kl")
    if kl is not None and kl < -1.0:
        warn_once(trainer, "negative_kl", f"mean KL is negative ({kl:.2f}): sampling settings probably differ "
                                          "from the log-prob computation (top_k/top_p/temperature); sample with "
                                          "top_k=0, top_p=1")
    if stats["env/hit_length_limit"] > 0.9:
        warn_once(trainer, "length", f"{100 * stats['env/hit_length_limit']:.0f}% of completions hit max_new_tokens "
                                     "without EOS; raise max_new_tokens or set missing_eos_penalty")
    if kl is None:
        return
    trainer.trend.append({"objective/kl": kl, "env/reward_mean": stats["env/reward_mean"]})
    if len(trainer.trend) >= 20:
        old, new = trainer.trend[-20:-10], trainer.trend[-10:]
        kl_old, kl_new = (np.mean([h["objective/kl"] for h in w]) for w in (old, new))
        r_old, r_new = (np.mean([h["env/reward_mean"] for h in w]) for w in (old, new))
        if kl_new > max(2 * kl_old, 2 * trainer.config.kl_target, 10.0) and r_new > r_old:
            warn_once(trainer, "runaway", f"KL is running away ({kl_old:.1f} -> {kl_new:.1f} nats) while reward "
                                          "rises: likely reward hacking; raise init_kl_coef or lower learning_rate")


def skip(trainer, why: str, queries) -> dict:
    """Count a skipped step (no update); several in a row stop the run with a message naming the batch."""
    trainer.skipped_steps += 1
    trainer.bad_in_row += 1
    trainer.step_count += 1
    if trainer.bad_in_row >= trainer.config.max_bad_steps:
        first = trainer.tokenizer.decode(queries[0], skip_special_tokens=True)[:80]
        raise UserError(f"{trainer.bad_in_row} steps in a row skipped ({why}); last at step {trainer.step_count}, batch "
                        f"starting with prompt {first!r}; check the reward function and lower learning_rate")
    warnings.warn(f"step {trainer.step_count}: {why}; step skipped")
    return {"ppo/skipped_steps": float(trainer.skipped_steps), "ppo/skipped": 1.0}


def progress(trainer, bar, stats: dict, steps: int) -> None:
    """The progress bar's reward/KL, and a summary line every `log_every` steps."""
    reward, kl = stats.get("env/reward_mean", float("nan")), stats.get("objective/kl", float("nan"))
    bar.update(1)
    # without a reference (kl_penalty "none") there is no KL and no beta to show
    leash = trainer.reference is not None and math.isfinite(kl)
    bar.set_postfix(reward=f"{reward:.3f}", **({"kl": f"{kl:.3f}"} if leash else {}))
    if trainer.config.log_every and trainer.step_count % trainer.config.log_every == 0 and trainer.runtime.is_main_process:
        seconds = stats.get("time/ppo/total", 0.0) + stats.get("time/generate", 0.0) + stats.get("time/reward", 0.0)
        kl_text = f"kl {kl:.4f}  beta {trainer.kl_ctl.value:.4f}  " if leash else ""
        bar.write(f"step {trainer.step_count}/{steps}  reward {reward:.4f}  {kl_text}"
                  f"len {stats.get('tokens/responses_len_mean', 0):.1f}  {seconds:.1f}s")
