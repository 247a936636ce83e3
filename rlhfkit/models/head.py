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
def plain_head(model, inputs: dict) -> nn.Linear | None:
    """The model's LM head when its logits on `inputs` are exactly `F.linear(head input)`, else None.

    Probed on the first call for each model (give one small batch) and remembered."""
    head = output_head(model)
    if type(head) is not nn.Linear:
        return None
    inner = getattr(model, "module", model)
    if inner not in _PROBED:
        modes = {m: m.training for m in inner.modules()}  # each module's own flag, put back as it was
        inner.eval()  # dropout would make the two passes differ
        try:
            logits = model(**inputs).logits
            with head_inputs(head) as seen:
                model(**inputs)
            hidden = seen[-1]
            if not torch.is_autocast_enabled(hidden.device.type):
                hidden = hidden.to(head.weight.dtype)
            expected = nn.functional.linear(hidden, head.weight, head.bias)
            _PROBED[inner] = logits.shape == expected.shape and torch.allclose(
                logits.float(), expected.float(), rtol=1e-4, atol=1e-5)
        except Exception:  # sharded or partitioned weights, an unusual head: keep the model's own logits
            _PROBED[inner] = False
        finally:
            for module, mode in modes.items():
                module.training = mode
    return head if _PROBED[inner] else None


__all__ = ["head_inputs", "head_skipped", "output_head", "plain_head"]
