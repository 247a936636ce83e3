"""Distillation divergences (rlhfkit.objectives.distill) against hand-worked numbers."""

import math

import pytest
import torch

from rlhfkit.objectives.distill import forward_kl, generalized_jsd, get_distill_loss, reverse_kl, top1_agreement

# teacher p = (1/2, 1/2), student q = (3/4, 1/4), as logits (log-probs)
T = torch.log(torch.tensor([[0.5, 0.5]]))
S = torch.log(torch.tensor([[0.75, 0.25]]))
KL_TS = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)       # 0.143841
KL_ST = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)     # 0.130812


def test_forward_and_reverse_kl_by_hand():
    assert forward_kl(S, T).item() == pytest.approx(KL_TS, abs=1e-6)
    assert forward_kl(S, T).item() == pytest.approx(0.143841, abs=1e-6)
    assert reverse_kl(S, T).item() == pytest.approx(KL_ST, abs=1e-6)


def test_temperature_softens_both_and_forward_kl_is_scaled_by_t_squared():
    # at T = 2 the student becomes (sqrt 3, 1) / (sqrt 3 + 1); the teacher stays uniform
    q0 = math.sqrt(0.75) / (math.sqrt(0.75) + math.sqrt(0.25))
    by_hand = 0.5 * math.log(0.5 / q0) + 0.5 * math.log(0.5 / (1 - q0))
    assert forward_kl(S, T, temperature=2.0).item() == pytest.approx(4 * by_hand, abs=1e-6)
    assert forward_kl(S, T, temperature=2.0).item() == pytest.approx(0.149009, abs=1e-6)


def test_generalized_jsd_by_hand_and_its_ends():
    m = (0.625, 0.375)  # beta = 0.5 mixture
    kl_tm = 0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])
    kl_sm = 0.75 * math.log(0.75 / m[0]) + 0.25 * math.log(0.25 / m[1])
    assert generalized_jsd(S, T, beta=0.5).item() == pytest.approx(0.5 * (kl_tm + kl_sm), abs=1e-6)
    assert generalized_jsd(S, T, beta=0.5).item() == pytest.approx(0.033822, abs=1e-6)
    # beta 0 is forward KL, beta 1 reverse KL (TRL's GKDTrainer); asymmetric beta weighs the teacher's side
    assert generalized_jsd(S, T, beta=0.0).item() == pytest.approx(KL_TS, abs=1e-6)
    assert generalized_jsd(S, T, beta=1.0).item() == pytest.approx(KL_ST, abs=1e-6)
    mix = (0.9 * 0.5 + 0.1 * 0.75, 0.9 * 0.5 + 0.1 * 0.25)
    b09 = 0.9 * (0.5 * math.log(0.5 / mix[0]) + 0.5 * math.log(0.5 / mix[1])) + \
        0.1 * (0.75 * math.log(0.75 / mix[0]) + 0.25 * math.log(0.25 / mix[1]))
    assert generalized_jsd(S, T, beta=0.9).item() == pytest.approx(b09, abs=1e-6)
    with pytest.raises(ValueError):
        generalized_jsd(S, T, beta=1.5)


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "jsd"])
def test_zero_at_the_teacher_and_gradient_descent_moves_the_student_towards_it(name):
    torch.manual_seed(0)
    teacher = torch.randn(3, 5, 11)
    loss_fn = get_distill_loss(name)
    assert loss_fn(teacher, teacher, temperature=2.0).abs().max() < 1e-6
    student = torch.randn(3, 5, 11, requires_grad=True)
    agree_before = top1_agreement(student.detach(), teacher).mean()
    opt = torch.optim.SGD([student], lr=2.0)
    first = None
    for _ in range(400):
        loss = loss_fn(student, teacher, temperature=2.0).sum()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first  # a wrong sign would climb instead
    assert top1_agreement(student.detach(), teacher).mean() > max(agree_before, 0.7)


def test_unknown_loss_names_the_choices():
    with pytest.raises(ValueError, match="forward_kl"):
        get_distill_loss("kl")
