"""Critic-free online methods: estimators against hand-worked numbers and plain loops, GSPO's sequence
ratio, truncated completions out of the loss, where the KL goes, weighted rewards, GRPO and RLOO end to end."""

import math

import pytest
import torch

from rlhfkit.errors import UserError
from rlhfkit.methods.grpo import GRPOConfig, GRPOTrainer
from rlhfkit.methods.rloo import RLOOConfig, RLOOTrainer
from rlhfkit.objectives.advantages import AdvantageInputs, get_advantage_estimator, group_statistics
from rlhfkit.objectives.policy import clipped_policy_loss

PROMPTS = ["Hello there", "The quick brown fox", "Good morning", "Thank you so much", "I think you are",
           "What a terrible", "My neighbour plays", "Please be kind"]


def e_share(prompts, completions):
    return [c.count("e") / max(len(c), 1) for c in completions]


def inputs(scores, groups, mask=None, **kw):
    scores = torch.tensor(scores)
    mask = torch.ones(len(scores), 3) if mask is None else mask
    last = mask.sum(1).long() - 1
    rewards = torch.zeros_like(mask)
    rewards[torch.arange(len(scores)), last] = scores
    return AdvantageInputs(rewards, scores, mask, group_ids=torch.tensor(groups), **kw)


def test_grpo_hand_worked():
    # group 0: rewards [1, 2, 3] (mean 2, unbiased std 1) -> [-1, 0, 1] / (1 + 1e-4)
    # group 1: rewards [5, 5] (std 0) -> [0, 0]
    adv, returns = get_advantage_estimator("grpo")(inputs([1.0, 2.0, 3.0, 5.0, 5.0], [0, 0, 0, 1, 1]))
    assert returns is None
    assert torch.allclose(adv[:, 0], torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0]) / (1 + 1e-4))
    assert torch.equal(adv[:, 0:1].expand(-1, 3), adv)  # the same advantage on every token
    adv, _ = get_advantage_estimator("grpo")(inputs([1.0, 2.0, 3.0, 5.0, 5.0], [0, 0, 0, 1, 1], scale_rewards="none"))
    assert torch.allclose(adv[:, 0], torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0]))
    dr, _ = get_advantage_estimator("dr_grpo")(inputs([1.0, 2.0, 3.0, 5.0, 5.0], [0, 0, 0, 1, 1]))
    assert torch.equal(dr, adv)
    # batch std of [1, 2, 3, 5, 5]: mean 3.2, unbiased var (4.84 + 1.44 + 0.04 + 3.24 + 3.24) / 4 = 3.2
    adv, _ = get_advantage_estimator("grpo")(inputs([1.0, 2.0, 3.0, 5.0, 5.0], [0, 0, 0, 1, 1], scale_rewards="batch"))
    assert torch.allclose(adv[:, 0], torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0]) / (math.sqrt(3.2) + 1e-4))


def test_rloo_hand_worked():
    # group [1, 2, 6]: leave-one-out means (2+6)/2 = 4, (1+6)/2 = 3.5, (1+2)/2 = 1.5 -> [-3, -1.5, 4.5]
    adv, _ = get_advantage_estimator("rloo")(inputs([1.0, 2.0, 6.0, 4.0], [0, 0, 0, 1], whiten=False))
    assert torch.allclose(adv[:, 0], torch.tensor([-3.0, -1.5, 4.5, 0.0]))  # a group of one has no baseline


def test_group_estimators_match_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(12, generator=g, dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])[torch.randperm(12, generator=g)]
    x = AdvantageInputs(torch.zeros(12, 1, dtype=torch.float64), scores, torch.ones(12, 1), group_ids=groups,
                        whiten=False)
    x.token_rewards[:, 0] = scores
    grpo, _ = get_advantage_estimator("grpo")(x)
    rloo, _ = get_advantage_estimator("rloo")(x)
    for i in range(12):
        mates = [scores[j].item() for j in range(12) if groups[j] == groups[i]]
        others = [scores[j].item() for j in range(12) if groups[j] == groups[i] and j != i]
        mean = sum(mates) / len(mates)
        std = math.sqrt(sum((v - mean) ** 2 for v in mates) / (len(mates) - 1))
        assert grpo[i, 0].item() == pytest.approx((scores[i].item() - mean) / (std + 1e-4), rel=1e-9)
        assert rloo[i, 0].item() == pytest.approx(scores[i].item() - sum(others) / len(others), rel=1e-9)
    total, size, std = group_statistics(scores, groups)
    assert torch.equal(size, torch.full((12,), 4.0, dtype=torch.float64))


