"""The pure pieces of the restructured house against hand-worked numbers: loss aggregation, clip-higher,
the registries, one whiten across processes, the KL estimators' names, the LM loss against transformers'."""

import math

import pytest
import torch

from rlhfkit.objectives.advantages import (
    ADVANTAGE_ESTIMATORS, AdvantageInputs, get_advantage_estimator, masked_gae, shape_token_rewards,
)
from rlhfkit.objectives.aggregation import LossScale, aggregate
from rlhfkit.objectives.lm import nll_loss, sequence_logprobs
from rlhfkit.objectives.policy import clipped_policy_loss, get_policy_loss
from rlhfkit.ops.kl import kl_estimate
from rlhfkit.ops.masked import masked_whiten

LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


@pytest.mark.parametrize("mode, expected", [
    ("token-mean", (1 + 2 + 3 + 4) / 4),            # every real token counts once
    ("seq-mean-token-mean", (6 / 3 + 4 / 1) / 2),   # each sequence's mean, then their mean
    ("seq-mean-token-sum", (6 + 4) / 2),            # each sequence's sum, then their mean
    ("seq-mean-token-sum-norm", (6 + 4) / (2 * 3)),  # Dr. GRPO: sums over sequences x horizon (3)
    ("token-sum", 10.0),
])
def test_aggregation_hand_worked(mode, expected):
    assert aggregate(LOSS, MASK, mode).item() == pytest.approx(expected)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_micro_batches_with_the_whole_batch_scale_add_up_to_the_whole(mode):
    g = torch.Generator().manual_seed(0)
    loss = torch.randn(6, 5, generator=g)
    mask = (torch.rand(6, 5, generator=g) > 0.3).long()
    mask[:, 0] = 1
    scale = LossScale.of(mask, horizon=5)
    parts = sum(aggregate(loss[i:i + 2], mask[i:i + 2], mode, scale) for i in range(0, 6, 2))
    assert parts.item() == pytest.approx(aggregate(loss, mask, mode).item(), rel=1e-6)


def test_unknown_aggregation_names_the_choices():
    with pytest.raises(ValueError, match="unknown loss aggregation 'mean'.*token-mean"):
        aggregate(LOSS, MASK, "mean")


def test_clip_higher_hand_worked():
    # ratios 1.5 (A = +1) and 0.5 (A = -1); clip_low 0.2, clip_high 0.28 (DAPO)
    # token 0: max(-1.5, -1.28) = -1.28 (clipped at 1 + 0.28);  token 1: max(0.5, 0.8) = 0.8 (clipped at 1 - 0.2)
    logprobs = torch.log(torch.tensor([[1.5, 0.5]])).requires_grad_()
    loss, stats = clipped_policy_loss(logprobs, torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]), torch.ones(1, 2),
                                      clip_low=0.2, clip_high=0.28)
    assert loss.item() == pytest.approx((-1.28 + 0.8) / 2)
    assert stats["clipfrac"].item() == 1.0
    symmetric, _ = clipped_policy_loss(logprobs, torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]), torch.ones(1, 2),
                                       clip_low=0.2)
    assert symmetric.item() == pytest.approx((-1.2 + 0.8) / 2)


def test_registries_name_their_choices():
    assert get_policy_loss("ppo") is clipped_policy_loss
    assert get_advantage_estimator("gae").critic
    with pytest.raises(ValueError, match="unknown advantage estimator 'nope'; choose one of .*gae"):
        get_advantage_estimator("nope")
    with pytest.raises(ValueError, match="already registered"):
        ADVANTAGE_ESTIMATORS.register("gae")(lambda x: x)


def test_shape_token_rewards_puts_the_score_on_the_last_token():
    # scores [1, 2]; lengths 3 and 1; kl 0.5 everywhere with beta 0.1 -> -0.05 per real token
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    kl = torch.full((2, 3), 0.5) * mask
    rewards, non_score = shape_token_rewards(torch.tensor([1.0, 2.0]), mask, kl, 0.1)
    assert torch.allclose(rewards, torch.tensor([[-0.05, -0.05, 0.95], [1.95, 0.0, 0.0]]))
    assert torch.allclose(non_score.sum(1), torch.tensor([-0.15, -0.05]))


def test_gae_estimator_whitens_what_masked_gae_gives():
    g = torch.Generator().manual_seed(2)
    rewards, values = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    adv, ret = get_advantage_estimator("gae")(AdvantageInputs(rewards, rewards.sum(1), mask, values, gamma=1.0, lam=0.9))
    raw, raw_ret = masked_gae(rewards, values, mask, 1.0, 0.9)
    assert torch.equal(ret, raw_ret) and torch.allclose(adv, masked_whiten(raw, mask))
    with pytest.raises(ValueError, match="needs the critic"):
        get_advantage_estimator("gae")(AdvantageInputs(rewards, rewards.sum(1), mask))


def test_whiten_with_a_cross_process_reduce_equals_whitening_the_whole_batch():
    """Two "processes" holding half a batch each, whose reduce adds both halves' sums, whiten as one batch."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64)
    mask = (torch.rand(4, 6, generator=g) > 0.4).long()
    halves = [(x[:2], mask[:2]), (x[2:], mask[2:])]

    def sums(part, m):
        m = m.to(part.dtype)
        return torch.stack([(part * m).sum(), (part * part * m).sum(), m.sum()])

    total = sums(*halves[0]) + sums(*halves[1])
    whole = masked_whiten(x, mask)
    for i, (part, m) in enumerate(halves):
        got = masked_whiten(part, m, reduce=lambda t: total)
        assert torch.allclose(got, whole[2 * i:2 * i + 2], atol=1e-12)


def test_kl_estimator_aliases_follow_verl():
    lp, ref = torch.tensor([-0.2, -1.0]), torch.tensor([-0.5, -0.7])
    for alias, name in (("kl", "k1"), ("mse", "k2"), ("low_var_kl", "k3")):
        assert torch.equal(kl_estimate(lp, ref, alias), kl_estimate(lp, ref, name))


def test_nll_and_sequence_logprobs_hand_worked():
    logprobs = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.1, 0.9, 0.9]]))
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert nll_loss(logprobs, mask).item() == pytest.approx(-(math.log(0.5) + math.log(0.25) + math.log(0.1)) / 3)
    assert torch.allclose(sequence_logprobs(logprobs, mask), torch.tensor([math.log(0.125), math.log(0.1)]))
    assert torch.allclose(sequence_logprobs(logprobs, mask, average=True),
                          torch.tensor([math.log(0.125) / 2, math.log(0.1)]))


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-t5"])
def test_sft_token_nll_equals_transformers_own_loss(model):
    from rlhfkit.methods.sft import SFTExample, _collate, _token_logprobs, encode_examples
    from rlhfkit.models import load_policy

    policy = load_policy(model, verbose=False)
    encoded, _ = encode_examples(policy.tokenizer, [SFTExample("Good morning", "how are you today?"),
                                                    SFTExample("Hi", "thank you so much")], policy.seq2seq, 64)
    batch = _collate(encoded, policy.tokenizer.pad_token_id, policy.seq2seq, None)
    with torch.no_grad():
        expected = policy.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                labels=batch["labels"]).loss
        logprobs, mask = _token_logprobs(policy.model, batch, policy.seq2seq)
    assert nll_loss(logprobs, mask).item() == pytest.approx(expected.item(), rel=1e-5)
