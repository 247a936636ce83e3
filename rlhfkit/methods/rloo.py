"""RLOO on the online loop: several samples per prompt, each one's advantage its reward minus the mean of
its siblings' (leave-one-out, no critic), with the KL to the reference in the reward (k1, summed per
sequence), as in Ahmadian et al. 2024 and TRL's RLOOTrainer.

    trainer = RLOOTrainer(RLOOConfig(model="smollm2-135m", prompts="prompts.jsonl"))
    trainer.train("profanity")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhfkit.config import option
from rlhfkit.training.online import OnlineTrainer
from rlhfkit.training.online_config import OnlineConfig


@dataclass
class RLOOConfig(OnlineConfig):
    """RLOO's settings: every field is a CLI flag and a YAML key (`rlhfkit rloo --help`)."""

    lora: bool = option(True, "train a LoRA adapter; the reference is the model with adapters disabled")
    output_dir: str | None = option("runs/rloo", "run folder: config, metrics, samples, checkpoints, final model")
    learning_rate: float = option(1e-5, "peak learning rate (AdamW)")
    batch_size: int = option(16, "completions per step (per process): prompts x num_generations")
    num_generations: int = option(4, "completions sampled per prompt (a group)")
    mini_batch_size: int = option(16, "sequences per optimiser step (the whole batch: one on-policy update)")
    gradient_accumulation_steps: int = option(4, "micro-batches per optimisation step (memory only; same maths)")
    ppo_epochs: int = option(1, "optimisation passes over each batch")
    advantage_estimator: str = option("rloo", "advantage estimator: rloo, grpo, dr_grpo, reinforce_plus_plus, ...")
    whiten_advantages: bool = option(False, "normalise advantages over the batch (TRL's normalize_advantages)")
    kl_penalty: Literal["reward", "loss", "none"] = option("reward", "where the KL to the reference goes")
    init_kl_coef: float = option(0.05, "KL coefficient beta")
    adaptive_kl: bool = option(False, "adapt beta towards kl_target (else fixed beta)")
    kl_estimator: Literal["k1", "k2", "k3"] = option("k1", "per-token KL estimator (k1 in the reward, as RLOO's paper)")
    max_prompt_tokens: int | None = option(256, "keep the last N tokens of longer prompts")

    def validate(self) -> None:
        from rlhfkit.errors import UserError

        super().validate()
        if self.uses_critic:
            raise UserError(f"RLOO has no critic; advantage_estimator {self.advantage_estimator!r} needs one "
                            "(use rlhfkit ppo for gae)")


class RLOOTrainer(OnlineTrainer):
    """RLOO: `OnlineTrainer` with RLOO's config (estimator rloo, no critic, k1 KL in the reward)."""

    config_class = RLOOConfig
    progress_name = "rloo"
