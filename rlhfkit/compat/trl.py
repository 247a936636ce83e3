"""The old step-wise PPO API (trl <= 0.11) as thin adapters over `rlhfkit.ppo`.

A notebook written for it runs after changing only its imports:

    # before
    from trl import PPOTrainer, PPOConfig, AutoModelForSeq2SeqLMWithValueHead, create_reference_model
    from trl.core import LengthSampler
    # after
    from rlhfkit.compat.trl import PPOTrainer, PPOConfig, AutoModelForSeq2SeqLMWithValueHead, create_reference_model
    from rlhfkit.compat.trl import LengthSampler

The maths is rlhfkit's (one forward for log-probs and values, batch-level
whitening, k1 KL); names, defaults and input/output shapes are the old ones:
`generate` returns the decoder ids including the start token for seq2seq models
and prompt + response for causal ones (unless `return_prompt=False`); `step`
takes lists of 1-D query/response tensors and scalar reward tensors and strips
a leading decoder start token and trailing padding from seq2seq responses.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from rlhfkit.methods import ppo as _ppo
from rlhfkit.models.generation import pad, strip_response
from rlhfkit.models.reference import frozen_copy as _copy_frozen
from rlhfkit.models.value_head import ModelWithValueHead

__all__ = [
    "PPOConfig", "PPOTrainer", "AutoModelForCausalLMWithValueHead", "AutoModelForSeq2SeqLMWithValueHead",
    "create_reference_model", "LengthSampler", "set_seed",
]


@dataclass
class PPOConfig:
    """The old PPOConfig's fields and defaults; logging/hub fields are accepted and ignored."""

    model_name: str | None = None
    learning_rate: float = 1.41e-5
    batch_size: int = 128
    mini_batch_size: int = 128
    gradient_accumulation_steps: int = 1
    ppo_epochs: int = 4
    init_kl_coef: float = 0.2
    adap_kl_ctrl: bool = True
    target: float = 6.0
    horizon: float = 10000
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    kl_penalty: str = "kl"
    max_grad_norm: float | None = None
    seed: int = 0
    use_score_scaling: bool = False
    use_score_norm: bool = False
    score_clip: float | None = None
    whiten_rewards: bool = False
    early_stopping: bool = False
    target_kl: float = 1.0
    steps: int = 20000
    # accepted for compatibility, no effect here
    query_dataset: str | None = None
    reward_model: str | None = None
    exp_name: str | None = None
    log_with: str | None = None
    tracker_project_name: str = "trl"
    tracker_kwargs: dict = field(default_factory=dict)
    accelerator_kwargs: dict = field(default_factory=dict)
    project_kwargs: dict = field(default_factory=dict)
    push_to_hub_if_best_kwargs: dict = field(default_factory=dict)
    forward_batch_size: int | None = None
    remove_unused_columns: bool = True
    optimize_cuda_cache: bool | None = None
    optimize_device_cache: bool = False
    ratio_threshold: float = 10.0
    compare_steps: int = 1
    task_name: str | None = None

    def to_rlhfkit(self) -> _ppo.PPOConfig:
        if self.kl_penalty not in ("kl", "k3"):
            raise ValueError(f"kl_penalty={self.kl_penalty!r} is not supported; use 'kl' (k1) or 'k3'")
        for name in ("whiten_rewards", "early_stopping"):
            if getattr(self, name):
                warnings.warn(f"PPOConfig({name}=True) is not supported by rlhfkit and is ignored")
        return _ppo.PPOConfig(
            model=self.model_name or "", lora=False, output_dir=None, learning_rate=self.learning_rate,
            batch_size=self.batch_size, mini_batch_size=self.mini_batch_size * self.gradient_accumulation_steps,
            gradient_accumulation_steps=self.gradient_accumulation_steps, ppo_epochs=self.ppo_epochs,
            max_grad_norm=self.max_grad_norm, gamma=self.gamma, lam=self.lam, cliprange=self.cliprange,
            cliprange_value=self.cliprange_value, vf_coef=self.vf_coef, init_kl_coef=self.init_kl_coef,
            adaptive_kl=self.adap_kl_ctrl, kl_target=self.target, kl_horizon=int(self.horizon),
            kl_estimator="k1" if self.kl_penalty == "kl" else "k3",
            normalize_scores=self.use_score_scaling or self.use_score_norm, score_clip=self.score_clip,
            seed=self.seed, steps=max(int(self.steps), 1),
        )


