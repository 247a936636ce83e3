"""PPO learns on CPU: a toy reward (the share of one target token) rises clearly while KL stays finite."""

import math

import pytest

from rlhfkit.ppo import PPOConfig, PPOTrainer

PROMPTS = ["Hello there", "The quick brown fox", "Good morning", "Thank you so much", "I think you are",
           "What a terrible", "My neighbour plays", "Please be kind", "Could you write", "We should talk",
           "Sorry, I did not", "Have a wonderful", "The weather is", "My landlord", "The referee", "Numbers"]


def target_token_reward(tokenizer, token: str):
    """Share of the completion's tokens that are `token`."""
    target = tokenizer.convert_tokens_to_ids(token)

    def reward(prompts, completions):
        out = []
        for text in completions:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            out.append(sum(t == target for t in ids) / max(len(ids), 1))
        return out

    return reward


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-t5"])
def test_mean_reward_rises_with_finite_kl(model):
    config = PPOConfig(model=model, lora=False, output_dir=None, batch_size=32, mini_batch_size=8, ppo_epochs=4,
                       max_new_tokens=8, min_new_tokens=8, learning_rate=3e-3, init_kl_coef=0.01, adaptive_kl=False,
                       steps=30, seed=0, log_every=0)
    trainer = PPOTrainer(config, dataset=PROMPTS)
    # a frequent token the random model already emits now and then: "e"
    history = trainer.train(target_token_reward(trainer.tokenizer, "e"), steps=config.steps)
    rewards = [h["env/reward_mean"] for h in history]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    print(f"{model}: reward {first:.4f} -> {last:.4f}; kl {history[-1]['objective/kl']:.3f}")
    assert last > max(3 * first, first + 0.1)
    assert all(math.isfinite(h["objective/kl"]) for h in history)
    assert history[-1]["objective/kl"] < 50
