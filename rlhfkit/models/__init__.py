"""Models. Loading, the value head, the reference, forward passes, sampling, speed settings.

- `registry`: embedded offline models (`smollm2-135m`, `minilm-l6`, tiny test models), `resolve`;
- `loading`: `load_policy` (causal or seq2seq, LoRA, adapter folders), tokenizers, configs;
- `value_head`: `ModelWithValueHead`, a language model with a scalar head (PPO's critic);
- `reference`: `Reference`, the model a policy is held to (given, frozen copy, adapters off);
- `forward`: padded (query, response) batches and their per-token log-probs (and values);
- `generation`: chat-template prompts and batched sampling;
- `speed`: speed settings per role, applied after device placement.

The names of `loading` and `registry` import here without torch; the rest load on first use.
"""

from rlhfkit.models.loading import (
    LoraOptions, Policy, _parse_dtype, add_lora, count_parameters, is_seq2seq, load_config, load_policy,
    load_tokenizer, unwrap_peft,
)
from rlhfkit.models.registry import EMBEDDED, cache_dir, resolve

_LAZY = {
    "checkpoint_activations": "rlhfkit.models.speed", "compile_layers": "rlhfkit.models.speed",
    "ModelWithValueHead": "rlhfkit.models.value_head", "Reference": "rlhfkit.models.reference",
}


def __getattr__(name):  # PEP 562: torch-heavy names load when first used
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rlhfkit.models' has no attribute {name!r}")


__all__ = [
    "EMBEDDED", "LoraOptions", "Policy", "add_lora", "cache_dir", "count_parameters", "is_seq2seq", "load_config",
    "load_policy", "load_tokenizer", "resolve", "unwrap_peft", *_LAZY,
]