class _AutoModelWithValueHead:
    _seq2seq = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, torch_dtype=None, is_trainable: bool = True,
                        peft_config=None, **kwargs) -> ModelWithValueHead:
        """A `ModelWithValueHead` (zero-initialised head) over a name, folder, HF model or peft model."""
        model = pretrained_model_name_or_path
        if isinstance(model, str):
            from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

            from rlhfkit.models import resolve

            auto = AutoModelForSeq2SeqLM if cls._seq2seq else AutoModelForCausalLM
            model = auto.from_pretrained(resolve(model), *model_args, dtype=torch_dtype, **kwargs)
        elif torch_dtype is not None:
            model = model.to(torch_dtype)
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        if bool(getattr(model.config, "is_encoder_decoder", False)) != cls._seq2seq:
            kind = "a seq2seq" if cls._seq2seq else "a causal"
            raise ValueError(f"{cls.__name__} needs {kind} language model, got {type(model).__name__}")
        if not is_trainable:
            for p in model.parameters():
                p.requires_grad_(False)
        return ModelWithValueHead(model)


class AutoModelForCausalLMWithValueHead(_AutoModelWithValueHead):
    _seq2seq = False


class AutoModelForSeq2SeqLMWithValueHead(_AutoModelWithValueHead):
    _seq2seq = True


def create_reference_model(model, num_shared_layers: int | None = None, pattern: str | None = None):
    """A frozen copy of the model (as the old API; with LoRA, passing ref_model=None shares the weights instead)."""
    return _copy_frozen(model)


class LengthSampler:
    """Samples an integer in [min_value, max_value)."""

    def __init__(self, min_value: int, max_value: int):
        self.values = list(range(min_value, max_value))

    def __call__(self) -> int:
        return int(np.random.choice(self.values))


def set_seed(seed: int) -> None:
    from accelerate.utils import set_seed as _set_seed

    _set_seed(seed)


