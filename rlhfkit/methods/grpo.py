"""GRPO and its variants on the online loop: several samples per prompt, each one's advantage its reward
against its group's (no critic), the clipped surrogate, and by default no reference model at all.

    trainer = GRPOTrainer(GRPOConfig(model="smollm2-135m", prompts="prompts.jsonl", num_generations=4))
    trainer.train("profanity")

The variants are settings (TRL's `loss_type` names in brackets):
- GRPO: `loss_agg_mode="seq-mean-token-mean"` [grpo]; the default `token-mean` is DAPO's [dapo, bnpo];
- Dr. GRPO: `advantage_estimator="dr_grpo"` (or `scale_rewards="none"`) with
  `loss_agg_mode="seq-mean-token-sum-norm"` [dr_grpo];
- DAPO: `cliprange_high=0.28` (clip-higher), `mask_truncated_completions=True`;
- GSPO: `importance_sampling_level="sequence"`;
- a KL leash: `kl_penalty="loss"` with `init_kl_coef` > 0 (TRL's `beta`, k3 estimator).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhfkit.config import option
from rlhfkit.training.online import OnlineTrainer
from rlhfkit.training.online_config import OnlineConfig


@dataclass
class GRPOConfig(OnlineConfig):
    """GRPO's settings: every field is a CLI flag and a YAML key (`rlhfkit grpo --help`)."""

    lora: bool = option(True, "train a LoRA adapter (the reference, when a KL is used, is the model with adapters off)")
    output_dir: str | None = option("runs/grpo", "run folder: config, metrics, samples, checkpoints, final model")
    learning_rate: float = option(1e-5, "peak learning rate (AdamW)")
    batch_size: int = option(16, "completions per step (per process): prompts x num_generations")
    num_generations: int = option(4, "completions sampled per prompt (a group)")
    mini_batch_size: int = option(16, "sequences per optimiser step (the whole batch: one on-policy update)")
    gradient_accumulation_steps: int = option(4, "micro-batches per optimisation step (memory only; same maths)")
    ppo_epochs: int = option(1, "optimisation passes over each batch (TRL's num_iterations)")
    advantage_estimator: str = option("grpo", "advantage estimator: grpo, dr_grpo, rloo, reinforce_plus_plus, ...")
    kl_penalty: Literal["reward", "loss", "none"] = option(
        "none", "where the KL to the reference goes: none (TRL's beta 0: no reference in memory), loss, or reward")
    init_kl_coef: float = option(0.04, "KL coefficient beta when kl_penalty is loss or reward")
    adaptive_kl: bool = option(False, "adapt beta towards kl_target (else fixed beta)")
    kl_estimator: Literal["k1", "k2", "k3"] = option("k3", "per-token KL estimator (k3: TRL's, non-negative)")
    max_prompt_tokens: int | None = option(256, "keep the last N tokens of longer prompts")

    def validate(self) -> None:
        from rlhfkit.errors import UserError

        super().validate()
        if self.uses_critic:
            raise UserError(f"GRPO has no critic; advantage_estimator {self.advantage_estimator!r} needs one "
                            "(use rlhfkit ppo for gae)")


class GRPOTrainer(OnlineTrainer):
    """GRPO: `OnlineTrainer` with GRPO's config (estimator grpo, no critic, no reference by default)."""

    config_class = GRPOConfig
    progress_name = "grpo"
