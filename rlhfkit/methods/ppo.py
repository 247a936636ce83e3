"""PPO with a KL leash to a frozen reference, for causal and seq2seq models: the online loop with
GAE advantages from a critic (value head), the clipped surrogate and the KL in the per-token reward.

    trainer = PPOTrainer(PPOConfig(model="smollm2-135m", prompts="prompts.jsonl"))
    trainer.train("profanity")

or the step-wise API of `rlhfkit.training.online.OnlineTrainer` (`generate`, `step`, `log_stats`).
One step: sample; score; one forward pass for policy log-probs and values, one for reference
log-probs (adapters disabled when LoRA); per-token reward -beta * KL plus the score on the last
token; GAE; whitened advantages; `ppo_epochs` passes of clipped policy and value losses over
shuffled mini-batches.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.config import option
from rlhfkit.training.online import OnlineTrainer
from rlhfkit.training.online_config import OnlineConfig


@dataclass
class PPOConfig(OnlineConfig):
    """PPO's settings: every field is a CLI flag and a YAML key (`rlhfkit ppo --help`)."""

    lora: bool = option(True, "train a LoRA adapter; the reference is the model with adapters disabled")
    output_dir: str | None = option("runs/ppo", "run folder: config, metrics, samples, checkpoints, final model")
    learning_rate: float = option(1e-5, "peak learning rate (AdamW)")
    batch_size: int = option(16, "prompts per PPO step (per process)")
    steps: int = option(100, "PPO steps (batches) to run")
    max_prompt_tokens: int | None = option(256, "keep the last N tokens of longer prompts")

    def validate(self) -> None:
        from rlhfkit.errors import UserError

        super().validate()
        if not self.uses_critic:
            raise UserError(f"PPO's advantages come from its critic; advantage_estimator {self.advantage_estimator!r} "
                            "has none (use gae, or the method that estimator belongs to)")


class PPOTrainer(OnlineTrainer):
    """PPO: `OnlineTrainer` with PPO's config (estimator gae, policy loss ppo, KL in the reward)."""

    config_class = PPOConfig
    progress_name = "ppo"
