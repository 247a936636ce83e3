"""PPO maths against hand-worked numbers (written out below) and plain reference loops."""

import math

import pytest
import torch
import torch.nn.functional as F

from rlhfkit.losses import (
    AdaptiveKLController, FixedKLController, RunningMoments, entropy_from_logits, gae, kl_estimate,
    linear_logprobs, logprobs_from_logits, masked_gae, masked_mean, masked_var, masked_whiten, policy_loss, value_loss,
)


def gae_loop(rewards, values, gamma, lam):
    """The textbook backward recursion, one sequence at a time."""
    advantages = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        last = 0.0
        for t in reversed(range(rewards.shape[1])):
            next_value = values[b, t + 1] if t + 1 < rewards.shape[1] else 0.0
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            last = delta + gamma * lam * last
            advantages[b, t] = last
    return advantages, advantages + values


def test_gae_hand_worked():
    # gamma 1, lam 0.5; V = [0.5, 1.0, 0.0], r = [1, 0, 2]
    # deltas: 1 + 1.0 - 0.5 = 1.5;  0 + 0 - 1.0 = -1.0;  2 + 0 - 0 = 2.0
    # A2 = 2.0;  A1 = -1.0 + 0.5 * 2.0 = 0.0;  A0 = 1.5 + 0.5 * 0.0 = 1.5;  returns = A + V
    adv, ret = gae(torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[0.5, 1.0, 0.0]]), gamma=1.0, lam=0.5)
    assert torch.allclose(adv, torch.tensor([[1.5, 0.0, 2.0]]))
    assert torch.allclose(ret, torch.tensor([[2.0, 1.0, 2.0]]))


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.9), (1.0, 1.0), (0.5, 0.0)])
def test_vectorised_gae_matches_loop(gamma, lam):
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(5, 37, generator=g, dtype=torch.float64), torch.randn(5, 37, generator=g, dtype=torch.float64)
    adv, ret = gae(rewards, values, gamma, lam)
    ref_adv, ref_ret = gae_loop(rewards, values, gamma, lam)
    assert torch.allclose(adv, ref_adv, atol=1e-10) and torch.allclose(ret, ref_ret, atol=1e-10)


def test_masked_gae_ends_each_sequence_at_its_last_token():
    # r = [1, 2, (9)], V = [0.5, 1.0, (7.0)], last position is padding; gamma = lam = 1
    # deltas: 1 + 1.0 - 0.5 = 1.5;  2 + 0 - 1.0 = 1.0  ->  A = [2.5, 1.0, 0], returns = [3.0, 2.0, 0]
    mask = torch.tensor([[1, 1, 0]])
    adv, ret = masked_gae(torch.tensor([[1.0, 2.0, 9.0]]), torch.tensor([[0.5, 1.0, 7.0]]), mask, 1.0, 1.0)
    assert torch.allclose(adv, torch.tensor([[2.5, 1.0, 0.0]]))
    assert torch.allclose(ret, torch.tensor([[3.0, 2.0, 0.0]]))
    # each row of a right-padded batch equals its own unpadded GAE
    g = torch.Generator().manual_seed(1)
    r, v = torch.randn(4, 10, generator=g), torch.randn(4, 10, generator=g)
    lengths = [10, 3, 7, 1]
    m = torch.tensor([[1] * n + [0] * (10 - n) for n in lengths])
    adv, _ = masked_gae(r, v, m, 1.0, 0.95)
    for i, n in enumerate(lengths):
        alone, _ = gae_loop(r[i:i + 1, :n], v[i:i + 1, :n], 1.0, 0.95)
        assert torch.allclose(adv[i, :n], alone[0], atol=1e-5) and (adv[i, n:] == 0).all()


def test_whitening_hand_worked():
    # [1, 2, 3, 4]: mean 2.5, unbiased var (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    s = math.sqrt(5 / 3)
    expected = torch.tensor([[-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s]])
    assert torch.allclose(masked_whiten(x, torch.ones_like(x)), expected, atol=1e-6)
    # the masked-out 100 is ignored: [1, 2, 3] has mean 2 and unbiased var 1
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert torch.allclose(masked_whiten(x, mask), torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-6)
    assert torch.allclose(masked_whiten(x, mask, shift_mean=False), torch.tensor([[1.0, 2.0, 3.0, 0.0]]), atol=1e-6)
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    assert masked_var(x, mask).item() == pytest.approx(1.0)


