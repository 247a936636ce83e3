"""The LM head as a seam: skip it and read its input, for log-probs that never hold the logits.

`ops.logprobs.linear_logprobs(hidden, head.weight, head.bias, labels)` computes what
`logprobs_from_logits(model(...).logits, labels)` does, a row chunk of logits at a
time, when the model's logits are exactly its linear head applied to the head's
input. `plain_head` probes that once per model (not so for Gemma 2's softcapping, a
peft or quantised head, or weights sharded outside the forward by FSDP or ZeRO-3).
"""

from __future__ import annotations

import contextlib
import weakref

import torch
from torch import nn

_PROBED: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()


def output_head(model) -> nn.Module | None:
    """The output embedding (LM head) of an HF or peft model, possibly wrapped by DDP / accelerate."""
    inner = getattr(model, "module", model)
    getter = getattr(inner, "get_output_embeddings", None)
    return getter() if getter is not None else None


@contextlib.contextmanager
def head_skipped(head: nn.Module):
    """Within: `head` returns an empty [.., 0] tensor instead of logits (its hooks still run)."""
    own = head.__dict__.get("forward")  # an instance-level forward (accelerate hooks) to put back
    head.forward = lambda hidden, *args, **kwargs: hidden.new_empty(*hidden.shape[:-1], 0)
    try:
        yield
    finally:
        if own is None:
            del head.forward
        else:
            head.forward = own


@contextlib.contextmanager
def head_inputs(head: nn.Module):
    """Within: the head is skipped and every input it would have read is appended to the yielded list."""
    seen: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        with head_skipped(head):
            yield seen
    finally:
        handle.remove()


@torch.no_grad()
def head_is_plain(model, inputs: dict) -> bool:
    """Whether the model's logits on `inputs` are exactly `F.linear(head input)` (one small batch is enough),
    in the caller's autocast state. Dropout is off for the two passes and every module's mode put back."""
    head = output_head(model)
    if type(head) is not nn.Linear:
        return False
    inner = getattr(model, "module", model)
    modes = {m: m.training for m in inner.modules()}
    inner.eval()  # dropout would make the two passes differ
    try:
        logits = model(**inputs).logits
        with head_inputs(head) as seen:
            model(**inputs)
        hidden = seen[-1]
        if not torch.is_autocast_enabled(hidden.device.type):
            hidden = hidden.to(head.weight.dtype)  # as the head's own input cast (cpu.store_frozen_in_bf16)
        expected = nn.functional.linear(hidden, head.weight, head.bias)
        return logits.shape == expected.shape and torch.allclose(logits.float(), expected.float(), rtol=1e-4,
                                                                 atol=1e-5)
    except Exception:  # sharded or partitioned weights, an unusual head: keep the model's own logits
        return False
    finally:
        for module, mode in modes.items():
            module.training = mode


def plain_head(model, inputs: dict) -> nn.Linear | None:
    """The model's LM head when `head_is_plain`, else None; probed on the first call for each model and
    remembered (a model whose logits change afterwards, e.g. by a new hook, needs `head_is_plain`)."""
    inner = getattr(model, "module", model)
    if inner not in _PROBED:
        _PROBED[inner] = head_is_plain(model, inputs)
    return output_head(model) if _PROBED[inner] else None


__all__ = ["head_inputs", "head_is_plain", "head_skipped", "output_head", "plain_head"]
