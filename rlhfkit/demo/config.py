"""The demo's settings: every field, and the presets (`default`, `quick`) that fill the unset ones."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from rlhfkit.config import option, renamed

ONLINE_METHODS = ("ppo", "grpo", "rloo")
OFFLINE_METHODS = ("dpo",)  # trained on the label stage's rankings directly: no reward model, no sampling
ASSETS = Path(__file__).resolve().parents[1] / "assets"


@renamed(out="output_dir")
@dataclass
class DemoConfig:
    preset: Literal["default", "quick"] = option("default", "default: smollm2-135m + minilm-l6 (~20 min on 2 cores); quick: tiny models (< 2 min)")
    output_dir: str = option("runs/demo", "run folder: one sub-folder per stage, report.html at the top")
    from_stage: str | None = option(None, "redo this stage (generate, label, reward, a method's name, eval, report) and "
                                          "every later one (default: reuse finished stages)")
    method: list[str] = option(["ppo"], "methods to train on the feedback, each in its own stage folder (ppo, grpo, "
                                        "rloo, dpo); the first is the headline ('after' in the evaluation)")
    direct_reward: str | None = option(None, "also train PPO directly on this reward spec (e.g. profanity: no labels, "
                                             "no reward model), in the stage ppo-direct, to show what the reward "
                                             "model costs")
    feedback: str | None = option(None, "human rankings exported by `rlhfkit label export --format rankings`; replaces generate+label")
    policy: str | None = option(None, "policy model (preset: smollm2-135m / tiny-gpt2)")
    reward_backbone: str | None = option(None, "reward-model backbone (preset: minilm-l6 / tiny-bert)")
    labeler: str = option("profanity", "reward spec the scripted labeler ranks completions by")
    tie_threshold: float = option(0.05, "the scripted labeler ties completions whose scores differ by at most this")
    train_prompts: str = option(str(ASSETS / "prompts_train.jsonl"), "training prompts file")
    heldout_prompts: str = option(str(ASSETS / "prompts_heldout.jsonl"), "held-out prompts file for evaluation")
    n_label_prompts: int | None = option(None, "training prompts used for labelled completions (preset)")
    k: int | None = option(None, "completions per prompt for ranking (preset)")
    max_new_tokens: int | None = option(None, "tokens per completion, everywhere (preset)")
    reward_epochs: int | None = option(None, "reward-model epochs (preset)")
    reward_ties: Literal["drop", "half"] | None = option(None, "tied completions in the reward model's training: "
                                                               "dropped, or half a win each way (preset)")
    reward_lr: float | None = option(None, "reward-model learning rate (preset)")
    ppo_steps: int | None = option(None, "PPO steps (preset)")
    ppo_batch_size: int | None = option(None, "prompts per PPO step (preset)")
    ppo_lr: float | None = option(None, "PPO learning rate (preset)")
    ppo_epochs: int | None = option(None, "PPO optimisation epochs per batch (preset)")
    init_kl_coef: float | None = option(None, "KL penalty coefficient beta (preset)")
    entropy_coef: float | None = option(None, "entropy bonus of the online methods (preset)")
    reward_cap: float | None = option(None, "cap the reward model's score, for the online methods, at this quantile "
                                            "of its scores on the ranked (reference) completions, e.g. 0.5: "
                                            "beating an ordinary good reply earns nothing more (preset; 1 = off)")
    n_eval_prompts: int | None = option(None, "held-out prompts used for evaluation (preset)")
    eval_samples: int | None = option(None, "completions per held-out prompt and model (preset)")
    eval_temperature: float = option(0.7, "sampling temperature of the evaluation, before and after alike")
    eval_top_p: float = option(0.9, "nucleus sampling of the evaluation, before and after alike")
    label_temperature: float = option(0.7, "sampling temperature of the completions people (or the labeler) rank")
    label_top_p: float = option(0.9, "nucleus sampling of the completions to rank")
    rollout_temperature: float = option(0.7, "sampling temperature of the online methods' rollouts; their log-probs "
                                             "and KL use the same (no top-p there: it would bias the log-probs)")
    dpo_epochs: int | None = option(None, "DPO epochs over the rankings' pairs (preset)")
    dpo_lr: float | None = option(None, "DPO learning rate (LoRA; preset)")
    dpo_beta: float | None = option(None, "DPO beta (preset)")
    num_generations: int = option(4, "completions per prompt in a step of the group methods (grpo, rloo)")
    mixed_precision: Literal["no", "bf16"] | None = option(None, "bf16 autocast for PPO training passes (preset)")
    compress: bool = option(False, "a final stage: quantize, prune and distil the first method's model and write "
                                   "its deployment table (stage folder compress/, a section of the report)")
    seed: int = option(0, "random seed for every stage")


PRESETS = {
    "default": dict(
        policy="smollm2-135m", reward_backbone="minilm-l6", n_label_prompts=320, k=4, max_new_tokens=32,
        reward_epochs=3, reward_lr=1e-4, reward_ties="drop",
        ppo_steps=24, ppo_batch_size=16, ppo_lr=4e-4, ppo_epochs=1, init_kl_coef=0.1, entropy_coef=0.05,
        reward_cap=1.0, mixed_precision="no",
        n_eval_prompts=200, eval_samples=4, dpo_epochs=2, dpo_lr=5e-5, dpo_beta=0.1,
    ),
    "quick": dict(
        policy="tiny-gpt2", reward_backbone="tiny-bert", n_label_prompts=24, k=3, max_new_tokens=8,
        reward_epochs=1, reward_lr=1e-4, reward_ties="drop",
        ppo_steps=3, ppo_batch_size=8, ppo_lr=1e-3, ppo_epochs=2, init_kl_coef=0.05, entropy_coef=0.0,
        reward_cap=1.0, mixed_precision="no",
        n_eval_prompts=16, eval_samples=2, dpo_epochs=1, dpo_lr=1e-3, dpo_beta=0.1,
    ),
}


def resolve_preset(config: DemoConfig) -> DemoConfig:
    """Fill every unset field from the preset."""
    preset = PRESETS[config.preset]
    return replace(config, **{k: v for k, v in preset.items() if getattr(config, k) is None})