def test_reinforce_plus_plus_is_the_whitened_reward_to_go():
    # token rewards [0.1, -0.2, 1.0] and [0.5, 0, pad], gamma 1: reward-to-go [0.9, 0.8, 1.0] and [0.5, 0]
    rewards = torch.tensor([[0.1, -0.2, 1.0], [0.5, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    adv, returns = get_advantage_estimator("reinforce_plus_plus")(AdvantageInputs(rewards, rewards.sum(1), mask))
    assert torch.allclose(returns, torch.tensor([[0.9, 0.8, 1.0], [0.5, 0.0, 0.0]]))
    real = torch.tensor([0.9, 0.8, 1.0, 0.5])
    expected = (real - real.mean()) / real.std()
    assert torch.allclose(adv[mask.bool()], expected, atol=1e-5) and adv[1, 1:].abs().sum() == 0


def test_sequence_level_ratio_is_the_geometric_mean_hand_worked():
    # token log-ratios ln 2 and 0 -> sequence ratio sqrt(2) ~ 1.414 on both tokens; A = 1, clip 0.2:
    # max(-1.414, -1.2) = -1.2 per token -> loss -1.2, both tokens clipped
    logprobs = torch.tensor([[math.log(2.0), 0.0]], requires_grad=True)
    loss, stats = clipped_policy_loss(logprobs, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2),
                                      importance_sampling_level="sequence")
    assert loss.item() == pytest.approx(-1.2) and stats["clipfrac"].item() == 1.0
    loss, _ = clipped_policy_loss(logprobs, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), clip_high=0.5,
                                  importance_sampling_level="sequence")
    assert loss.item() == pytest.approx(-math.sqrt(2.0), rel=1e-6)


def make(cls=GRPOTrainer, config=GRPOConfig, **kw):
    fields = dict(model="tiny-gpt2", output_dir=None, batch_size=8, mini_batch_size=8, gradient_accumulation_steps=2,
                  max_new_tokens=5, learning_rate=1e-3, seed=0, log_every=0)
    fields.update(kw)
    return cls(config(**fields), dataset=PROMPTS)


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-t5"])
def test_grpo_keeps_no_reference_and_no_critic_by_default(model):
    trainer = make(model=model)
    assert trainer.reference is None and trainer.ref_model is None and not trainer.critic
    assert not any(p.requires_grad for p in trainer.unwrapped.v_head.parameters())
    history = trainer.train(e_share, steps=2)
    assert "objective/kl" not in history[-1] and math.isfinite(history[-1]["ppo/loss/policy"])
    assert "ppo/loss/value" not in history[-1] and "frac_reward_zero_std" in history[-1]


def test_groups_share_a_prompt():
    trainer = make(num_generations=4)
    idx = trainer.stream.next()
    assert len(idx) == 8 and idx[:4] == [idx[0]] * 4 and idx[4:] == [idx[4]] * 4 and idx[0] != idx[4]


def test_kl_in_the_loss_and_in_the_reward():
    in_loss = make(kl_penalty="loss", init_kl_coef=0.1, lora=True)
    assert in_loss.reference.kind == "adapters_off"
    stats = in_loss.train(e_share, steps=2)[-1]
    assert "ppo/loss/kl" in stats and stats["objective/kl"] >= 0  # k3
    rloo = make(RLOOTrainer, RLOOConfig)
    stats = rloo.train(e_share, steps=2)[-1]
    assert stats["ppo/mean_non_score_reward"] != 0 and "ppo/loss/kl" not in stats


def test_entropy_bonus_is_the_only_gradient_when_every_advantage_is_zero():
    """A constant reward gives GRPO zero advantages and no KL: without the bonus nothing moves; with it the
    loss is -coef * entropy and the step raises the policy's entropy on the same completions."""
    from rlhfkit.models.forward import forward, make_batch

    def constant(prompts, completions):
        return [1.0] * len(completions)

    def mean_entropy(trainer):
        batch = make_batch(trainer.queries[:8], [[5, 6, 7, 8]] * 8, trainer.tokenizer.pad_token_id, seq2seq=False)
        with torch.no_grad():
            return forward(trainer.model, batch, 1.0, with_values=False, with_entropy=True)[2].mean().item()

    for coef in (0.0, 0.5):
        trainer = make(entropy_coef=coef, ppo_epochs=1, gradient_accumulation_steps=1, learning_rate=1e-2)
        before, entropy_before = [p.detach().clone() for p in trainer.unwrapped.parameters() if p.requires_grad], \
            mean_entropy(trainer)
        stats = trainer.train(constant, steps=1)[-1]
        after = [p.detach() for p in trainer.unwrapped.parameters() if p.requires_grad]
        moved = any(not torch.equal(a, b) for a, b in zip(before, after))
        if coef == 0:
            assert not moved and "ppo/loss/entropy" not in stats
            continue
        assert moved and stats["ppo/loss/policy"] == 0.0
        assert stats["ppo/loss/total"] == pytest.approx(-coef * stats["ppo/loss/entropy"], rel=1e-5)
        assert mean_entropy(trainer) > entropy_before + 1e-4


def test_negative_entropy_coef_is_refused():
    with pytest.raises(UserError, match="entropy_coef must be >= 0"):
        make(entropy_coef=-0.1)


def test_truncated_completions_get_no_gradient():
    trainer = make(mask_truncated_completions=True, ppo_epochs=1)
    queries = trainer.queries[:8]
    responses = [[5, 6, 7, 8, 9]] * 4 + [[5, 6, trainer.tokenizer.eos_token_id]] * 4  # the first four hit the limit
    scores = [1.0, 0.0, 1.0, 0.0] * 2
    before = [p.detach().clone() for p in trainer.unwrapped.parameters() if p.requires_grad]
    trainer.step(queries, responses, scores, group_ids=[0, 0, 1, 1, 2, 2, 3, 3])
    moved = any(not torch.equal(a, b) for a, b in zip(before, (p for p in trainer.unwrapped.parameters() if p.requires_grad)))
    assert moved  # the completed ones train
    only_cut = make(mask_truncated_completions=True, ppo_epochs=1)
    before = [p.detach().clone() for p in only_cut.unwrapped.parameters() if p.requires_grad]
    only_cut.step(queries[:4], responses[:4], [1.0, 0.0, 1.0, 0.0], group_ids=[0, 0, 1, 1])
    after = [p for p in only_cut.unwrapped.parameters() if p.requires_grad]
    assert all(torch.equal(a, b) for a, b in zip(before, after))  # nothing but truncated: no update


def test_the_logged_reward_is_the_weighted_sum_training_sees(monkeypatch):
    import sys
    import types

    module = types.ModuleType("online_test_rewards")
    module.e_share = e_share
    module.length = lambda p, c: [len(x) / 10 for x in c]
    monkeypatch.setitem(sys.modules, "online_test_rewards", module)
    from rlhfkit.rewards import get_reward

    reward = get_reward("0.5*online_test_rewards:e_share+2*online_test_rewards:length")
    trainer = make()
    seen = []
    step = trainer.step
    trainer.step = lambda q, r, s, **k: seen.append(list(s)) or step(q, r, s, **k)
    row = trainer.train(reward, steps=1)[-1]
    assert row["env/reward_mean"] == pytest.approx(sum(seen[0]) / len(seen[0]))
    parts = row["rewards/online_test_rewards:e_share/mean"], row["rewards/online_test_rewards:length/mean"]
    assert row["env/reward_mean"] == pytest.approx(0.5 * parts[0] + 2 * parts[1])


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="compares samples of one prompt: set num_generations to 2"):
        make(num_generations=1)
    with pytest.raises(UserError, match="multiple of num_generations"):
        make(num_generations=3)
    with pytest.raises(UserError, match="GRPO has no critic"):
        make(advantage_estimator="gae")
    with pytest.raises(UserError, match="unknown advantage estimator 'grpo2'"):
        make(advantage_estimator="grpo2")


