"""Two processes on the CPU (gloo), started by `accelerate launch` with the shipped DDP config, against one.

- Same global batch, same numbers: SFT and the reward model (a batch of 4 rows / 6 pairs split 2 ways)
  and PPO, GRPO and RLOO (4 completions per process against 8 in one) give the per-step losses and the
  final weights of the 1-process run, within the float tolerances below (the only difference is the
  order in which the gradient all-reduce adds up). Dropout is off and the online runs use fixed
  responses (tests/dist_driver.py): dropout masks and sampling draws are per process and per batch
  shape, so they cannot match across world sizes; everything downstream of them is compared.
- Stopped and resumed: a 2-process run stopped after a checkpoint, then resumed by a new launch,
  ends bit for bit where the uninterrupted 2-process run ends (weights and metrics), with dropout on
  (SFT) and real sampling (PPO), so the per-process RNG states are restored too. The PPO run is
  stopped by killing process 1 outright: the launcher takes the run down (no hang).
- Processes that disagree (a data file missing on one, different data) stop with one clear error on
  every process, before any collective.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import dist_driver  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DDP = ROOT / "configs" / "accelerate" / "ddp.yaml"
ROWS = [{"prompt": f"Say something kind number {i}", "completion": f"You are wonderful, friend {i}." + " Yes." * (i % 3)}
        for i in range(12)]
RANKS = [{"prompt": f"Reply to message {i}", "completions": ["thank you so much" + " and more" * (i % 3), "you idiot",
                                                             "that is great"], "ranks": [1, 3, 2]} for i in range(8)]
LOSS_RTOL, LOSS_ATOL = 1e-5, 1e-6  # per-step losses (PPO's total is a small difference of larger terms)
WEIGHT_ATOL = 5e-5  # final weights, absolute (learning rates 1e-3: 5% of one step's size)
# the reward head's bias has a gradient of exactly 0 (a reward difference cancels it): Adam turns the
# rounding noise of that 0 into steps of +-learning_rate whose sign differs with the summation order
NO_GRADIENT = {"classifier.bias"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(jobs: list[dict], folder: Path, name: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2 dist_driver.py SPEC`."""
    spec = folder / f"{name}.json"
    spec.write_text(json.dumps({"jobs": jobs}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file", str(DDP),
           "--num_processes", "2", "--main_process_port", str(free_port()), "--monitor_interval", "0.5",
           str(Path(dist_driver.__file__)), str(spec)]
    start = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=folder)
    (folder / f"{name}.log").write_text(proc.stdout + proc.stderr)
    print(f"{name}: {time.time() - start:.1f}s, rc {proc.returncode}")
    return proc


