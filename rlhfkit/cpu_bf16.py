"""bf16 mixed precision on CPU: what autocast alone leaves slow.

- `store_frozen_in_bf16`: frozen matmul weights stored in bf16 (autocast re-casts
  only trainable ones from its cache, and would cast frozen float32 weights on
  every call).
- `float32_attention`: scaled-dot-product attention run in float32. On CPU the
  bf16 flash-attention backward is about 4x slower than the float32 one at PPO
  sizes (7.6 ms against 1.8 ms per SmolLM2 layer, mini-batch 4 x 97 tokens), while
  attention is a few percent of the FLOPs; the q/k/v casts cost far less.
"""

from __future__ import annotations

import torch
from torch import nn

FLOAT32_SDPA = "rlhfkit_sdpa_float32"


def _cast_input(module, args):
    x = args[0] if args else None
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != module.weight.dtype \
            and not torch.is_autocast_enabled(x.device.type):
        return (x.to(module.weight.dtype),) + tuple(args[1:])
    return None


def _output_to_float32(module, args, out):
    if isinstance(out, torch.Tensor) and out.dtype == torch.bfloat16 and (
            isinstance(module, nn.Embedding) or not torch.is_autocast_enabled(out.device.type)):
        return out.float()
    return None


def store_frozen_in_bf16(model: nn.Module, keep_embeddings: bool = False) -> int:
    """Keep the frozen matmul weights of `model` in bfloat16, for bf16 mixed precision; returns bytes saved.

    Under bf16 autocast every matmul reads its weights rounded to bf16 anyway; stored
    that way they are not re-cast on every forward (autocast caches only trainable
    weights) and take half the memory. Only modules whose parameters are all frozen
    change: `nn.Linear`, GPT-2's `Conv1D` (weight and bias, as autocast would use
    them) and `nn.Embedding` (its lookups are returned in float32, so the residual
    stream stays float32 as under autocast). Norms, trainable weights (LoRA adapters,
    the value head, a fully trained policy) and buffers stay float32. Outside
    autocast these modules cast their input to bf16 and their output back to float32,
    so the model still runs anywhere.

    `keep_embeddings=True` leaves embedding tables (and an LM head tied to one) in
    float32: for a frozen reference copy of a fully trained policy, whose lookups
    autocast reads in float32, so that policy and reference agree before the first
    update (bf16-rounded lookups alone give a KL of ~0.1 nats per SmolLM2 response).
    """
    saved = 0
    kept = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)} if keep_embeddings else set()
    for module in model.modules():
        is_matmul = isinstance(module, (nn.Linear, nn.Embedding)) or type(module).__name__ == "Conv1D"
        params = list(module.parameters(recurse=False))
        if not params or any(p.requires_grad or p.dtype not in (torch.float32, torch.bfloat16) or id(p) in kept
                             for p in params):
            continue
        if not is_matmul:  # a frozen norm (or similar) loaded in bf16: master copy in float32, as autocast expects
            for p in params:
                p.data = p.data.float()
            continue
        for p in params:
            if p.dtype == torch.float32:
                saved += p.numel() * 2
                p.data = p.data.to(torch.bfloat16)
        if getattr(module, "_rlhfkit_bf16", False):
            continue
        module._rlhfkit_bf16 = True
        if not isinstance(module, nn.Embedding):
            module.register_forward_pre_hook(_cast_input)
        module.register_forward_hook(_output_to_float32)
    return saved


def _sdpa_float32(module, query, key, value, attention_mask, *args, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.dtype != torch.bfloat16:
        return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast(query.device.type, enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                              *args, **kwargs)
    return out.to(torch.bfloat16), weights


def float32_attention(model: nn.Module) -> bool:
    """Switch a transformers model that uses "sdpa" attention to float32 SDPA; returns whether it applied.

    Only for CPU models (on GPU bf16 flash attention is the fast path). The outputs are
    cast back to bf16, so the rest of the autocast graph is unchanged.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    device = next(base.parameters()).device
    if config is None or device.type != "cpu" or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(FLOAT32_SDPA, _sdpa_float32)
    ALL_MASK_ATTENTION_FUNCTIONS.register(FLOAT32_SDPA, sdpa_mask)  # the same masks as "sdpa"
    for module in base.modules():  # the model and its sub-configs (e.g. an encoder-decoder's decoder)
        sub = getattr(module, "config", None)
        if sub is not None and getattr(sub, "_attn_implementation", None) == "sdpa":
            sub._attn_implementation = FLOAT32_SDPA
    return True
