"""Distillation losses: per-token divergences between the teacher's and the student's next-token
distributions, on logits [..., V] -> [...] (sum them over the tokens a method counts).

- `forward_kl` (Hinton et al. 2015): KL(p_teacher^T || p_student^T) of the temperature-T softmaxes,
  times T^2 so the soft targets' gradient keeps its size as T changes (the paper's scaling);
- `reverse_kl`: KL(p_student^T || p_teacher^T), mode-seeking (MiniLLM, GKD with beta = 1);
- `jsd`: the generalised Jensen-Shannon divergence of GKD (Agarwal et al. 2024, Eq. 1) with TRL's
  GKDTrainer semantics: M = beta p_teacher + (1 - beta) p_student and
  JSD_beta = beta KL(p_teacher || M) + (1 - beta) KL(p_student || M); beta = 0 is taken as forward KL
  and beta = 1 as reverse KL (as TRL does; the mixture itself degenerates to 0 there).
  The divergences of GKD are not rescaled by T^2, as in TRL.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rlhfkit.objectives.registry import Registry

DISTILL_LOSSES = Registry("distillation loss")


def _log_softmaxes(student_logits, teacher_logits, temperature: float):
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return s, t


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis, from log-probs (0 log 0 = 0)."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)


@DISTILL_LOSSES.register("forward_kl")
def forward_kl(student_logits, teacher_logits, temperature: float = 1.0, **_) -> torch.Tensor:
    s, t = _log_softmaxes(student_logits, teacher_logits, temperature)
    return _kl(t, s) * temperature ** 2


@DISTILL_LOSSES.register("reverse_kl")
def reverse_kl(student_logits, teacher_logits, temperature: float = 1.0, **_) -> torch.Tensor:
    s, t = _log_softmaxes(student_logits, teacher_logits, temperature)
    return _kl(s, t)


@DISTILL_LOSSES.register("jsd")
def generalized_jsd(student_logits, teacher_logits, beta: float = 0.5, temperature: float = 1.0, **_) -> torch.Tensor:
    if not 0 <= beta <= 1:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    s, t = _log_softmaxes(student_logits, teacher_logits, temperature)
    if beta == 0:
        return _kl(t, s)
    if beta == 1:
        return _kl(s, t)
    mixture = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log(1 - beta)]), dim=0)
    return beta * _kl(t, mixture) + (1 - beta) * _kl(s, mixture)


def get_distill_loss(name: str):
    return DISTILL_LOSSES.lookup(name)


def top1_agreement(student_logits, teacher_logits) -> torch.Tensor:
    """1 where the student's most likely next token is the teacher's, per position."""
    return (student_logits.argmax(-1) == teacher_logits.argmax(-1)).float()