def data_files(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    files = {"sft": folder / "sft.jsonl", "rank": folder / "rank.jsonl", "prompts": folder / "prompts.jsonl"}
    files["sft"].write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    files["rank"].write_text("".join(json.dumps(r) + "\n" for r in RANKS))
    files["prompts"].write_text("".join(json.dumps({"prompt": p}) + "\n" for p in dist_driver.PROMPTS))
    return {k: str(v) for k, v in files.items()}


def configs(files: dict, world: int) -> dict:
    """Each trainer's config for a world of `world` processes: the same global batch either way."""
    online = dict(prompts=files["prompts"], max_new_tokens=5, learning_rate=1e-3, steps=3, seed=3, log_every=0,
                  samples_per_step=2, batch_size=8 // world, mini_batch_size=8 // world, gradient_accumulation_steps=1)
    return {
        "sft": dict(model="tiny-gpt2", data=files["sft"], epochs=2, batch_size=4, learning_rate=1e-3, warmup_ratio=0.0,
                    log_every=1),
        "reward": dict(model="tiny-bert", data=files["rank"], epochs=2, batch_size=6, learning_rate=1e-3,
                       eval_fraction=0.25, group_by_prompt=False, log_every=1),
        "ppo": dict(online, model="tiny-gpt2", lora=True, ppo_epochs=2, init_kl_coef=0.1, normalize_scores=True,
                    lr_schedule="linear"),
        "grpo": dict(online, model="tiny-gpt2", lora=True, num_generations=2, ppo_epochs=2, kl_penalty="loss"),
        "rloo": dict(online, model="tiny-t5", lora=False, num_generations=2, ppo_epochs=1),
    }


KINDS = ["sft", "reward", "ppo", "grpo", "rloo"]


def same_batch_jobs(files, root: Path, world: int) -> list[dict]:
    return [{"kind": k, "out": str(root / f"{k}-{world}p"), "config": c, "zero_dropout": True, "fixed_responses": True}
            for k, c in configs(files, world).items()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The 2-process runs of every trainer (one launch), and the same runs in this process."""
    root = tmp_path_factory.mktemp("dist")
    files = data_files(root / "data")
    proc = launch(same_batch_jobs(files, root, 2), root, "two")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    for job in same_batch_jobs(files, root, 1):
        dist_driver.run_job(job)
    return root


def model_file(folder: Path) -> dict:
    from safetensors.torch import load_file

    for sub in (folder, folder / "model"):
        for name in ("model.safetensors", "adapter_model.safetensors"):
            if (sub / name).exists():
                weights = load_file(str(sub / name))
                if (sub / "value_head.safetensors").exists():
                    weights.update({f"v_head.{k}": v for k, v in load_file(str(sub / "value_head.safetensors")).items()})
                return weights
    raise AssertionError(f"no saved model in {folder}")


def metric_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]


LOSS_KEYS = {"sft": ["train/loss"], "reward": ["train/loss", "train/accuracy"],
             "ppo": ["ppo/loss/total", "ppo/loss/policy", "ppo/loss/value", "env/reward_mean", "objective/kl"],
             "grpo": ["ppo/loss/total", "ppo/loss/kl", "env/reward_mean"],
             "rloo": ["ppo/loss/total", "env/reward_mean"]}


@pytest.mark.parametrize("kind", KINDS)
def test_two_processes_match_one(runs, kind):
    one, two = runs / f"{kind}-1p", runs / f"{kind}-2p"
    rows1 = [r for r in metric_rows(one) if any(k in r for k in LOSS_KEYS[kind])]
    rows2 = [r for r in metric_rows(two) if any(k in r for k in LOSS_KEYS[kind])]
    assert len(rows1) == len(rows2) > 0
    for a, b in zip(rows1, rows2):
        for key in LOSS_KEYS[kind]:
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=LOSS_RTOL, abs=LOSS_ATOL), (kind, a["step"], key)
    w1, w2 = model_file(one), model_file(two)
    assert w1.keys() == w2.keys()
    w1, w2 = ({k: v for k, v in w.items() if k not in NO_GRADIENT} for w in (w1, w2))
    worst = max((w1[k].float() - w2[k].float()).abs().max().item() for k in w1)
    moved = max((w1[k].float() - w0).abs().max().item() for k, w0 in _initial(kind, w1).items())
    print(f"{kind}: largest weight difference 1 vs 2 processes {worst:.2e}; largest change in training {moved:.2e}")
    assert worst <= WEIGHT_ATOL
    assert moved > 100 * worst  # the runs trained: the difference is noise against what training changed


def _initial(kind: str, trained: dict) -> dict:
    """The weights before training, for the keys that exist there (a zero-initialised value head, LoRA B)."""
    if kind == "reward":
        from rlhfkit.methods.reward import load_reward_backbone

        model, _ = load_reward_backbone("tiny-bert", seed=0)
    elif kind == "sft":
        from rlhfkit.models import load_policy

        model = load_policy("tiny-gpt2", verbose=False).model
    elif kind == "rloo":  # full fine-tuning of tiny-t5
        from rlhfkit.models import load_policy

        model = load_policy("tiny-t5", verbose=False).model
    else:
        return {k: torch.zeros_like(v) for k, v in trained.items() if "lora_B" in k or k.startswith("v_head")}
    state = model.state_dict()
    return {k: state[k].float() for k in trained if k in state}


def test_one_writer(runs):
    """Only the main process writes: one metrics row per step, one model, one card."""
    rows = metric_rows(runs / "sft-2p")
    steps = [r["step"] for r in rows if "train/loss" in r]
    assert steps == sorted(set(steps)) == list(range(1, 7))
    assert (runs / "sft-2p" / "README.md").exists() and (runs / "ppo-2p" / "model" / "README.md").exists()
    samples = (runs / "ppo-2p" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 3 * 2  # samples_per_step rows of the main process per step, not of each


# ---------------------------------------------------------------- stop and resume


def test_stopped_two_process_runs_resume_and_match(tmp_path):
    files = data_files(tmp_path / "data")
    c = configs(files, 2)
    sampled = dict(c["ppo"], steps=4, save_every=2)  # real sampling: the per-process RNG states must be restored
    runs = {
        "sft": ("sft", dict(c["sft"], save_every=2)),  # dropout on: per-process RNG restored
        "reward": ("reward", dict(c["reward"], save_every=2, eval_fraction=0.0)),
        "grpo": ("grpo", dict(c["grpo"], steps=4, save_every=2)),
        "ppo": ("ppo", sampled),  # last: stopped by killing process 1
    }
    whole = [{"kind": kind, "out": str(tmp_path / f"{name}-whole"), "config": cfg, "fixed_responses": name == "grpo"}
             for name, (kind, cfg) in runs.items()]
    stopped = [{"kind": kind, "out": str(tmp_path / f"{name}-split"), "config": cfg, "stop_before_step": 4,
                "hard_stop": name == "ppo", "fixed_responses": name == "grpo"} for name, (kind, cfg) in runs.items()]
    assert launch(whole, tmp_path, "whole").returncode == 0
    start = time.time()
    killed = launch(stopped, tmp_path, "stopped")
    assert killed.returncode != 0  # process 1 died, and the launcher brought the run down
    assert time.time() - start < 120
    assert (tmp_path / "ppo-split" / "checkpoints" / "step-2").exists()
    assert not (tmp_path / "ppo-split" / "model").exists()
    resumed = [dict(job, config=dict(job["config"], resume=True), stop_before_step=None, hard_stop=False)
               for job in stopped]
    proc = launch(resumed, tmp_path, "resumed")
    assert proc.returncode == 0, proc.stderr[-5000:]
    for name in runs:
        a, b = model_file(tmp_path / f"{name}-whole"), model_file(tmp_path / f"{name}-split")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name

        def rows(folder):
            return [{k: v for k, v in r.items() if k != "seconds" and not k.startswith("time/")}
                    for r in metric_rows(folder)]
        assert rows(tmp_path / f"{name}-whole") == rows(tmp_path / f"{name}-split"), name


# ---------------------------------------------------------------- processes that disagree


def test_processes_that_disagree_stop_with_one_clear_error(tmp_path):
    files = data_files(tmp_path / "data")
    c = configs(files, 2)
    only_rank0 = tmp_path / "data" / "sft.rank0.jsonl"  # there is no sft.rank1.jsonl
    only_rank0.write_text(Path(files["sft"]).read_text())
    fewer = tmp_path / "data" / "sft.rank1.short.jsonl"
    (tmp_path / "data" / "sft.rank0.short.jsonl").write_text(Path(files["sft"]).read_text())
    fewer.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:8]))
    prompts0 = tmp_path / "data" / "prompts.rank0.jsonl"
    prompts0.write_text(Path(files["prompts"]).read_text())
    jobs = [
        {"kind": "sft", "out": str(tmp_path / "missing"), "expect_error": True,
         "config": dict(c["sft"], data=str(tmp_path / "data" / "sft.rank{rank}.jsonl"))},
        {"kind": "sft", "out": str(tmp_path / "different"), "expect_error": True,
         "config": dict(c["sft"], data=str(tmp_path / "data" / "sft.rank{rank}.short.jsonl"))},
        {"kind": "ppo", "out": str(tmp_path / "prompts"), "expect_error": True,
         "config": dict(c["ppo"], prompts=str(tmp_path / "data" / "prompts.rank{rank}.jsonl"))},
    ]
    start = time.time()
    proc = launch(jobs, tmp_path, "disagree", timeout=180)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert time.time() - start < 120
    for rank in (0, 1):  # the same message on both processes, naming the one that failed
        missing = (tmp_path / "missing" / f"error_rank{rank}.txt").read_text()
        assert "failed on 1 of 2 processes" in missing and "process 1:" in missing and "sft.rank1.jsonl" in missing
        different = (tmp_path / "different" / f"error_rank{rank}.txt").read_text()
        assert "the processes disagree on the training run" in different and "'examples': 8" in different
        prompts = (tmp_path / "prompts" / f"error_rank{rank}.txt").read_text()
        assert "loading the prompts failed" in prompts and "prompts.rank1.jsonl" in prompts


def test_fsdp_or_deepspeed_on_a_cpu_only_machine_is_a_clear_error(monkeypatch):
    from rlhfkit.errors import UserError
    from rlhfkit.training import runtime

    monkeypatch.setattr(runtime, "_has_accelerator", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for engine, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        monkeypatch.setenv(engine, "true")
        with pytest.raises(UserError, match=f"asks for {name}, which accelerate runs on GPUs only"):
            runtime.launched_on_cpu()
        monkeypatch.delenv(engine)
    assert runtime.launched_on_cpu()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not runtime.launched_on_cpu()
