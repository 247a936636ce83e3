"""`rlhfkit dpo`'s settings (`DPOConfig`): data, the loss combination and its knobs, the reference, lengths."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhfkit.config import LoraFields, OptimFields, option
from rlhfkit.errors import UserError

LOSS_TYPES = ("sigmoid", "robust", "hinge", "ipo", "sft", "simpo", "orpo", "kto")


@dataclass
class DPOConfig(OptimFields, LoraFields):
    model: str = option("smollm2-135m", "embedded name, hub id or folder of the causal or seq2seq policy")
    data: str = option(None, "pairs {prompt, chosen, rejected}, rankings {prompt, completions, ranks}, or for kto "
                             "{prompt, completion, label}")
    eval_data: str | None = option(None, "held-out file of the same kind (default: split --eval-fraction off --data)")
    eval_fraction: float = option(0.0, "fraction of prompts held out; their loss and reward accuracy after each epoch")
    output_dir: str = option("runs/dpo", "output folder: model (or adapter), tokenizer, config.yaml, metrics.jsonl")
    learning_rate: float = option(1e-6, "peak learning rate (AdamW; TRL's DPO default; LoRA wants ~1e-5 to 1e-4)")
    epochs: int = option(1, "passes over the data")
    batch_size: int = option(8, "pairs (kto: examples) per optimisation step")
    warmup_ratio: float = option(0.1, "fraction of steps for linear warm-up, then linear decay to 0")
    loss_type: list[str] = option(["sigmoid"], "losses, summed with --loss-weights: " + ", ".join(LOSS_TYPES))
    loss_weights: list[float] | None = option(None, "one weight per --loss-type (default: 1 each)")
    beta: float = option(0.1, "DPO's beta (KL strength); simpo's reward scale; orpo's lambda; kto's beta")
    label_smoothing: float = option(0.0, "label-noise rate eps: sigmoid -> conservative DPO; robust's eps; simpo")
    simpo_gamma: float = option(0.5, "simpo's target margin gamma")
    desirable_weight: float = option(1.0, "kto: weight of desirable examples")
    undesirable_weight: float = option(1.0, "kto: weight of undesirable examples")
    ref_model: str | None = option(None, "reference model (default: adapters off with --lora, else a frozen copy)")
    precompute_ref: bool = option(False, "compute the reference's log-probs once, then train without it in memory")
    max_length: int = option(512, "tokens per sequence (prompt + the longer completion; seq2seq: each side)")
    long_pairs: Literal["truncate", "skip", "error"] = option(
        "truncate", "pairs longer than --max-length (always counted and reported with their rows): truncate, skip "
                    "(leave out) or error")
    disable_dropout: bool = option(True, "dropout off in policy and reference (TRL's default): the log-ratios "
                                         "compare the same function, not two noisy draws")
    gradient_checkpointing: bool = option(False, "recompute layer activations in the backward pass: less memory, "
                                                 "about a third more compute")
    share_prompt: bool = option(True, "read each prompt once for all its completions (chosen and rejected on copies "
                                      "of one KV cache or encoder output): the same numbers, fewer tokens; not "
                                      "with --gradient-checkpointing, which drops the cache")
    merge: bool = option(False, "with --lora: save the merged model instead of the adapter")
    limit: int | None = option(None, "use only the first N pairs (kto: examples)")
    log_every: int = option(10, "write a metrics line every N steps")
    save_every: int = option(0, "checkpoint every N steps into output_dir/checkpoints (0 = only at the end)")
    resume: bool = option(False, "continue from the latest checkpoint in output_dir (same data and settings)")

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.loss_type, str):  # `loss_type: sigmoid` in YAML, or "sigmoid,sft"
            self.loss_type = [t.strip() for t in self.loss_type.split(",") if t.strip()]
        if isinstance(self.loss_weights, (int, float)):
            self.loss_weights = [float(self.loss_weights)]

    # ---------------------------------------------------------------- derived

    @property
    def unpaired(self) -> bool:
        return self.loss_type == ["kto"]

    @property
    def shares_prompt(self) -> bool:
        return self.share_prompt and not self.gradient_checkpointing

    @property
    def needs_reference(self) -> bool:
        from rlhfkit.objectives.dpo import REFERENCE_FREE

        return any(t not in REFERENCE_FREE for t in self.loss_type)

    def check(self) -> None:
        if not self.data:
            raise UserError("no training data; pass --data FILE (pairs, rankings, or kto rows)")
        for name in ("epochs", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        unknown = [t for t in self.loss_type if t not in LOSS_TYPES]
        if unknown or not self.loss_type:
            raise UserError(f"--loss-type {' '.join(unknown) or '(none)'}: choose from {', '.join(LOSS_TYPES)}")
        if "kto" in self.loss_type and len(self.loss_type) > 1:
            raise UserError("--loss-type kto trains on unpaired examples and does not combine with the pair losses")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise UserError(f"{len(self.loss_weights)} --loss-weights for {len(self.loss_type)} --loss-type; "
                            "give one weight per loss")
        if "robust" in self.loss_type and not 0 <= self.label_smoothing < 0.5:
            raise UserError(f"--label-smoothing {self.label_smoothing}: the robust loss needs it in [0, 0.5)")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"--label-smoothing {self.label_smoothing}: use a label-noise rate in [0, 1)")
        if self.beta <= 0:
            raise UserError("--beta must be positive")
        if self.merge and not self.lora:
            raise UserError("--merge only applies with --lora (full fine-tuning already saves the whole model)")
        if self.ref_model and not self.needs_reference:
            raise UserError(f"--ref-model is unused: {', '.join(self.loss_type)} need no reference")