def test_clipped_policy_loss_hand_worked():
    # ratios 1.5, 0.5, 1.0 (and a padded token); advantages 1, 1, -2; clip 0.2
    # token 0: max(-1.5, -1.2) = -1.2 (clipped);  token 1: max(-0.5, -0.8) = -0.5;  token 2: max(2, 2) = 2
    # loss = (-1.2 - 0.5 + 2) / 3 = 0.1; clipfrac = 1/3
    # approxkl = 0.5 * (ln(1.5)^2 + ln(0.5)^2 + 0) / 3
    logprobs = torch.log(torch.tensor([[1.5, 0.5, 1.0, 7.0]])).requires_grad_()
    old = torch.zeros(1, 4)
    adv = torch.tensor([[1.0, 1.0, -2.0, 50.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, stats = policy_loss(logprobs, old, adv, mask, clip=0.2)
    assert loss.item() == pytest.approx(0.1, abs=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(1 / 3)
    assert stats["approxkl"].item() == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 3, rel=1e-5)
    loss.backward()
    # d/dlogp of -A * ratio = -A * ratio: the clipped token and the padding get no gradient
    assert torch.allclose(logprobs.grad, torch.tensor([[0.0, -0.5 / 3, 2.0 / 3, 0.0]]), atol=1e-6)


def test_clipped_value_loss_hand_worked():
    # V = [2, 0, 2], V_old = [1, 0, 1], R = [1.5, 1, 3], clip 0.2
    # token 0: clipped V 1.2; max((2-1.5)^2, (1.2-1.5)^2) = max(0.25, 0.09) = 0.25
    # token 1: max(1, 1) = 1
    # token 2: clipped V 1.2; max((2-3)^2, (1.2-3)^2) = max(1, 3.24) = 3.24 (clipped)
    # loss = 0.5 * (0.25 + 1 + 3.24) / 3 = 0.748333; clipfrac = 1/3
    values = torch.tensor([[2.0, 0.0, 2.0]], requires_grad=True)
    loss, stats = value_loss(values, torch.tensor([[1.0, 0.0, 1.0]]), torch.tensor([[1.5, 1.0, 3.0]]),
                             torch.ones(1, 3), clip=0.2)
    assert loss.item() == pytest.approx(0.5 * 4.49 / 3, rel=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(1 / 3)
    assert stats["error"].item() == pytest.approx((0.25 + 1 + 1) / 3)
    loss.backward()
    # gradient 0.5 * 2 * (V - R) / 3 on unclipped tokens, 0 where the clipped term wins
    assert torch.allclose(values.grad, torch.tensor([[0.5 / 3, -1.0 / 3, 0.0]]), atol=1e-6)


def test_kl_estimators_hand_worked_and_unbiased():
    # p = 0.5, q = 0.25: k1 = ln 2; k3 = (q/p - 1) - ln(q/p) = -0.5 + ln 2
    # p = 0.25, q = 0.5: k1 = -ln 2; k3 = (2 - 1) - ln 2
    lp, ref = torch.log(torch.tensor([0.5, 0.25])), torch.log(torch.tensor([0.25, 0.5]))
    assert torch.allclose(kl_estimate(lp, ref, "k1"), torch.tensor([math.log(2), -math.log(2)]))
    assert torch.allclose(kl_estimate(lp, ref, "k3"), torch.tensor([-0.5 + math.log(2), 1 - math.log(2)]))
    # k2 = (ln 2)^2 / 2 for both (the log-ratio is squared)
    assert torch.allclose(kl_estimate(lp, ref, "k2"), torch.tensor([math.log(2) ** 2 / 2] * 2))
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl_estimate(lp, ref, "k4")
    # both are unbiased estimates of KL(p || q) when tokens are sampled from p
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.3, 0.3, 0.4])
    true_kl = (p * (p / q).log()).sum()
    tokens = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    for kind in ("k1", "k3"):
        est = kl_estimate(p.log()[tokens], q.log()[tokens], kind)
        assert est.mean().item() == pytest.approx(true_kl.item(), abs=0.01)
    assert (kl_estimate(p.log()[tokens], q.log()[tokens], "k3") >= 0).all()


def test_logprobs_and_entropy_from_logits():
    # logits [0, ln 3] -> probs [0.25, 0.75]
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])
    assert torch.allclose(logprobs_from_logits(logits, torch.tensor([[1, 0]])), torch.tensor([[math.log(0.75), math.log(0.5)]]))
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert torch.allclose(entropy_from_logits(logits), torch.tensor([[h, math.log(2)]]))


