"""Pruning maths on weight matrices: importance scores, masks at a sparsity or an N:M pattern, and the
block influence of a layer. Every weight here is [out_features, in_features] (nn.Linear's layout).

- magnitude: |W| (Han et al. 2015), compared across the whole layer (as the Wanda paper's baseline);
- Wanda (Sun et al. 2023): |W_ij| * ||X_j||_2, the weight's size times the norm of its input feature
  over the calibration tokens, compared within each output row;
- N:M: in every group of M consecutive inputs of a row keep the N highest scores (2:4 is what sparse
  tensor cores run);
- block influence (ShortGPT, Men et al. 2024): 1 - cos(block input, block output) per token; a block
  that barely turns its input is the first to drop.
"""

from __future__ import annotations

import torch

from rlhfkit.errors import UserError


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().abs().float()


def wanda_scores(weight: torch.Tensor, input_sq_sum: torch.Tensor) -> torch.Tensor:
    """|W| * ||X_j||_2, where input_sq_sum[j] is the sum over calibration tokens of x_j^2 ([in])."""
    if input_sq_sum.shape != weight.shape[1:]:
        raise ValueError(f"input norms {tuple(input_sq_sum.shape)} do not match {tuple(weight.shape)} inputs")
    return weight.detach().abs().float() * input_sq_sum.float().clamp(min=0).sqrt().unsqueeze(0)


def check_sparsity(sparsity: float) -> float:
    if not isinstance(sparsity, (int, float)) or not 0 < sparsity < 1:
        raise UserError(f"--sparsity {sparsity}: the fraction of weights to remove must be in (0, 1), e.g. 0.5")
    return float(sparsity)


def unstructured_mask(scores: torch.Tensor, sparsity: float, per: str = "row") -> torch.Tensor:
    """Keep-mask (True = keep) removing the `sparsity` fraction of lowest scores, per output row or per layer."""
    check_sparsity(sparsity)
    if per == "row":
        k = int(scores.shape[1] * sparsity)
        if k == 0:
            return torch.ones_like(scores, dtype=torch.bool)
        drop = torch.topk(scores, k, dim=1, largest=False).indices
        mask = torch.ones_like(scores, dtype=torch.bool)
        mask.scatter_(1, drop, False)
        return mask
    if per == "layer":
        k = int(scores.numel() * sparsity)
        if k == 0:
            return torch.ones_like(scores, dtype=torch.bool)
        drop = torch.topk(scores.flatten(), k, largest=False).indices
        mask = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
        mask[drop] = False
        return mask.view_as(scores)
    raise ValueError(f"per must be 'row' or 'layer', got {per!r}")


def parse_pattern(pattern: str) -> tuple[int, int]:
    """'2:4' -> (2, 4)."""
    try:
        n, m = (int(x) for x in str(pattern).split(":"))
    except ValueError:
        raise UserError(f"--pattern {pattern!r}: write N:M, e.g. 2:4 (keep 2 of every 4 weights)") from None
    if not 0 < n < m:
        raise UserError(f"--pattern {pattern}: N:M needs 0 < N < M, e.g. 2:4")
    return n, m


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask with the n highest scores of every group of m consecutive inputs in each row."""
    out_f, in_f = scores.shape
    if in_f % m:
        raise UserError(f"an N:M pattern with M={m} needs the inputs ({in_f}) to split into groups of {m}")
    groups = scores.reshape(out_f, in_f // m, m)
    keep = torch.topk(groups, n, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, keep, True)
    return mask.reshape(out_f, in_f)


def block_influence(hidden_in: torch.Tensor, hidden_out: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[float, int]:
    """(sum over tokens of 1 - cos(input, output), number of tokens): [B, T, H] each, mask [B, T]."""
    cos = torch.nn.functional.cosine_similarity(hidden_in.float(), hidden_out.float(), dim=-1)
    bi = 1 - cos
    if mask is None:
        return float(bi.sum()), bi.numel()
    m = mask.to(bi.dtype)
    return float((bi * m).sum()), int(m.sum())