def test_grpo_and_rloo_commands(tmp_path, monkeypatch):
    import json
    import sys
    import types

    from rlhfkit.cli import main

    module = types.ModuleType("cli_online_rewards")
    module.e_share = e_share
    monkeypatch.setitem(sys.modules, "cli_online_rewards", module)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    for name in ("grpo", "rloo"):
        out = tmp_path / name
        assert main([name, "--model", "tiny-gpt2", "--prompts", str(prompts), "--reward", "cli_online_rewards:e_share",
                     "--steps", "1", "--batch-size", "8", "--max-new-tokens", "4", "--out", str(out)]) == 0
        assert (out / "model" / "adapter_config.json").exists() and not (out / "model" / "value_head.safetensors").exists()
        assert (out / "config.yaml").read_text().count(f"advantage_estimator: {name}") == 1


def test_grpo_killed_mid_run_resumes_to_the_uninterrupted_result(tmp_path):
    """`rlhfkit grpo` killed (SIGKILL) after its second checkpoint, then `--resume`d: the same final adapter
    and metrics as a run that was never interrupted."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    rewards = tmp_path / "kill_rewards.py"
    rewards.write_text("import time\n\ndef e_share(prompts, completions):\n    time.sleep(0.3)\n"
                       "    return [c.count('e') / max(len(c), 1) for c in completions]\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "RLHFKIT_TUNED_MALLOC": "0"}

    def command(out, *extra):
        return [sys.executable, "-m", "rlhfkit.cli", "grpo", "--model", "tiny-gpt2", "--prompts", str(prompts),
                "--reward", "kill_rewards:e_share", "--steps", "4", "--batch-size", "8", "--max-new-tokens", "4",
                "--save-every", "1", "--seed", "5", "--out", str(out), *extra]

    subprocess.run(command(tmp_path / "whole"), env=env, check=True, capture_output=True)
    run = subprocess.Popen(command(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (tmp_path / "killed" / "checkpoints" / "step-2").exists():
        assert run.poll() is None and time.time() < deadline, "the run ended before its second checkpoint"
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert not (tmp_path / "killed" / "model").exists()
    subprocess.run(command(tmp_path / "killed", "--resume", str(tmp_path / "killed")), env=env, check=True,
                   capture_output=True)
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "whole" / "model" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def rows(folder):
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")} for line in lines]
    assert rows(tmp_path / "whole") == rows(tmp_path / "killed")
