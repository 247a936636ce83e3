"""The supervised loop (SFT and reward models): accumulation gives the batch's gradient, a run resumed
from a checkpoint ends where the uninterrupted run ends, the loop runs on accelerate."""

import json
import shutil

import pytest
import torch

from rlhfkit.methods.reward import RewardConfig, train_reward_model
from rlhfkit.methods.sft import SFTConfig, train_sft

ROWS = [{"prompt": f"Say something kind number {i}", "completion": f"You are wonderful, friend {i}."} for i in range(12)]
RANKS = [{"prompt": f"Reply to message {i}", "completions": ["thank you so much", "you idiot", "that is great"],
          "ranks": [1, 3, 2]} for i in range(12)]


@pytest.fixture
def files(tmp_path):
    sft, rank = tmp_path / "sft.jsonl", tmp_path / "rank.jsonl"
    sft.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    rank.write_text("".join(json.dumps(r) + "\n" for r in RANKS))
    return str(sft), str(rank)


def weights(folder, seq_cls=False):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def sft(folder, data, **kw):
    config = SFTConfig(model="tiny-gpt2", data=data, output_dir=str(folder), epochs=2, batch_size=4,
                       learning_rate=1e-3, warmup_ratio=0.0, log_every=1, **kw)
    return train_sft(config, progress=False)


def reward(folder, data, **kw):
    config = RewardConfig(model="tiny-bert", data=data, output_dir=str(folder), epochs=2, batch_size=6,
                          learning_rate=1e-3, eval_fraction=0.0, group_by_prompt=False, log_every=1, **kw)
    return train_reward_model(config, progress=False)


def first_step_gradients(task, model, accumulation):
    """The gradients of the loop's first optimisation step over all 12 examples."""
    from rlhfkit.training.supervised import LoopSettings, SupervisedLoop

    for m in model.modules():  # dropout off: the two runs must see the same network
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    loop = SupervisedLoop(model, LoopSettings(1e-3, gradient_accumulation_steps=accumulation), [[list(range(12))]],
                          "unused")
    grads = []
    step = loop.optimizer.step
    loop.optimizer.step = lambda *a, **k: grads.append([p.grad.clone() for p in model.parameters()]) or step(*a, **k)
    stats = loop.train_step(task, list(range(12)))
    return grads[0], stats


def sft_task():
    from rlhfkit.methods.sft import SFTExample, _SFTTask, encode_examples
    from rlhfkit.models import load_policy

    torch.manual_seed(0)
    policy = load_policy("tiny-gpt2", verbose=False)
    encoded, _ = encode_examples(policy.tokenizer, [SFTExample(r["prompt"], r["completion"] * (1 + i % 3))
                                                    for i, r in enumerate(ROWS)], False, 64)
    return _SFTTask(encoded, policy.tokenizer.pad_token_id, False, None), policy.model


def reward_task():
    from rlhfkit.data import Preference
    from rlhfkit.methods.reward import _PairTask, encode_pairs, load_reward_backbone

    model, tokenizer = load_reward_backbone("tiny-bert", seed=0)
    pairs = [Preference(r["prompt"], "thank you so much" + " and more" * (i % 3), "you idiot") for i, r in enumerate(RANKS)]
    return _PairTask(encode_pairs(tokenizer, pairs, 64), tokenizer.pad_token_id, 0.0), model


@pytest.mark.parametrize("make_task", [sft_task, reward_task])
def test_accumulation_gives_the_batch_gradient(make_task):
    """Micro-batches of unequal token counts: each is divided by the whole batch's units, so the sum is the batch's."""
    whole, stats = first_step_gradients(*make_task(), accumulation=1)
    parts, parts_stats = first_step_gradients(*make_task(), accumulation=3)
    for g, h in zip(whole, parts):
        assert torch.allclose(g, h, rtol=1e-5, atol=1e-7)
    assert stats["loss"] == pytest.approx(parts_stats["loss"], rel=1e-6)


@pytest.mark.parametrize("train", [sft, reward])
def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(tmp_path, files, train):
    data = files[0] if train is sft else files[1]
    train(tmp_path / "whole", data)
    train(tmp_path / "split", data, save_every=2)
    # stop after step 2: drop what came later, then resume
    for later in (tmp_path / "split" / "checkpoints").glob("step-*"):
        if int(later.name.split("-")[1]) > 2:
            shutil.rmtree(later)
    (tmp_path / "split" / "model.safetensors").unlink()
    train(tmp_path / "split", data, save_every=2, resume=True)
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)

    def rows(folder):
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]
    assert rows(tmp_path / "whole") == rows(tmp_path / "split")


def test_the_loop_runs_on_accelerate(tmp_path, files, monkeypatch):
    from rlhfkit.training.runtime import Runtime

    prepared = []
    original = Runtime.prepare_model_and_optimizer
    monkeypatch.setattr(Runtime, "prepare_model_and_optimizer",
                        lambda self, m, o: prepared.append(type(o).__name__) or original(self, m, o))
    sft(tmp_path / "run", files[0], max_grad_norm=None)
    assert prepared == ["AdamW"]
