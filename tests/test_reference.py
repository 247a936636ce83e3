"""One reference abstraction, three kinds: adapters off equals the base model (and leaves the adapters
as they were), a frozen copy stays put while the policy trains, a given model is frozen as given."""

import pytest
import torch

from rlhfkit.models import load_policy
from rlhfkit.models.reference import Reference, frozen_copy
from rlhfkit.models.value_head import ModelWithValueHead

IDS = torch.tensor([[5, 6, 7, 8, 9]])


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def lora_policy():
    torch.manual_seed(0)
    policy = load_policy("tiny-gpt2", lora=True, verbose=False)
    for name, p in policy.model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # adapters that change the output
    return policy.model


def test_adapters_off_equals_the_base_model_and_restores_the_adapters():
    model = lora_policy()
    base = load_policy("tiny-gpt2", verbose=False).model
    ref = Reference.for_policy(model)
    assert ref.kind == "adapters_off" and not ref.separate
    adapted = logits(model)
    assert not torch.allclose(adapted, logits(base), atol=1e-4)
    lora = [p for n, p in model.named_parameters() if "lora_A" in n]
    lora[0].requires_grad_(False)  # one frozen on purpose: it must stay frozen
    with ref.active():
        assert torch.allclose(logits(ref.network), logits(base), atol=1e-5)
    assert torch.equal(logits(model), adapted)
    assert not lora[0].requires_grad and all(p.requires_grad for p in lora[1:])


def test_frozen_copy_stays_while_the_policy_moves():
    policy = load_policy("tiny-gpt2", verbose=False).model
    ref = Reference.for_policy(policy)
    assert ref.kind == "copy" and ref.separate
    assert not any(p.requires_grad for p in ref.network.parameters()) and not ref.network.training
    before = logits(ref.network)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.1)
    with ref.active():
        assert torch.equal(logits(ref.network), before)


def test_given_model_is_frozen_and_a_value_head_wrapper_gives_its_language_model():
    given = ModelWithValueHead(load_policy("tiny-gpt2", verbose=False).model)
    ref = Reference.for_policy(lora_policy(), given=given)
    assert ref.kind == "given" and ref.network is given.pretrained_model
    assert not any(p.requires_grad for p in ref.network.parameters())


def test_adapters_off_reference_equals_a_frozen_copy_of_the_base_in_a_ppo_step():
    """The LoRA trainer's reference log-probs (adapters off) are those of a frozen copy of the base model."""
    from rlhfkit.methods.ppo import PPOConfig, PPOTrainer

    prompts = ["Hello there", "Good morning", "Thank you so much", "What a terrible"]
    config = dict(model="tiny-gpt2", output_dir=None, batch_size=4, mini_batch_size=2, max_new_tokens=5,
                  learning_rate=1e-2, seed=0, ppo_epochs=1)
    trainer = PPOTrainer(PPOConfig(lora=True, **config), dataset=prompts)
    queries = trainer.queries
    trainer.step(queries, trainer.generate(queries), [1.0, 0.0, 1.0, 0.0])  # adapters move off zero
    responses = trainer.generate(queries)
    from rlhfkit.models.forward import response_logprobs

    copy = frozen_copy(load_policy("tiny-gpt2", verbose=False).model)
    with trainer.reference.active():
        off = response_logprobs(trainer.unwrapped.pretrained_model, queries, responses, trainer.tokenizer.pad_token_id)
    expected = response_logprobs(copy, queries, responses, trainer.tokenizer.pad_token_id)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(off, expected))


def test_bad_kinds_are_refused():
    with pytest.raises(ValueError, match="unknown reference kind"):
        Reference("twin", torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="needs the peft model"):
        Reference.adapters_off(torch.nn.Linear(1, 1))
