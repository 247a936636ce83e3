"""PPO learns on CPU: a toy reward (the share of the letter "e") rises clearly while KL stays finite."""

import math

import pytest

from rlhfkit.ppo import PPOConfig, PPOTrainer

PROMPTS = ["Hello there", "The quick brown fox", "Good morning", "Thank you so much", "I think you are",
           "What a terrible", "My neighbour plays", "Please be kind", "Could you write", "We should talk",
           "Sorry, I did not", "Have a wonderful", "The weather is", "My landlord", "The referee", "Numbers"]


def e_share(prompts, completions):
    """Toy reward: the share of the letter "e" among the completion's non-space characters."""
    out = []
    for text in completions:
        chars = [c for c in text if not c.isspace()]
        out.append(sum(c == "e" for c in chars) / max(len(chars), 1))
    return out


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-t5"])
def test_mean_reward_rises_with_finite_kl(model):
    config = PPOConfig(model=model, lora=False, output_dir=None, batch_size=16, mini_batch_size=8, ppo_epochs=4,
                       max_new_tokens=8, min_new_tokens=8, learning_rate=5e-3, init_kl_coef=0.01, adaptive_kl=False,
                       steps=15, seed=0, log_every=0)
    trainer = PPOTrainer(config, dataset=PROMPTS)
    history = trainer.train(e_share, steps=config.steps)
    rewards = [h["env/reward_mean"] for h in history]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    print(f"{model}: reward {first:.4f} -> {last:.4f}; kl {history[-1]['objective/kl']:.3f}")
    print([round(r, 3) for r in rewards], [round(h["objective/kl"], 2) for h in history])
    assert last > 1.8 * first and last > first + 0.05
    assert all(math.isfinite(h["objective/kl"]) for h in history)
    assert history[-1]["objective/kl"] < 50
