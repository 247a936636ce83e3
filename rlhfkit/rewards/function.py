"""Python-function rewards and weighted sums of any rewards."""

from __future__ import annotations

import importlib
from typing import Callable, Sequence

from rlhfkit.errors import UserError
from rlhfkit.rewards.base import RewardSource


class FunctionReward(RewardSource):
    """Any callable f(prompts, completions) -> list[float], called on batches of `batch_size` (None: all at once)."""

    def __init__(self, fn: Callable, name: str | None = None, batch_size: int | None = None, higher_is_better: bool = True):
        if not callable(fn):
            raise UserError(f"a function reward needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or "function"
        self.batch_size = batch_size or 0  # 0: one call for everything
        self.higher_is_better = higher_is_better

    def score(self, prompts, completions):
        return self.fn(prompts, completions)


def _import_function(spec: str) -> FunctionReward:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise UserError(
                f"reward '{spec}': no Python module '{e.name}'; make it importable (on PYTHONPATH or installed), "
                "or pass a model folder / hub id (those contain '/')"
            ) from None
        raise
    fn = getattr(module, attr, None)
    if fn is None:
        raise UserError(f"reward '{spec}': module '{module_name}' has no attribute '{attr}'")
    if not callable(fn):
        raise UserError(f"reward '{spec}': '{attr}' is not callable; it must be f(prompts, completions) -> list[float]")
    return FunctionReward(fn, name=spec)



class WeightedSum(RewardSource):
    """sum_i weight_i * source_i(prompts, completions); each part may be a RewardSource, callable or spec.

    After a call, `last_parts` holds each part's unweighted scores by name (trainers log their means as
    `rewards/NAME/mean`, as TRL does for its `reward_funcs`).
    """

    def __init__(self, parts: Sequence[tuple[float, object]]):
        if not parts:
            raise UserError("a weighted sum needs at least one (weight, source) part")
        from rlhfkit.rewards import get_reward

        self.parts = [(float(w), get_reward(s)) for w, s in parts]
        self.name = "+".join(f"{w:g}*{s.name}" for w, s in self.parts)
        self.batch_size = 0  # the parts batch themselves
        self.last_parts: dict[str, list[float]] = {}

    def to(self, device) -> "WeightedSum":
        for _, s in self.parts:
            s.to(device)
        return self

    def __call__(self, prompts, completions):
        self.last_parts = {}
        return super().__call__(prompts, completions)

    def score(self, prompts, completions):
        total = [0.0] * len(completions)
        for w, source in self.parts:
            values = source(prompts, completions)
            self.last_parts.setdefault(source.name, []).extend(values)
            for i, v in enumerate(values):
                total[i] += w * v
        return total
