"""A run stopped after step k and resumed equals an uninterrupted run at step n: weights and metrics."""

import json

import pytest
import torch

from rlhfkit.ppo import PPOConfig, PPOTrainer

PROMPTS = ["Hello there", "The quick brown fox", "Good morning", "Thank you so much", "I think you are",
           "What a terrible", "My neighbour plays", "Please be kind", "Could you write", "We should talk"]


def e_share(prompts, completions):
    return [c.count("e") / max(len(c), 1) for c in completions]


def config(folder, model, lora, **extra):
    # 10 prompts in batches of 4: the resumed part crosses an epoch boundary (reshuffle)
    return PPOConfig(model=model, lora=lora, output_dir=str(folder), batch_size=4, mini_batch_size=2, ppo_epochs=2,
                     max_new_tokens=5, learning_rate=1e-3, init_kl_coef=0.1, normalize_scores=True,
                     lr_schedule="linear", steps=4, seed=3, log_every=0, **extra)


def metrics(folder):
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def trainable(trainer):
    return {n: p.detach().clone() for n, p in trainer.unwrapped.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("model,lora", [("tiny-gpt2", True), ("tiny-t5", False)])
def test_stop_and_resume_equals_uninterrupted(tmp_path, model, lora):
    whole = PPOTrainer(config(tmp_path / "whole", model, lora), dataset=PROMPTS)
    whole.train(e_share, steps=4)

    first = PPOTrainer(config(tmp_path / "split", model, lora), dataset=PROMPTS)
    first.train(e_share, steps=2)  # stops after step 2 with a checkpoint
    del first
    resumed = PPOTrainer.resume(tmp_path / "split", dataset=PROMPTS)
    assert resumed.step_count == 2
    resumed.train(e_share, steps=4)

    a, b = trainable(whole), trainable(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[n], b[n]) for n in a), [n for n in a if not torch.equal(a[n], b[n])]
    assert metrics(tmp_path / "whole") == metrics(tmp_path / "split")
    assert [h["step"] for h in resumed.history] == [1, 2, 3, 4]
    assert resumed.kl_ctl.value == whole.kl_ctl.value


def test_resume_discards_logs_written_after_the_checkpoint(tmp_path):
    trainer = PPOTrainer(config(tmp_path / "run", "tiny-gpt2", True, save_every=1), dataset=PROMPTS)
    trainer.train(e_share, steps=3)
    resumed = PPOTrainer.resume(tmp_path / "run" / "checkpoints" / "step-2", dataset=PROMPTS)
    assert resumed.step_count == 2
    assert [r["step"] for r in metrics(tmp_path / "run")] == [1, 2]
