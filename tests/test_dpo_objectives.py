"""The DPO family's losses against numbers worked by hand (plain formulas in math, not the functions).

The batch: two pairs, beta 0.5.
    chosen  [-2.0, -5.0]  ref [-2.5, -4.0]  -> chosen log-ratios   [ 0.5, -1.0], tokens [2, 4]
    rejected[-3.0, -4.0]  ref [-2.5, -4.5]  -> rejected log-ratios [-0.5,  0.5], tokens [4, 2]
    d = [1.0, -1.5], z = beta * d = [0.5, -0.75]
"""

import math

import pytest
import torch

from rlhfkit.objectives.dpo import (
    PairLogps, combined_loss, get_pair_loss, kto_kl, kto_loss, log1mexp, pair_rewards,
)

BETA = 0.5
Z = [0.5, -0.75]


def batch(**over):
    x = dict(chosen=torch.tensor([-2.0, -5.0]), rejected=torch.tensor([-3.0, -4.0]),
             chosen_tokens=torch.tensor([2, 4]), rejected_tokens=torch.tensor([4, 2]),
             ref_chosen=torch.tensor([-2.5, -4.0]), ref_rejected=torch.tensor([-2.5, -4.5]))
    x.update(over)
    return PairLogps(**x)


def softplus(v):  # -log sigmoid(-v)
    return math.log1p(math.exp(v))


def sig(v):
    return 1 / (1 + math.exp(-v))


def close(t, expected):
    assert t.tolist() == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_sigmoid_is_dpo():
    close(get_pair_loss("sigmoid")(batch(), beta=BETA), [softplus(-0.5), softplus(0.75)])


def test_label_smoothing_is_conservative_dpo():
    eps = 0.1
    close(get_pair_loss("sigmoid")(batch(), beta=BETA, label_smoothing=eps),
          [(1 - eps) * softplus(-z) + eps * softplus(z) for z in Z])


def test_robust():
    eps = 0.1
    close(get_pair_loss("robust")(batch(), beta=BETA, label_smoothing=eps),
          [((1 - eps) * softplus(-z) - eps * softplus(z)) / (1 - 2 * eps) for z in Z])
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        get_pair_loss("robust")(batch(), beta=BETA, label_smoothing=0.5)


def test_hinge():
    close(get_pair_loss("hinge")(batch(), beta=BETA), [1 - 0.5, 1 + 0.75])


def test_ipo_uses_per_token_log_ratios():
    # per-token: chosen [0.5/2, -1/4], rejected [-0.5/4, 0.5/2]: d = [0.375, -0.5]; target 1 / (2 beta) = 1
    close(get_pair_loss("ipo")(batch(), beta=BETA), [(0.375 - 1) ** 2, (-0.5 - 1) ** 2])


def test_sft_is_the_token_mean_nll_of_chosen_on_every_pair():
    close(get_pair_loss("sft")(batch()), [7 / 6, 7 / 6])  # (2 + 5) nats over 2 + 4 tokens


def test_sft_micro_batches_add_up_to_the_whole_batch_token_mean():
    whole = batch()
    parts = []
    for i in (0, 1):
        piece = batch(chosen=whole.chosen[i:i + 1], rejected=whole.rejected[i:i + 1],
                      chosen_tokens=whole.chosen_tokens[i:i + 1], rejected_tokens=whole.rejected_tokens[i:i + 1],
                      ref_chosen=None, ref_rejected=None, tokens_per_pair=torch.tensor(6 / 2))
        parts.append(get_pair_loss("sft")(piece).sum())
    assert (sum(parts) / 2).item() == pytest.approx(7 / 6)


def test_simpo_is_reference_free_length_normalised_with_gamma():
    # per-token means: chosen [-1, -1.25], rejected [-0.75, -2]; beta 2, gamma 0.5: z = 2 * [-0.25, 0.75] - 0.5
    x = batch(ref_chosen=None, ref_rejected=None)
    close(get_pair_loss("simpo")(x, beta=2.0, simpo_gamma=0.5), [softplus(1.0), softplus(-1.0)])


def test_orpo_is_nll_plus_the_odds_ratio_term():
    x = batch(ref_chosen=None, ref_rejected=None)
    expected = []
    for c, r in ((-1.0, -0.75), (-1.25, -2.0)):
        log_odds = (c - r) - (math.log(1 - math.exp(c)) - math.log(1 - math.exp(r)))
        expected.append(7 / 6 + 0.1 * softplus(-log_odds))
    close(get_pair_loss("orpo")(x, beta=0.1), expected)


def test_log1mexp_is_stable_at_both_ends():
    x = torch.tensor([-1e-8, -0.5, -30.0], dtype=torch.float64)
    close(log1mexp(x), [math.log(1e-8), math.log(1 - math.exp(-0.5)), -math.exp(-30.0)])


def test_combination_sums_weighted_terms():
    close(combined_loss(["sigmoid", "sft"], [1.0, 0.5], batch(), beta=BETA),
          [softplus(-0.5) + 0.5 * 7 / 6, softplus(0.75) + 0.5 * 7 / 6])
    with pytest.raises(ValueError, match="one weight per loss"):
        combined_loss(["sigmoid", "sft"], [1.0], batch(), beta=BETA)
    with pytest.raises(ValueError, match="unknown DPO loss 'dop'.*sigmoid"):
        combined_loss(["dop"], None, batch())


def test_reference_losses_need_the_reference():
    with pytest.raises(ValueError, match="reference"):
        get_pair_loss("sigmoid")(batch(ref_chosen=None, ref_rejected=None))


def test_gradient_signs_raise_chosen_and_lower_rejected():
    for name in ("sigmoid", "robust", "hinge", "ipo", "simpo", "orpo"):
        chosen = torch.tensor([-2.0, -5.0], requires_grad=True)
        rejected = torch.tensor([-3.0, -4.0], requires_grad=True)
        loss = get_pair_loss(name)(batch(chosen=chosen, rejected=rejected), beta=BETA, label_smoothing=0.1
                                   if name == "robust" else 0.0).mean()
        loss.backward()
        assert (chosen.grad < 0).all(), name      # descending the loss raises the chosen log-prob
        assert (rejected.grad > 0).all(), name    # ... and lowers the rejected one


def test_rewards_are_beta_log_ratios_or_beta_mean_logps():
    c, r = pair_rewards(batch(), BETA)
    close(c, [0.25, -0.5])
    close(r, [-0.25, 0.25])
    c, r = pair_rewards(batch(), 2.0, reference_free=True)
    close(c, [-2.0, -2.5])
    close(r, [-1.5, -4.0])


def test_kto_hand_worked():
    # r = logps - ref = [0.5, -1.0, 0.0]; KL 0.2; desirable, undesirable, desirable; weights 1.0 / 1.5
    losses = kto_loss(torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-1.5, -1.0, -3.0]),
                      torch.tensor([True, False, True]), 0.2, beta=0.5, desirable_weight=1.0, undesirable_weight=1.5)
    close(losses, [1 - sig(0.5 * (0.5 - 0.2)), 1.5 * (1 - sig(0.5 * (0.2 + 1.0))), 1 - sig(0.5 * (0.0 - 0.2))])


def test_kto_kl_is_a_clamped_detached_mean():
    close(kto_kl(torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])), 0.0)  # mean -0.25, clamped
    p = torch.tensor([-1.0, -2.0], requires_grad=True)
    kl = kto_kl(p, torch.tensor([-1.5, -2.5]))
    assert kl.item() == pytest.approx(0.5) and not kl.requires_grad
