"""PPO's settings: what to train, optimisation, the clipped objective, the KL leash, scores,
sampling and run control. Every field is a CLI flag and a YAML key (`rlhfkit ppo --help`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhfkit.config import option
from rlhfkit.errors import UserError


@dataclass
class PPOConfig:
    # what to train (used by `train`, `resume` and the CLI; ignored when a model object is given)
    model: str = option("smollm2-135m", "embedded name, hub id or folder of the policy")
    prompts: str | None = option(None, "prompts file (JSONL, CSV, Parquet or datasets folder)")
    reward: str = option("profanity", "reward source: an embedded name (profanity, vader, ...) or a reward model")
    lora: bool = option(True, "train a LoRA adapter; the reference is the model with adapters disabled")
    lora_r: int = option(16, "LoRA rank")
    lora_alpha: int = option(32, "LoRA scaling alpha")
    dtype: str = option("float32", "policy weights dtype: float32 or bfloat16")
    steps: int = option(100, "PPO steps (batches) to run")
    resume: str | None = option(None, "checkpoint or run folder to resume from (CLI)")
    output_dir: str | None = option("runs/ppo", "run folder: config, metrics, samples, checkpoints, final model")
    # optimisation
    learning_rate: float = option(1e-5, "Adam learning rate")
    lr_schedule: Literal["constant", "linear"] = option("constant", "learning-rate schedule over `steps`")
    batch_size: int = option(16, "prompts per PPO step (per process)")
    mini_batch_size: int = option(4, "sequences per optimiser step inside a PPO epoch")
    gradient_accumulation_steps: int = option(1, "micro-batches per mini-batch (memory only; same maths)")
    ppo_epochs: int = option(4, "optimisation passes over each batch")
    max_grad_norm: float | None = option(1.0, "clip the gradient norm (None = off)")
    gradient_checkpointing: bool = option(False, "recompute layer activations (and the response logits) in the "
                                                 "backward pass: far less memory, about one more forward pass of "
                                                 "compute per micro-batch (with compile: the compiler's own, fused "
                                                 "recomputation)")
    compile: bool = option(False, "torch.compile the transformer layers for the training passes (sampling and "
                                  "rollout stay eager): LoRA bf16 passes a fifth faster on CPU after a one-off compile")
    mixed_precision: Literal["no", "bf16", "fp16"] = option("no", "accelerate mixed precision (bf16 works on CPU)")
    # PPO
    gamma: float = option(1.0, "discount factor")
    lam: float = option(0.95, "GAE lambda")
    cliprange: float = option(0.2, "policy ratio clip range")
    cliprange_value: float = option(0.2, "value clip range around the old values")
    vf_coef: float = option(0.1, "value loss coefficient")
    # KL leash
    init_kl_coef: float = option(0.2, "initial KL coefficient beta")
    adaptive_kl: bool = option(True, "adapt beta towards kl_target (else fixed beta)")
    kl_target: float = option(6.0, "target per-sequence KL of the adaptive controller (nats)")
    kl_horizon: int = option(10000, "horizon (samples) of the adaptive controller")
    kl_estimator: Literal["k1", "k3"] = option("k1", "per-token KL estimator: k1 = log p/q, k3 = non-negative")
    # scores
    normalize_scores: bool = option(False, "normalise scores with their running mean and std")
    score_clip: float | None = option(None, "clip (processed) scores to [-c, c] (None = off)")
    missing_eos_penalty: float | None = option(None, "subtract from the score of completions without EOS")
    # generation
    max_new_tokens: int = option(48, "maximum tokens per completion")
    min_new_tokens: int = option(0, "minimum tokens per completion")
    temperature: float = option(1.0, "sampling temperature (log-probs use the same)")
    top_k: int = option(0, "top-k sampling (0 = off, as PPO's log-probs assume)")
    top_p: float = option(1.0, "nucleus sampling (1 = off)")
    max_prompt_tokens: int | None = option(256, "keep the last N tokens of longer prompts")
    static_cache: bool = option(False, "allocate the sampling KV cache once at its final length instead of "
                                       "growing it per token: about 0.06 GB less peak memory for SmolLM2 at batch 16 "
                                       "on CPU, sampling a few percent slower")
    generation_batch_size: int = option(0, "sequences generated at once (0 = batch_size)")
    forward_batch_size: int = option(0, "sequences per reference forward (no grad); 0 = the whole batch in "
                                        "float32, the training micro-batches in bf16 (whose kernels round by shape)")
    # run
    seed: int = option(0, "random seed")
    log_every: int = option(1, "print a summary line every N steps")
    save_every: int = option(0, "checkpoint every N steps (0 = only at the end)")
    samples_per_step: int = option(4, "prompt/response/score rows written to samples.jsonl per step")
    max_bad_steps: int = option(3, "stop after this many skipped (non-finite) steps in a row")

    def validate(self) -> None:
        for name in ("batch_size", "mini_batch_size", "gradient_accumulation_steps", "ppo_epochs", "max_new_tokens",
                     "steps", "kl_horizon", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.mini_batch_size % self.gradient_accumulation_steps:
            raise UserError("mini_batch_size must be a multiple of gradient_accumulation_steps")
        if self.temperature <= 0 or self.learning_rate <= 0:
            raise UserError("temperature and learning_rate must be positive")
        if self.kl_estimator not in ("k1", "k3"):
            raise UserError(f"kl_estimator {self.kl_estimator!r}: use k1 or k3")

    def generation(self):
        from rlhfkit.generation import GenerationSettings

        return GenerationSettings(self.max_new_tokens, self.temperature, int(self.top_k), self.top_p, self.min_new_tokens)
