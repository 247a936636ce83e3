"""The one reference abstraction: the model a policy is held to (KL) or compared against.

Three kinds, one interface (`network`, `active()`):

- `given`: a model the user passes (an SFT checkpoint, say), frozen;
- `copy`: a frozen deep copy of the policy as it started (full fine-tuning);
- `adapters_off`: the policy itself with its LoRA adapters switched off, so no second
  copy is in memory (peft).

    ref = Reference.for_policy(policy_model, given=None)
    with ref.active():
        logits = ref.network(**inputs)

PPO's KL term, evaluation's "before" model and every later method (DPO's reference,
GRPO's KL) use it. `reference_for` picks the kind a run gets by default.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field

from torch import nn

from rlhfkit.models.speed import adapter_layers

KINDS = ("given", "copy", "adapters_off")


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen copy of a model (the reference when the policy trains all its weights)."""
    ref = copy.deepcopy(model)
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref.eval()


def freeze(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


@contextlib.contextmanager
def adapters_disabled(peft_model, layers: list | None = None):
    """Within: the peft model computes its base model's outputs (LoRA-style adapters switched off).

    Uses peft's public per-layer switch (`BaseTunerLayer.enable_adapters`) on `layers`
    (default: `speed.adapter_layers(peft_model)`): 16 ms per off/on for SmolLM2's 210
    LoRA layers, against 95 ms for `PeftModel.disable_adapter()`, which first builds a
    status report of the whole model. Switching adapters back on marks them trainable,
    so each parameter's requires_grad is put back as it was. Prompt-learning adapters
    use peft's `disable_adapter()`.
    """
    layers = adapter_layers(peft_model) if layers is None else layers
    if layers is None:
        with peft_model.disable_adapter():
            yield
        return
    enabled = [m for m in layers if not m.disable_adapters]
    grads = [(p, p.requires_grad) for m in enabled for p in m.parameters()]
    for m in enabled:
        m.enable_adapters(False)
    try:
        yield
    finally:
        for m in enabled:
            m.enable_adapters(True)
        for p, requires_grad in grads:
            if p.requires_grad != requires_grad:
                p.requires_grad_(requires_grad)


@dataclass
class Reference:
    """`network` gives the reference's outputs inside `active()`; see the module docstring for the kinds."""

    kind: str
    network: nn.Module
    peft_model: object | None = None  # adapters_off: whose adapters `active()` switches off
    _layers: list | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown reference kind {self.kind!r}; use one of {list(KINDS)}")
        if self.kind == "adapters_off":
            if self.peft_model is None or not hasattr(self.peft_model, "peft_config"):
                raise ValueError("an adapters_off reference needs the peft model whose adapters it switches off")
            self._layers = adapter_layers(self.peft_model)

    @classmethod
    def given(cls, model: nn.Module) -> "Reference":
        """A model passed by the user (a value-head wrapper gives its language model), frozen."""
        model = getattr(model, "pretrained_model", model) if hasattr(model, "v_head") else model
        return cls("given", freeze(model))

    @classmethod
    def copy_of(cls, model: nn.Module) -> "Reference":
        return cls("copy", frozen_copy(model))

    @classmethod
    def adapters_off(cls, peft_model, network: nn.Module | None = None) -> "Reference":
        """The peft model with its adapters off; `network` is what to call (default: the peft model
        itself; a trainer passes its wrapped policy, whose forward reaches the same peft model)."""
        return cls("adapters_off", network if network is not None else peft_model, peft_model)

    @classmethod
    def for_policy(cls, peft_or_plain_model: nn.Module, given: nn.Module | None = None,
                   network: nn.Module | None = None) -> "Reference":
        """The default for a policy: the given model, else adapters off for peft, else a frozen copy."""
        if given is not None:
            return cls.given(given)
        if hasattr(peft_or_plain_model, "peft_config"):
            return cls.adapters_off(peft_or_plain_model, network)
        return cls.copy_of(peft_or_plain_model)

    @property
    def separate(self) -> bool:
        """Whether the reference is a network of its own (to place on a device, speed up, keep frozen)."""
        return self.kind != "adapters_off"

    def active(self):
        """The context in which `network` computes the reference (a no-op but for adapters_off)."""
        if self.kind == "adapters_off":
            return adapters_disabled(self.peft_model, self._layers)
        return contextlib.nullcontext()

    def to(self, device) -> "Reference":
        if self.separate:
            self.network = self.network.to(device)
        return self
