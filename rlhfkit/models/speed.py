"""Speed settings, applied per role (policy, reference) after the model is on its device.

What is fast on a GPU is not what is fast on a CPU, so the settings read the device the
model already sits on; `apply_speed_settings` is called after `accelerator.prepare` (or
`.to(device)`) has placed it, never before:

- attention: on the CPU, plain matmul + softmax attention instead of SDPA's flash kernel
  (several times slower at PPO's lengths), and for grouped-query Llama-family models
  `grouped_attention`, the same maths without copying each key/value head per group. On
  a GPU the model keeps what it was loaded with (SDPA / flash).
- `store_frozen_in_bf16`: for bf16 mixed precision, frozen matmul weights stored in bf16
  (autocast re-casts only trainable ones from its cache, and would cast frozen float32
  weights on every call).
- `sparse_tied_embedding_grad`, `checkpoint_activations`, `compile_layers`: training-pass
  settings of the policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rlhfkit.errors import UserError
from rlhfkit.models.loading import unwrap_peft



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
    # transformers' documented way to add an attention kernel: register it with AttentionInterface,
    # and its mask (here the additive float mask eager attention reads) with AttentionMaskInterface
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(GROUPED, grouped_attention)  # a dict update: registering again is a no-op
    AttentionMaskInterface.register(GROUPED, eager_mask)


# Model types whose eager attention is Llama's `eager_attention_forward` (transformers copies it into each),
# which `grouped_attention` reproduces bit for bit (tests/test_models_speed.py checks every one of them).
GROUPED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def _groups_like_llama(base: nn.Module) -> bool:
    """Grouped-query attention (fewer key/value heads than query heads) of a Llama-family model."""
    config = base.config
    heads, kv_heads = getattr(config, "num_attention_heads", None), getattr(config, "num_key_value_heads", None)
    return bool(heads and kv_heads and kv_heads != heads and getattr(config, "model_type", None) in GROUPED_MODEL_TYPES)


def device_type(model: nn.Module) -> str:
    """Where the model's weights are now ("cpu", "cuda", ...)."""
    return next(unwrap_peft(model).parameters()).device.type


def cpu_attention(model: nn.Module) -> str | None:
    """The attention implementation that is fastest on the CPU for this model: `grouped_attention`
    for grouped-query Llama-family models, else transformers' "eager"; None for a model that cannot
    switch (no `set_attn_implementation`)."""
    base = unwrap_peft(model)
    if getattr(base, "config", None) is None or not hasattr(base, "set_attn_implementation"):
        return None
    return GROUPED if _groups_like_llama(base) else "eager"


def eager_attention(model: nn.Module) -> bool:
    """On the CPU, switch a transformers model to the attention `cpu_attention` picks; returns whether it changed.

    At PPO's lengths (about a hundred tokens) SDPA's CPU flash kernel is the slow path
    in bf16: forward+backward of one SmolLM2-sized attention (4 x 98 tokens) took 7.6 ms
    against 1.8 ms for eager attention (two batched matmuls and a float32 softmax). A
    whole SmolLM2 training pass (forward+backward, 4 x 97 tokens) took 1.05 s -> 0.70 s
    with LoRA in bf16, 1.17 s -> 0.89 s fully trained in bf16 and 2.25 s -> 2.10 s in
    float32. On a GPU the flash kernels are the fast path, so models off the CPU never change.
    """
    base = unwrap_peft(model)
    target = cpu_attention(base)
    if target is None or device_type(base) != "cpu" or getattr(base, "_rlhfkit_attention", None) == target:
        return False
    if target == GROUPED:
        _register_grouped()
        try:
            base.set_attn_implementation(GROUPED)
            base._rlhfkit_attention = GROUPED
            return True
        except (ValueError, NotImplementedError):  # a model class that does not dispatch through AttentionInterface
            target = "eager"
    base.set_attn_implementation(target)
    base._rlhfkit_attention = target
    return True


def set_attention(model: nn.Module, implementation: str) -> None:
    """An explicit attention implementation ("sdpa", "eager", "flash_attention_2", ...), on any device."""
    base = unwrap_peft(model)
    if implementation == GROUPED:
        _register_grouped()
    try:
        base.set_attn_implementation(implementation)
    except (ValueError, ImportError) as e:
        raise UserError(f"attn_implementation {implementation!r}: {str(e).splitlines()[0]}") from None
    base._rlhfkit_attention = implementation


def sparse_tied_embedding_grad(model: nn.Module) -> bool:
    """With input and output embeddings tied and trained, let the lookup's gradient be sparse.

    The LM head already gives the shared weight a dense gradient; the lookup adds only
    the rows of the tokens it read, instead of filling and adding a dense vocab x hidden
    matrix in every backward (a large share of a small model's backward on CPU). The
    summed gradient stays dense, so any optimizer takes it. Returns whether it applied.
    """
    base = unwrap_peft(model)
    inp, out = base.get_input_embeddings(), base.get_output_embeddings()
    if isinstance(inp, nn.Embedding) and out is not None and inp.weight is getattr(out, "weight", None) \
            and inp.weight.requires_grad:
        inp.sparse = True
        return True
    return False


# ---------------------------------------------------------------- training passes


