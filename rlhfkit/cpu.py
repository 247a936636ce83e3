"""What makes training fast on the CPU, where the defaults are tuned for GPUs.

- `store_frozen_in_bf16`: for bf16 mixed precision, frozen matmul weights stored in
  bf16 (autocast re-casts only trainable ones from its cache, and would cast frozen
  float32 weights on every call).
- `eager_attention`: plain matmul + softmax attention instead of SDPA's flash kernel,
  which is several times slower at PPO's sequence lengths; for grouped-query models,
  `grouped_attention`, the same maths without copying each key/value head per group.
"""

from __future__ import annotations

import inspect
import sys

import torch
from torch import nn

from rlhfkit.models import unwrap_peft


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


GROUPED = "rlhfkit_grouped"


def grouped_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """transformers' eager attention (Llama's `eager_attention_forward`) without `repeat_kv`.

    query [B, H, q, D], key/value [B, K, L, D] with H = K x G. Eager attention first
    copies every key and value head G times; with a KV cache that is the whole cache at
    every generated token (41% of SmolLM2's sampling time under a static cache). Here
    each key/value head meets its G query heads in one matmul over [B, K, G x q, D]:
    the same products, summed in the same order (bit-identical outputs, tested).
    """
    b, h, q, d = query.shape
    k = key.shape[1]
    scores = torch.matmul(query.reshape(b, k, h // k * q, d), key.transpose(2, 3)) * scaling
    scores = scores.view(b, h, q, -1)
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs.view(b, k, h // k * q, -1), value).view(b, h, q, d)
    return out.transpose(1, 2).contiguous(), probs


def _register_grouped() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(GROUPED, grouped_attention)  # a dict update: registering again is a no-op
    AttentionMaskInterface.register(GROUPED, eager_mask)  # the additive float mask eager attention reads


def _groups_like_llama(base: nn.Module) -> bool:
    """Grouped-query attention whose eager function is, line for line, Llama's (which `grouped_attention` is)."""
    config = base.config
    heads, kv_heads = getattr(config, "num_attention_heads", None), getattr(config, "num_key_value_heads", None)
    if not heads or not kv_heads or kv_heads == heads:
        return False
    from transformers.models.llama import modeling_llama

    own = getattr(sys.modules.get(type(base).__module__), "eager_attention_forward", None)
    try:
        return own is not None and inspect.getsource(own) == inspect.getsource(modeling_llama.eager_attention_forward)
    except (OSError, TypeError):
        return False


def eager_attention(model: nn.Module) -> bool:
    """Switch a transformers model on the CPU from "sdpa" to eager attention; returns whether it applied.

    At PPO's lengths (about a hundred tokens) SDPA's CPU flash kernel is the slow path
    in bf16: forward+backward of one SmolLM2-sized attention (4 x 98 tokens) took 7.6 ms
    against 1.8 ms for eager attention (two batched matmuls and a float32 softmax). A
    whole SmolLM2 training pass (forward+backward, 4 x 97 tokens) took 1.05 s -> 0.70 s
    with LoRA in bf16, 1.17 s -> 0.89 s fully trained in bf16 and 2.25 s -> 2.10 s in
    float32. On GPU the flash kernels are the fast path, so only CPU models change.
    Grouped-query models with Llama's eager attention (SmolLM2, Llama, Mistral, Qwen)
    get `grouped_attention`, the others transformers' "eager".
    """
    base = unwrap_peft(model)
    config = getattr(base, "config", None)
    if config is None or next(base.parameters()).device.type != "cpu" \
            or getattr(config, "_attn_implementation", None) != "sdpa" or not hasattr(base, "set_attn_implementation"):
        return False
    if _groups_like_llama(base):
        _register_grouped()
        try:
            base.set_attn_implementation(GROUPED)
            return config._attn_implementation == GROUPED
        except (ValueError, NotImplementedError):  # a model class that does not dispatch through AttentionInterface
            pass
    base.set_attn_implementation("eager")
    return config._attn_implementation == "eager"
