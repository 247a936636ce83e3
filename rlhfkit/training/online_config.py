"""The online loop's settings: what to train, the shared LoRA / optimisation / sampling blocks, and
the method's pieces by name (advantage estimator, policy loss, loss aggregation, where the KL goes).

A method's config (`rlhfkit.methods.ppo.PPOConfig`, ...) is this class with its own defaults.
Every field is a CLI flag and a YAML key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhfkit.config import LoraFields, OptimFields, SamplingFields, option
from rlhfkit.errors import UserError


@dataclass
class _Task:
    # what to train (used by `train`, `resume` and the CLI; ignored when a model object is given)
    model: str = option("smollm2-135m", "embedded name, hub id or folder of the policy")
    prompts: str | None = option(None, "prompts file (JSONL, CSV, Parquet or datasets folder)")
    reward: str = option("profanity", "reward source: an embedded name (profanity, vader, ...) or a reward model")
    dtype: str = option("float32", "policy weights dtype: float32 or bfloat16")


@dataclass
class _Run:
    steps: int = option(100, "optimisation steps (batches) to run")
    resume: str | None = option(None, "checkpoint or run folder to resume from (CLI)")
    output_dir: str | None = option("runs/online", "run folder: config, metrics, samples, checkpoints, final model")
    log_every: int = option(1, "print a summary line every N steps")
    save_every: int = option(0, "checkpoint every N steps (0 = only at the end)")
    samples_per_step: int = option(4, "prompt/response/score rows written to samples.jsonl per step")
    max_bad_steps: int = option(3, "stop after this many skipped (non-finite) steps in a row")


@dataclass
class _Method:
    lr_schedule: Literal["constant", "linear"] = option("constant", "learning-rate schedule over `steps`")
    batch_size: int = option(16, "completions per step (per process): prompts x num_generations")
    num_generations: int = option(1, "completions sampled per prompt (a group; group-relative estimators need >= 2)")
    mini_batch_size: int = option(4, "sequences per optimiser step inside an epoch")
    ppo_epochs: int = option(4, "optimisation passes over each batch")
    advantage_estimator: str = option("gae", "advantage estimator by name (rlhfkit.objectives.advantages)")
    policy_loss: str = option("ppo", "policy loss by name (rlhfkit.objectives.policy)")
    loss_agg_mode: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = \
        option("token-mean", "how per-token losses become one number")
    whiten_advantages: bool = option(True, "normalise advantages over the batch (gae, rloo)")
    scale_rewards: Literal["group", "batch", "none"] = option("group", "grpo: divide advantages by the std of the "
                                                                       "prompt's group, of the batch, or not at all")
    importance_sampling_level: Literal["token", "sequence"] = option(
        "token", "policy ratio per token, or one per sequence (the geometric mean: GSPO)")
    mask_truncated_completions: bool = option(False, "leave completions that hit max_new_tokens without EOS out "
                                                     "of the loss (their reward still counts in the groups)")
    gamma: float = option(1.0, "discount factor")
    lam: float = option(0.95, "GAE lambda")
    cliprange: float = option(0.2, "policy ratio clip range (below 1)")
    cliprange_high: float | None = option(None, "upper clip range (None = cliprange; larger = DAPO's clip-higher)")
    cliprange_value: float = option(0.2, "value clip range around the old values")
    vf_coef: float = option(0.1, "value loss coefficient")
    entropy_coef: float = option(0.0, "entropy bonus: subtract this times the policy's mean token entropy from the "
                                      "loss (verl's entropy_coeff); keeps replies varied against a reward with one "
                                      "favourite answer")
    # KL leash
    kl_penalty: Literal["reward", "loss", "none"] = option(
        "reward", "where the KL to the reference goes: per-token in the reward, a loss term, or off (no reference)")
    init_kl_coef: float = option(0.2, "initial KL coefficient beta")
    adaptive_kl: bool = option(True, "adapt beta towards kl_target (else fixed beta)")
    kl_target: float = option(6.0, "target per-sequence KL of the adaptive controller (nats)")
    kl_horizon: int = option(10000, "horizon (samples) of the adaptive controller")
    kl_estimator: Literal["k1", "k2", "k3"] = option("k1", "per-token KL estimator: k1 = log p/q, k2 = (log p/q)^2/2, "
                                                           "k3 = non-negative, unbiased")
    # scores
    score_cap: float | None = option(None, "cap raw scores at this value, before anything else (None = off): a "
                                           "reply better than good enough earns nothing more, so the policy "
                                           "is paid for fixing bad replies, not for converging on the reward "
                                           "model's favourite one")
    normalize_scores: bool = option(False, "normalise scores with their running mean and std")
    score_clip: float | None = option(None, "clip (processed) scores to [-c, c] (None = off)")
    missing_eos_penalty: float | None = option(None, "subtract from the score of completions without EOS")


@dataclass
class _Speed:
    gradient_checkpointing: bool = option(False, "recompute layer activations (and the response logits) in the "
                                                 "backward pass: far less memory, about one more forward pass of "
                                                 "compute per micro-batch (with compile: the compiler's own, fused "
                                                 "recomputation)")
    compile: bool = option(False, "torch.compile the transformer layers for the training passes (sampling and "
                                  "rollout stay eager): LoRA bf16 passes a fifth faster on CPU after a one-off compile")
    static_cache: bool = option(False, "allocate the sampling KV cache once at its final length instead of "
                                       "growing it per token: about 0.06 GB less peak memory for SmolLM2 at batch 16 "
                                       "on CPU, sampling a few percent slower")
    attn_implementation: str | None = option(None, "attention kernel (None: eager on the CPU, the model's own on "
                                                   "GPUs; or sdpa, flash_attention_2, ...)")
    generation_batch_size: int = option(0, "sequences generated at once (0 = batch_size)")
    forward_batch_size: int = option(0, "sequences per reference forward (no grad); 0 = the whole batch in "
                                        "float32, the training micro-batches in bf16 (whose kernels round by shape)")


@dataclass
class OnlineConfig(_Speed, SamplingFields, _Method, OptimFields, _Run, LoraFields, _Task):
    """Settings of `rlhfkit.training.online.OnlineTrainer` (fields: `rlhfkit ppo --help`)."""

    def validate(self) -> None:
        from rlhfkit.objectives.advantages import ADVANTAGE_ESTIMATORS
        from rlhfkit.objectives.policy import POLICY_LOSSES

        for name in ("batch_size", "mini_batch_size", "gradient_accumulation_steps", "ppo_epochs", "max_new_tokens",
                     "steps", "kl_horizon", "max_bad_steps", "num_generations"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.mini_batch_size % self.gradient_accumulation_steps:
            raise UserError("mini_batch_size must be a multiple of gradient_accumulation_steps")
        if self.batch_size % self.num_generations:
            raise UserError(f"batch_size ({self.batch_size}) must be a multiple of num_generations "
                            f"({self.num_generations}): each prompt's completions stay in one batch")
        if self.temperature <= 0 or self.learning_rate <= 0:
            raise UserError("temperature and learning_rate must be positive")
        if self.entropy_coef < 0:
            raise UserError(f"entropy_coef must be >= 0 (got {self.entropy_coef}): it is a bonus for entropy")
        if self.kl_estimator not in ("k1", "k2", "k3"):
            raise UserError(f"kl_estimator {self.kl_estimator!r}: use k1, k2 or k3")
        for value, registry in ((self.advantage_estimator, ADVANTAGE_ESTIMATORS), (self.policy_loss, POLICY_LOSSES)):
            if value not in registry:
                raise UserError(f"unknown {registry.what} {value!r}; choose one of {sorted(registry)}")
        estimator = ADVANTAGE_ESTIMATORS[self.advantage_estimator]
        if getattr(estimator, "grouped", False) and self.num_generations < 2:
            raise UserError(f"the {self.advantage_estimator} estimator compares samples of one prompt: set "
                            "num_generations to 2 or more")

    def generation(self):
        """The sampling settings (`models.generation.GenerationSettings`)."""
        from rlhfkit.models.generation import GenerationSettings

        return GenerationSettings.of(self)

    @property
    def uses_critic(self) -> bool:
        from rlhfkit.objectives.advantages import ADVANTAGE_ESTIMATORS

        return bool(getattr(ADVANTAGE_ESTIMATORS.lookup(self.advantage_estimator), "critic", False))