def _base_and_layers(model) -> tuple:
    """The transformers model under any peft wrapper, and its transformer layers: the blocks
    transformers can checkpoint (`GradientCheckpointingLayer`)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    base = unwrap_peft(model)
    return base, [m for m in base.modules() if isinstance(m, GradientCheckpointingLayer)]


def checkpoint_activations(model) -> list:
    """Recompute each transformer layer's activations in the backward pass instead of keeping
    them (transformers' activation checkpointing, non-reentrant), while the model stays in
    eval mode: dropout off, as PPO needs.

    transformers only checkpoints a layer whose own `training` flag is set, so the layers
    get that flag and nothing below them does. Returns the layers: set the flag again after
    anything calls `model.eval()`.
    """
    base, layers = _base_and_layers(model)
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise UserError(f"{type(base).__name__} does not support activation checkpointing; "
                        "turn gradient_checkpointing off")
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    layers = [m for m in layers if m.gradient_checkpointing]
    for layer in layers:
        layer.training = True
    return layers


def _layer_forward(layer, compiled, *args, **kwargs):
    if torch.is_grad_enabled():
        return compiled(layer, *args, **kwargs)
    return type(layer).forward(layer, *args, **kwargs)


def _inductor_with_memory_budget(budget: float):
    """Inductor, splitting each graph into forward and backward under `activation_memory_budget`
    (what to keep for the backward pass, what to recompute there). Its own backend object, so
    torch.compile never reuses a graph compiled under another budget in the same process."""
    def backend(graph, example_inputs):
        # torch 2.13 has no public knob for this: `activation_memory_budget` is the one PyTorch's own
        # guide to activation checkpointing under torch.compile names (docs/architecture.md lists it)
        import torch._functorch.config as functorch_config
        from torch._inductor.compile_fx import compile_fx

        with functorch_config.patch(activation_memory_budget=budget):
            return compile_fx(graph, example_inputs)
    return backend


def compile_layers(model, memory_budget: float | None = None) -> list:
    """`torch.compile` each transformer layer for the passes that build a graph (training
    forward and backward); passes without grad (sampling, rollout and reference forwards)
    keep the eager code, so generation never recompiles for its growing lengths.

    The layers are those transformers can checkpoint (its decoder/encoder blocks). All
    layers of a class share one compiled graph: the first training pass compiles it
    (about 15-30 s for SmolLM2 on 2 CPU cores), the first pass of another shape compiles
    a dynamic-shape version once more, and later passes reuse them. The LM head, the
    log-prob kernel and the value head stay eager.

    `memory_budget` (0-1, torch's `activation_memory_budget`) lets the compiler recompute
    activations in the backward pass instead of keeping them: 0 keeps about what
    activation checkpointing keeps (each layer's inputs), with the recomputation fused.
    Returns the layers.
    """
    import functools

    base, layers = _base_and_layers(model)
    if getattr(base.config, "is_encoder_decoder", False):
        # measured with torch 2.13: T5's relative position bias, made in the first block and read by
        # the others, gets a wrong gradient when each block is compiled
        raise UserError(f"compile supports causal models only, not {type(base).__name__}; turn compile off")
    if not layers:
        raise UserError(f"{type(base).__name__} has no transformer layers to compile; turn compile off")
    compiled: dict[type, object] = {}
    for layer in layers:
        cls = type(layer)
        if cls not in compiled:
            compiled[cls] = torch.compile(cls.forward) if memory_budget is None else \
                torch.compile(cls.forward, backend=_inductor_with_memory_budget(memory_budget))
        # an instance attribute, so a deepcopy of the model gets its own (copied) layer bound in
        layer.forward = functools.partial(_layer_forward, layer, compiled[cls])
    return layers


# ---------------------------------------------------------------- per role


@dataclass
class SpeedSettings:
    """The speed settings of one run; `apply_speed_settings` applies the ones that fit each role.

    attn_implementation: None picks per device (`eager_attention` on the CPU, the model's own
    elsewhere); a name forces it on every role. mixed_precision: accelerate's ("no", "bf16", "fp16").
    """

    mixed_precision: str = "no"
    attn_implementation: str | None = None
    lora: bool = False


def apply_speed_settings(model: nn.Module, role: str, settings: SpeedSettings) -> None:
    """Apply `settings` to a model already on its device, as `role` needs them.

    policy: attention, a sparse tied-embedding gradient, bf16 storage of the frozen base
    (LoRA under bf16), and no input cast inside the adapters under autocast (peft casts each
    adapter's input to float32, autocast casts it straight back: an activation copy per adapted
    layer, kept for the backward pass). reference (a frozen copy or a given model): attention
    and, under bf16, bf16 storage with float32 embedding tables (lookups as the float32 policy
    reads them, so policy and reference agree before the first update).
    """
    if role not in ("policy", "reference"):
        raise ValueError(f"unknown role {role!r}; use 'policy' or 'reference'")
    if settings.attn_implementation:
        set_attention(model, settings.attn_implementation)
    else:
        eager_attention(model)
    if role == "policy":
        sparse_tied_embedding_grad(model)
        if settings.mixed_precision == "bf16" and settings.lora:
            store_frozen_in_bf16(model)  # the frozen base is only ever read in bf16
        if settings.mixed_precision != "no":
            for layer in adapter_layers(model) or []:
                if hasattr(layer, "cast_input_dtype_enabled"):
                    layer.cast_input_dtype_enabled = False
    elif settings.mixed_precision == "bf16":
        store_frozen_in_bf16(model, keep_embeddings=True)


def adapter_layers(model: nn.Module) -> list | None:
    """peft's tuner layers of a LoRA-style model (None for prompt-learning adapters or no peft)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return None
    config = getattr(model, "peft_config", None)
    if not config:
        return None
    active = config[model.active_adapter]
    if getattr(active, "is_prompt_learning", False) or getattr(active, "is_adaption_prompt", False):
        return None
    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]