class PPOTrainer:
    """The old trainer's surface: `dataloader`, `generate`, `step`, `log_stats`, over `rlhfkit.ppo.PPOTrainer`."""

    def __init__(self, config: PPOConfig = None, model=None, ref_model=None, tokenizer=None, dataset=None,
                 optimizer=None, data_collator: Callable | None = None, num_shared_layers: int | None = None,
                 lr_scheduler=None):
        if not isinstance(config, PPOConfig):
            raise ValueError(f"config must be a rlhfkit.compat.trl.PPOConfig, got {type(config)}")
        if tokenizer is None or model is None:
            raise ValueError("PPOTrainer needs model= and tokenizer=")
        self.config = config
        self.trainer = _ppo.PPOTrainer(config.to_rlhfkit(), model, ref_model=ref_model, tokenizer=tokenizer,
                                       optimizer=optimizer)
        self.lr_scheduler = lr_scheduler
        self.dataset = dataset
        self.dataloader = self.prepare_dataloader(dataset, data_collator) if dataset is not None else None

    # the core trainer's parts under their old names
    accelerator = property(lambda self: self.trainer.accelerator)
    model = property(lambda self: self.trainer.model)
    ref_model = property(lambda self: self.trainer.ref_model)
    tokenizer = property(lambda self: self.trainer.tokenizer)
    optimizer = property(lambda self: self.trainer.optimizer)
    kl_ctl = property(lambda self: self.trainer.kl_ctl)
    current_step = property(lambda self: self.trainer.step_count)
    is_encoder_decoder = property(lambda self: self.trainer.seq2seq)
    current_device = property(lambda self: self.trainer.accelerator.device)

    def prepare_dataloader(self, dataset, data_collator=None):
        loader = torch.utils.data.DataLoader(dataset, batch_size=self.config.batch_size, collate_fn=data_collator,
                                             shuffle=True, drop_last=True)
        return self.accelerator.prepare(loader)

    def _generation_kwargs(self, kwargs: dict) -> dict:
        kwargs = dict(kwargs)
        if isinstance(kwargs.get("top_k"), float):
            kwargs["top_k"] = int(kwargs["top_k"])
        if "max_new_tokens" in kwargs:
            kwargs["max_new_tokens"] = int(kwargs["max_new_tokens"])
        kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        return kwargs

    def generate(self, query_tensor, length_sampler: Callable | None = None, batch_size: int = 4,
                 return_prompt: bool = True, generate_ref_response: bool = False, remove_padding: bool = True,
                 **generation_kwargs):
        """One query tensor -> [1, T] ids; a list of them -> a list of 1-D tensors, generated in batches."""
        if generate_ref_response:
            raise ValueError("generate_ref_response=True is not supported")
        kwargs = self._generation_kwargs(generation_kwargs)
        model = self.trainer.unwrapped.pretrained_model
        if isinstance(query_tensor, list):
            return self._generate_batched(model, query_tensor, length_sampler, batch_size, return_prompt,
                                          remove_padding, kwargs)
        if length_sampler is not None:
            kwargs["max_new_tokens"] = int(length_sampler())
        ids = query_tensor.reshape(1, -1).to(self.current_device)
        with torch.inference_mode(), self.accelerator.autocast():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
        if not return_prompt and not self.is_encoder_decoder:
            return out[:, ids.shape[1]:]
        return out

    def _generate_batched(self, model, queries, length_sampler, batch_size, return_prompt, remove_padding, kwargs):
        outputs = []
        pad_id, eos_id = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        side = "right" if self.is_encoder_decoder else "left"
        for i in range(0, len(queries), max(1, min(batch_size, len(queries)))):
            if length_sampler is not None:
                kwargs["max_new_tokens"] = int(length_sampler())
            chunk = queries[i:i + batch_size]
            ids, mask = pad(chunk, pad_id, side=side, device=self.current_device)
            with torch.inference_mode(), self.accelerator.autocast():
                generations = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            for row, m in zip(generations, mask):
                out = row if self.is_encoder_decoder else row[int((1 - m).sum()):]
                if not return_prompt and not self.is_encoder_decoder:
                    out = out[int(m.sum()):]
                if remove_padding and eos_id is not None:
                    start = 1 if self.is_encoder_decoder else 0  # the decoder start may equal EOS/pad
                    hits = (out[start:] == eos_id).nonzero()
                    if len(hits):
                        out = out[: start + int(hits[0, 0]) + 1]
                outputs.append(out)
        return outputs

    def _response_ids(self, response: torch.Tensor) -> list[int]:
        ids = response.reshape(-1).tolist()
        if self.is_encoder_decoder:
            from rlhfkit.models.forward import decoder_start_id

            if ids and ids[0] == decoder_start_id(self.trainer.unwrapped.pretrained_model):
                ids = ids[1:]  # generate() output starts with the decoder start token
        ids = strip_response(ids, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)
        return ids or [self.tokenizer.eos_token_id]

    def step(self, queries: list, responses: list, scores: list, response_masks=None) -> dict:
        """One PPO step from lists of 1-D query/response tensors and scalar score tensors."""
        if response_masks is not None:
            raise ValueError("response_masks are not supported")
        for name, values in (("queries", queries), ("responses", responses), ("scores", scores)):
            if not isinstance(values, list):
                raise ValueError(f"{name} must be a list of tensors - got {type(values)}")
        query_ids = [q.reshape(-1).tolist() for q in queries]
        response_ids = [self._response_ids(r) for r in responses]
        score_values = [float(torch.as_tensor(s).reshape(-1)[0]) for s in scores]
        stats = self.trainer.step(query_ids, response_ids, score_values)
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        return stats

    def log_stats(self, stats: dict, batch: dict, rewards, columns_to_log=("query", "response")) -> None:
        rewards = [float(torch.as_tensor(r).reshape(-1)[0]) for r in rewards]
        rows = {k: batch[k] for k in columns_to_log if k in batch}
        self.trainer.log_stats(stats, rows if len(rows) == 2 else None, rewards)

    def save_pretrained(self, folder: str) -> None:
        self.trainer.save_pretrained(folder)
