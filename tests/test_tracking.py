"""`report_to` on every trainer, offline: TensorBoard event files read back, Trackio's local database read
back, the shared metric names in both loops, and every bad value against its message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhfkit.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
ROWS = [{"prompt": f"Say something kind number {i}", "completion": f"You are wonderful, friend {i}."} for i in range(8)]
RANKS = [{"prompt": f"Reply to message {i}", "completions": ["thank you so much", "you idiot", "that is great"],
          "ranks": [1, 3, 2]} for i in range(8)]
PROMPTS = ["Hello there", "The quick brown fox", "Good morning", "Thank you so much"]
SHARED = {"train/loss", "train/learning_rate"}


def e_share(prompts, completions):
    return [c.count("e") / max(len(c), 1) for c in completions]


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the TensorBoard event files under run_dir/logs, read back with TensorBoard itself."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list((run_dir / "logs").rglob("events.out.tfevents.*"))
    assert files, f"no event file under {run_dir / 'logs'}"
    out: dict[str, list] = {}
    for f in files:
        acc = EventAccumulator(str(f))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


@pytest.fixture
def data(tmp_path):
    sft, rank = tmp_path / "sft.jsonl", tmp_path / "rank.jsonl"
    sft.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    rank.write_text("".join(json.dumps(r) + "\n" for r in RANKS))
    return str(sft), str(rank)


def test_tensorboard_from_every_loop_with_shared_names(tmp_path, data):
    from rlhfkit.methods.grpo import GRPOConfig, GRPOTrainer
    from rlhfkit.methods.ppo import PPOConfig, PPOTrainer
    from rlhfkit.methods.reward import RewardConfig, train_reward_model
    from rlhfkit.methods.sft import SFTConfig, train_sft

    train_sft(SFTConfig(model="tiny-gpt2", data=data[0], output_dir=str(tmp_path / "sft"), batch_size=4, epochs=1,
                        learning_rate=1e-3, log_every=1, eval_fraction=0.25, report_to="tensorboard"), progress=False)
    train_reward_model(RewardConfig(model="tiny-bert", data=data[1], output_dir=str(tmp_path / "reward"), epochs=1,
                                    batch_size=4, log_every=1, report_to="tensorboard"), progress=False)
    online = dict(model="tiny-gpt2", batch_size=4, mini_batch_size=4, max_new_tokens=4, steps=2, log_every=0,
                  report_to="tensorboard")
    PPOTrainer(PPOConfig(output_dir=str(tmp_path / "ppo"), **online), dataset=PROMPTS).train(e_share)
    GRPOTrainer(GRPOConfig(output_dir=str(tmp_path / "grpo"), num_generations=2, gradient_accumulation_steps=1,
                           **online), dataset=PROMPTS).train(e_share)

    sft, reward, ppo, grpo = (scalars(tmp_path / n) for n in ("sft", "reward", "ppo", "grpo"))
    for name, tags in (("sft", sft), ("reward", reward), ("ppo", ppo), ("grpo", grpo)):
        assert SHARED <= set(tags), (name, sorted(tags))
    # the numbers are the ones in metrics.jsonl, at their steps
    rows = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train/loss" in r]
    assert [s for s, _ in sft["train/loss"]] == [r["step"] for r in steps]
    assert [v for _, v in sft["train/loss"]] == pytest.approx([r["train/loss"] for r in steps], rel=1e-6)
    assert "eval/loss" in sft and "eval/accuracy" in reward and "train/accuracy" in reward
    ppo_rows = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [v for _, v in ppo["train/loss"]] == pytest.approx([r["ppo/loss/total"] for r in ppo_rows], rel=1e-6)
    assert [v for _, v in ppo["train/reward"]] == pytest.approx([r["env/reward_mean"] for r in ppo_rows], rel=1e-6)
    assert {"objective/kl", "env/reward_mean", "train/kl"} <= set(ppo)
    assert "train/reward" in grpo


TRACKIO_SCRIPT = """
import json, sys
from rlhfkit.methods.sft import SFTConfig, train_sft
train_sft(SFTConfig(model="tiny-gpt2", data=sys.argv[1], output_dir=sys.argv[2], batch_size=4, epochs=1,
                    learning_rate=1e-3, log_every=1, report_to="trackio"), progress=False)
from trackio.sqlite_storage import SQLiteStorage
runs = SQLiteStorage.get_runs("rlhfkit")
print("RESULT " + json.dumps({"runs": runs, "logs": SQLiteStorage.get_logs("rlhfkit", runs[-1])}))
"""


def test_trackio_local_mode(tmp_path, data):
    """A subprocess: Trackio fixes its folder (TRACKIO_DIR) when first imported."""
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", TRACKIO_SCRIPT, data[0], str(tmp_path / "sft")], env=env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["runs"] == ["sft-sft"]
    logged = [row for row in result["logs"] if "train/loss" in row]
    rows = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/loss"] for r in logged] == pytest.approx([r["train/loss"] for r in rows if "train/loss" in r])
    assert all("train/learning_rate" in r for r in logged)
    assert list((tmp_path / "trackio").glob("*.db")), "the local database is in TRACKIO_DIR"


def test_report_to_values():
    from rlhfkit.training.tracking import trackers

    assert trackers("none") == [] and trackers(None) == []
    assert trackers("tensorboard") == ["tensorboard"]
    assert trackers("tensorboard, trackio") == ["tensorboard", "trackio"]
    with pytest.raises(UserError, match="'comet' is not a tracker; use none, tensorboard, trackio, wandb, mlflow"):
        trackers("comet")
    with pytest.raises(UserError, match="'none' cannot be combined"):
        trackers("none,tensorboard")


@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_a_tracker_that_is_not_installed_says_how_to_install_it(name, monkeypatch):
    import importlib.util

    from rlhfkit.training import tracking

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == name else real(n, *a))
    with pytest.raises(UserError, match=f"--report-to {name} needs the {name} package, which is not installed; "
                                        f"run: pip install {name}"):
        tracking.trackers(name)


def test_every_trainer_has_report_to_and_push_to_hub():
    from rlhfkit.cli import build_parser

    parser = build_parser()
    for command in ("sft", "reward", "ppo", "grpo", "rloo"):
        args = parser.parse_args([command, "--report-to", "tensorboard", "--push-to-hub", "me/model"])
        assert args.report_to == "tensorboard" and args.push_to_hub == "me/model", command


def test_a_bad_tracker_stops_before_training(tmp_path, data):
    from rlhfkit.methods.sft import SFTConfig, train_sft

    with pytest.raises(UserError, match="not a tracker"):
        train_sft(SFTConfig(model="tiny-gpt2", data=data[0], output_dir=str(tmp_path / "x"), report_to="nope"),
                  progress=False)
    assert not (tmp_path / "x" / "model.safetensors").exists()