def test_kl_controllers():
    # beta 0.2, target 6, horizon 10000
    # KL 12: error clipped to +0.2 -> beta * (1 + 0.2 * 256 / 10000) = 0.201024
    # KL 3:  error clipped to -0.2 -> 0.2 * (1 - 0.00512) = 0.198976
    # KL 6.6 with 100 samples: error 0.1 -> 0.2 * (1 + 0.1 * 100 / 10000) = 0.2002
    for kl, n, expected in ((12.0, 256, 0.201024), (3.0, 256, 0.198976), (6.6, 100, 0.2002)):
        ctl = AdaptiveKLController(0.2, target=6.0, horizon=10000)
        ctl.update(kl, n)
        assert ctl.value == pytest.approx(expected, rel=1e-9)
    fixed = FixedKLController(0.1)
    fixed.update(100.0, 256)
    assert fixed.value == 0.1
    ctl = AdaptiveKLController(0.2, 6.0, 10000)
    ctl.update(12.0, 256)
    other = AdaptiveKLController(0.5, 6.0, 10000)
    other.load_state_dict(ctl.state_dict())
    assert other.value == ctl.value


def test_running_moments():
    # [1, 2, 3] then [4, 5]: mean 3, population variance 2
    m = RunningMoments()
    m.update(torch.tensor([1.0, 2.0, 3.0]))
    m.update(torch.tensor([4.0, 5.0]))
    assert m.mean == pytest.approx(3.0) and m.std == pytest.approx(math.sqrt(2.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_logprobs_match_autograd_through_log_softmax(dtype, temperature):
    """The chunked forward and hand-written backward equal plain autograd (more rows than one chunk)."""
    torch.manual_seed(0)
    x = (torch.randn(3, 50, 300) * 3).to(dtype).requires_grad_()
    given = x.detach().clone()
    labels = torch.randint(0, 300, (3, 50))
    weights = torch.randn(3, 50)
    fused = logprobs_from_logits(x, labels, temperature)
    (fused * weights).sum().backward()
    assert torch.equal(x.detach(), given)  # the float32 maths runs on copies, never in the logits
    fused_grad, x.grad = x.grad.clone(), None
    z = x.float() / temperature
    plain = torch.gather(torch.log_softmax(z, -1), -1, labels.unsqueeze(-1)).squeeze(-1)
    (plain * weights).sum().backward()
    assert fused.dtype == torch.float32 and fused_grad.dtype == dtype
    assert torch.allclose(fused, plain, atol=1e-5)
    assert torch.allclose(fused_grad.float(), x.grad.float(), atol=1e-5 if dtype == torch.float32 else 1e-2)
    entropy = entropy_from_logits(x, temperature)
    assert torch.equal(x.detach(), given)
    logp = torch.log_softmax(x.detach().float() / temperature, -1)
    assert torch.allclose(entropy, -(logp.exp() * logp).sum(-1), atol=1e-4)


def test_linear_logprobs_hand_worked():
    # hidden [1, 0], head rows [1, 0], [0, 1], [0, 0], bias [0, 0, ln 2] -> logits [1, 0, ln 2]
    # log p(0) = 1 - ln(e + 1 + 2); at T = 0.5: logits / T = [2, 0, 2 ln 2], log p(0) = 2 - ln(e^2 + 1 + 4)
    hidden, weight = torch.tensor([[[1.0, 0.0]]]), torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    bias = torch.tensor([0.0, 0.0, math.log(2.0)])
    lp, entropy = linear_logprobs(hidden, weight, bias, torch.tensor([[0]]), with_entropy=True)
    assert lp.item() == pytest.approx(1 - math.log(math.e + 3), abs=1e-6)
    p = torch.tensor([math.e, 1.0, 2.0]) / (math.e + 3)
    assert entropy.item() == pytest.approx(-(p * p.log()).sum().item(), abs=1e-6)
    lp, _ = linear_logprobs(hidden, weight, bias, torch.tensor([[0]]), temperature=0.5)
    assert lp.item() == pytest.approx(2 - math.log(math.e ** 2 + 5), abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_linear_logprobs_match_the_logits_path_in_value_and_gradient(monkeypatch, temperature):
    """Four row chunks (3 + 3 + 3 + 1 rows) against autograd through the full logits, for hidden, weight and bias."""
    from rlhfkit.ops import logprobs

    monkeypatch.setattr(logprobs, "_head_rows", lambda vocab: 3)
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    weight, bias = torch.randn(11, 8, requires_grad=True), torch.randn(11, requires_grad=True)
    labels, upstream = torch.randint(0, 11, (2, 5)), torch.randn(2, 5)
    got, none = linear_logprobs(hidden, weight, bias, labels, temperature)
    (got * upstream).sum().backward()
    grads = [t.grad.clone() for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None
    expected = logprobs_from_logits(F.linear(hidden, weight, bias), labels, temperature)
    (expected * upstream).sum().backward()
    assert none is None and got.dtype == torch.float32
    assert torch.allclose(got, expected, atol=1e-6)
    for g, t in zip(grads, (hidden, weight, bias)):
        assert g.dtype == t.dtype and torch.allclose(g, t.grad, atol=1e-5)
    with torch.no_grad():  # what the rollout computes: the same bits, and the entropy
        again, entropy = linear_logprobs(hidden, weight, bias, labels, temperature, with_entropy=True)
    assert torch.equal(again, got.detach())
    assert torch.allclose(entropy, entropy_from_logits(F.linear(hidden, weight, bias).detach(), temperature), atol=1e-6)


def _plain_logprobs_and_entropy(logits, labels, temperature):
    logp = torch.log_softmax(logits.float() / temperature, -1)
    return logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1), -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_differentiable_entropy_matches_autograd_in_both_paths(monkeypatch, temperature):
    """The entropy bonus's gradient, -p (log p + H) / T, alone and beside the log-probs' gradient, equals
    autograd through log_softmax: from the logits (more rows than one chunk) and from the LM head's input."""
    from rlhfkit.ops import logprobs

    torch.manual_seed(0)
    x = (torch.randn(2, 40, 30) * 3).requires_grad_()
    labels, w_lp, w_h = torch.randint(0, 30, (2, 40)), torch.randn(2, 40), torch.randn(2, 40)
    for weights in ((w_lp, w_h), (None, w_h)):
        lp, ent = logprobs_from_logits(x, labels, temperature, with_entropy=True)

        (((lp * weights[0]).sum() if weights[0] is not None else 0) + (ent * weights[1]).sum()).backward()
        got, x.grad = x.grad.clone(), None
        plp, pent = _plain_logprobs_and_entropy(x, labels, temperature)
        (((plp * weights[0]).sum() if weights[0] is not None else 0) + (pent * weights[1]).sum()).backward()
        assert torch.allclose(lp, plp, atol=1e-5) and torch.allclose(ent, pent, atol=1e-4)
        assert torch.allclose(got, x.grad, atol=1e-5)
        x.grad = None

    monkeypatch.setattr(logprobs, "_head_rows", lambda vocab: 3)
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    weight, bias = torch.randn(11, 8, requires_grad=True), torch.randn(11, requires_grad=True)
    labels, w_lp, w_h = torch.randint(0, 11, (2, 5)), torch.randn(2, 5), torch.randn(2, 5)
    lp, ent = linear_logprobs(hidden, weight, bias, labels, temperature, with_entropy=True)
    ((lp * w_lp).sum() + (ent * w_h).sum()).backward()
    grads = [t.grad.clone() for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None
    plp, pent = _plain_logprobs_and_entropy(F.linear(hidden, weight, bias), labels, temperature)
    ((plp * w_lp).sum() + (pent * w_h).sum()).backward()
    assert torch.allclose(ent, pent, atol=1e-5)
    for g, t in zip(grads, (hidden, weight, bias)):
        assert torch.allclose(g, t.grad, atol=1e-5)


def test_linear_logprobs_under_bf16_autocast_equal_the_autocast_logits_path():
    torch.manual_seed(0)
    hidden, weight = torch.randn(2, 6, 16, requires_grad=True), torch.randn(40, 16) * 0.3
    labels = torch.randint(0, 40, (2, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = linear_logprobs(hidden, weight, None, labels)
        expected = logprobs_from_logits(F.linear(hidden, weight), labels)
    assert torch.equal(got, expected)  # the same bf16 matmul, the same float32 softmax
    got.sum().backward()
    grad, hidden.grad = hidden.grad.clone(), None
    expected.sum().backward()
    assert grad.dtype == torch.float32 and torch.allclose(grad, hidden.grad, rtol=1e-2, atol=1e-2)


def test_linear_logprobs_refuse_bad_calls():
    hidden, weight, labels = torch.randn(1, 2, 4, requires_grad=True), torch.randn(5, 4), torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        linear_logprobs(hidden, weight, None, labels, temperature=0.0)
