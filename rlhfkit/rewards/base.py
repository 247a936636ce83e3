"""The one interface every reward has: prompts and completions in, one float per completion out."""

from __future__ import annotations

import math
from typing import Sequence

from rlhfkit.errors import UserError

def _as_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    from rlhfkit.data import prompt_text

    return prompt_text(prompt)


class RewardSource:
    """Base class: texts in, one float per completion out.

    Subclasses implement `score(prompts, completions)` for one batch of plain
    texts; `__call__` checks the inputs, converts chat prompts to text, splits
    into batches of `batch_size` and checks the outputs.
    """

    name: str = "reward"
    higher_is_better: bool = True
    batch_size: int = 64

    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        raise NotImplementedError

    def __call__(self, prompts: Sequence, completions: Sequence[str]) -> list[float]:
        prompts, completions = list(prompts), list(completions)
        if len(prompts) != len(completions):
            raise UserError(f"reward '{self.name}': {len(prompts)} prompts for {len(completions)} completions; give one prompt per completion")
        prompts = [_as_text(p) for p in prompts]
        out: list[float] = []
        step = max(1, int(self.batch_size or len(completions) or 1))
        for start in range(0, len(completions), step):
            batch = self.score(prompts[start:start + step], completions[start:start + step])
            out.extend(_check_scores(self.name, batch, len(completions[start:start + step])))
        return out

    def to(self, device) -> "RewardSource":
        """Move to a device where there is a model; a no-op for CPU-only sources."""
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _check_scores(name, scores, n) -> list[float]:
    try:
        values = [float(s) for s in scores]
    except (TypeError, ValueError):
        raise UserError(f"reward '{name}' must return a list of numbers, got {type(scores).__name__}") from None
    if len(values) != n:
        raise UserError(f"reward '{name}' returned {len(values)} scores for {n} completions; return one per completion")
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise UserError(f"reward '{name}' returned a non-finite score ({v}) for completion {i} of a batch")
    return values
