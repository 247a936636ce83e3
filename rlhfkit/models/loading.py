"""Loading models: policies (causal or seq2seq, detected from the config), tokenizers, LoRA adapters.

Any name goes through `registry.resolve`: embedded names work offline, anything
else goes to `from_pretrained` (a hub id or a local folder).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from rlhfkit.errors import UserError
from rlhfkit.models.registry import _BUILD_VERSION, EMBEDDED, resolve



def load_config(name: str):
    from transformers import AutoConfig

    path = resolve(name)
    try:
        return AutoConfig.from_pretrained(path)
    except OSError as e:
        raise UserError(
            f"cannot load model '{name}': {str(e).splitlines()[0]}; use an embedded name ({', '.join(EMBEDDED)}), "
            "a local folder, or a hub id with network access"
        ) from None


def is_seq2seq(name_or_config) -> bool:
    config = load_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    return bool(getattr(config, "is_encoder_decoder", False))


def load_tokenizer(name: str):
    """The tokenizer of a model, with a pad token (EOS when the model has none)."""
    from transformers import AutoTokenizer

    path = resolve(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the tokenizer of '{name}': {str(e).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@dataclass
class LoraOptions:
    """LoRA adapter settings (peft)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0  # PPO wants dropout off so log-probs match between rollout and update
    target_modules: str | list[str] = "all-linear"
    modules_to_save: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, config) -> "LoraOptions | None":
        """The options a config's LoRA fields (`config.LoraFields`) ask for; None without LoRA."""
        if not config.lora:
            return None
        targets = config.lora_target_modules
        targets = "all-linear" if targets in (["all-linear"], "all-linear") else list(targets)
        return cls(r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout, target_modules=targets)


@dataclass
class Policy:
    """A loaded policy: the model, its tokenizer, and facts the trainers need."""

    model: object
    tokenizer: object
    seq2seq: bool
    trainable_params: int
    total_params: int

    @property
    def trainable_fraction(self) -> float:
        return self.trainable_params / max(self.total_params, 1)

    def describe(self) -> str:
        return (
            f"trainable params: {self.trainable_params:,} of {self.total_params:,} "
            f"({100 * self.trainable_fraction:.2f}%)"
        )


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def _parse_dtype(dtype):
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype or torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise UserError(f"unknown dtype '{dtype}'; use one of {sorted(table)}")
    return table[dtype]


def load_policy(name: str, lora: LoraOptions | bool | dict | None = None, dtype=None, verbose: bool = True) -> Policy:
    """A causal or seq2seq LM (detected from its config), with a LoRA adapter when asked.

    `name` may also be a folder holding a peft adapter (adapter_config.json):
    its base model is loaded and the adapter attached, trainable.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    torch_dtype = _parse_dtype(dtype)
    adapter = Path(name) / "adapter_config.json" if name not in EMBEDDED else None
    if adapter is not None and adapter.exists():
        return _load_adapter_folder(name, torch_dtype, verbose)
    config = load_config(name)
    seq2seq = is_seq2seq(config)
    cls = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    try:
        model = cls.from_pretrained(resolve(name), dtype=torch_dtype)
    except ValueError as e:
        raise UserError(f"model '{name}' is neither a causal nor a seq2seq language model: {str(e).splitlines()[0]}") from None
    tokenizer = load_tokenizer(name)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if lora:
        model = add_lora(model, lora, seq2seq)
    trainable, total = count_parameters(model)
    policy = Policy(model, tokenizer, seq2seq, trainable, total)
    if verbose:
        print(f"rlhfkit: loaded {name} ({'seq2seq' if seq2seq else 'causal'}), {policy.describe()}")
    return policy


def unwrap_peft(model):
    """The transformers model under any peft wrapper, and under DDP's (the model itself when there is none)."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model



def add_lora(model, lora: LoraOptions | bool | dict, seq2seq: bool):
    from peft import LoraConfig, TaskType, get_peft_model

    options = lora if isinstance(lora, LoraOptions) else LoraOptions(**(lora if isinstance(lora, dict) else {}))
    config = LoraConfig(
        r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout, target_modules=options.target_modules,
        modules_to_save=options.modules_to_save or None,
        task_type=TaskType.SEQ_2_SEQ_LM if seq2seq else TaskType.CAUSAL_LM,
    )
    return get_peft_model(model, config)


def _portable_base(base: str) -> str:
    """An adapter saved on another machine may name this library's cache folder of an
    embedded model (`.../smollm2-135m-v1`); map it back to the embedded name so it rebuilds here."""
    if base in EMBEDDED or os.path.exists(base):
        return base
    name, _, version = Path(base).name.rpartition("-v")
    return name if name in _BUILD_VERSION and version.isdigit() else base


def _load_adapter_folder(path: str, dtype, verbose: bool) -> Policy:
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    base_name = _portable_base(json.loads((Path(path) / "adapter_config.json").read_text())["base_model_name_or_path"])
    base_config = load_config(base_name)
    seq2seq = is_seq2seq(base_config)
    cls = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    base = cls.from_pretrained(resolve(base_name), dtype=dtype)
    model = PeftModel.from_pretrained(base, path, is_trainable=True)
    tok_src = path if (Path(path) / "tokenizer_config.json").exists() else base_name
    tokenizer = load_tokenizer(tok_src)
    trainable, total = count_parameters(model)
    policy = Policy(model, tokenizer, seq2seq, trainable, total)
    if verbose:
        print(f"rlhfkit: loaded adapter {path} on {base_name}, {policy.describe()}")
    return policy
