"""Two processes on the CPU (gloo), started by `accelerate launch` with the shipped DDP config, against one.

- Same global batch, same numbers: SFT and the reward model (a batch of 4 rows / 6 pairs split 2 ways)
  DPO (24 pairs, 6 per step) and PPO, GRPO and RLOO (4 completions per process against 8 in one) give the per-step losses and the
  final weights of the 1-process run, within the float tolerances below (the only difference is the
  order in which the gradient all-reduce adds up). Dropout is off and the online runs use fixed
  responses (tests/dist_driver.py): dropout masks and sampling draws are per process and per batch
  shape, so they cannot match across world sizes; everything downstream of them is compared.
- Stopped and resumed: a 2-process run stopped after a checkpoint, then resumed by a new launch,
  ends bit for bit where the uninterrupted 2-process run ends (weights and metrics), with dropout on
  (SFT) and real sampling (PPO), so the per-process RNG states are restored too. The PPO run is
  stopped by killing process 1 outright: the launcher takes the run down (no hang).
- FSDP2: accelerate 1.16 runs FSDP on GPUs only, so the driver forces its state onto the gloo processes
  (torch's fully_shard runs there): SFT and PPO-with-LoRA through the sharded checkpoints (accelerate's
  save_state) and gathered saves match the 1-process run and resume exactly.
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
        # 8 rankings of 3 -> 24 pairs, 6 per step; LoRA, the reference the policy with adapters off
        "dpo": dict(model="tiny-gpt2", data=files["rank"], epochs=2, batch_size=6, learning_rate=1e-3,
                    warmup_ratio=0.0, log_every=1, lora=True),
    }


KINDS = ["sft", "reward", "ppo", "grpo", "rloo", "dpo"]


def same_batch_jobs(files, root: Path, world: int) -> list[dict]:
    return [{"kind": k, "out": str(root / f"{k}-{world}p"), "config": c, "zero_dropout": True, "fixed_responses": True}
            for k, c in configs(files, world).items()]


RESUMED = {  # name: (trainer, extra config, fixed responses, forced FSDP2)
    "sft": ("sft", dict(save_every=2), False, False),  # dropout on: the per-process RNG states must come back
    "reward": ("reward", dict(save_every=2, eval_fraction=0.0), True, False),
    "grpo": ("grpo", dict(steps=4, save_every=2), True, False),
    "dpo": ("dpo", dict(save_every=2), True, False),
    "sft-fsdp2": ("sft", dict(save_every=2), True, True),
    "ppo-fsdp2": ("ppo", dict(save_every=2), True, True),  # 3 steps, the 1-process run's linear schedule
    "ppo": ("ppo", dict(steps=4, save_every=2), False, False),  # real sampling; stopped by killing process 1
}


def resume_jobs(files, root: Path, part: str) -> list[dict]:
    c = configs(files, 2)
    jobs = []
    for name, (kind, extra, fixed, fsdp2) in RESUMED.items():
        job = {"kind": kind, "out": str(root / f"{name}-{'whole' if part == 'whole' else 'split'}"),
               "config": dict(c[kind], **extra), "fixed_responses": fixed, "zero_dropout": fixed,
               "force_fsdp2": fsdp2}
        if part == "stopped":
            job.update(stop_before_step=3, hard_stop=name == "ppo")  # a checkpoint holds step 2
        if part == "resumed":
            job["config"]["resume"] = True
        jobs.append(job)
    return jobs


def disagreeing_jobs(files, root: Path) -> list[dict]:
    """A data file missing on process 1, a shorter one there, a prompts file missing there."""
    c, data = configs(files, 2), root / "data"
    (data / "sft.rank0.jsonl").write_text(Path(files["sft"]).read_text())  # there is no sft.rank1.jsonl
    (data / "sft.rank0.short.jsonl").write_text(Path(files["sft"]).read_text())
    (data / "sft.rank1.short.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[:8]))
    (data / "prompts.rank0.jsonl").write_text(Path(files["prompts"]).read_text())
    return [
        {"kind": "sft", "out": str(root / "missing"), "expect_error": True,
         "config": dict(c["sft"], data=str(data / "sft.rank{rank}.jsonl"))},
        {"kind": "sft", "out": str(root / "different"), "expect_error": True,
         "config": dict(c["sft"], data=str(data / "sft.rank{rank}.short.jsonl"))},
        {"kind": "ppo", "out": str(root / "prompts"), "expect_error": True,
         "config": dict(c["ppo"], prompts=str(data / "prompts.rank{rank}.jsonl"))},
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three 2-process launches (each costs ~10 s of start-up here, so every scenario shares them):
    1. every trainer with the same global batch as the 1-process runs, the disagreeing processes, and
       the uninterrupted runs of the resume test; 2. those runs stopped before step 3 (the last, PPO,
       by killing process 1); 3. the stopped runs resumed. Then the 1-process runs, in this process."""
    root = tmp_path_factory.mktemp("dist")
    files = data_files(root / "data")
    first = same_batch_jobs(files, root, 2) + disagreeing_jobs(files, root) + resume_jobs(files, root, "whole")
    start = time.time()
    proc = launch(first, root, "first", timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    root.joinpath("first.seconds").write_text(str(time.time() - start))
    start = time.time()
    killed = launch(resume_jobs(files, root, "stopped"), root, "stopped", timeout=300)
    root.joinpath("stopped.json").write_text(json.dumps({
        "seconds": time.time() - start, "rc": killed.returncode,
        "checkpoint": (root / "ppo-split" / "checkpoints" / "step-2").is_dir(),
        "later checkpoint": (root / "ppo-split" / "checkpoints" / "step-4").exists(),
        "model": (root / "ppo-split" / "model").exists()}))
    proc = launch(resume_jobs(files, root, "resumed"), root, "resumed", timeout=300)
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
             "rloo": ["ppo/loss/total", "env/reward_mean"],
             "dpo": ["train/loss", "train/rewards/margins", "train/rewards/accuracies"]}


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


def test_a_killed_process_brings_the_launch_down_without_a_hang(runs):
    stopped = json.loads((runs / "stopped.json").read_text())
    assert stopped["rc"] != 0  # process 1 died, and the launcher ended process 0
    assert stopped["seconds"] < 150  # the whole launch, six runs; the gloo timeout is 30 minutes: no hang
    assert stopped["checkpoint"] and not stopped["later checkpoint"] and not stopped["model"]
    assert "Signal 15" in (runs / "stopped.log").read_text() or "exitcode  : 137" in (runs / "stopped.log").read_text()


@pytest.mark.parametrize("name", list(RESUMED))
def test_stopped_two_process_runs_resume_and_match(runs, name):
    a, b = model_file(runs / f"{name}-whole"), model_file(runs / f"{name}-split")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]

    def rows(folder):
        return [{k: v for k, v in r.items() if k != "seconds" and not k.startswith("time/")} for r in metric_rows(folder)]
    assert rows(runs / f"{name}-whole") == rows(runs / f"{name}-split")


@pytest.mark.parametrize("kind", ["sft", "ppo"])
def test_fsdp2_on_gloo_matches_one_process(runs, kind):
    """FSDP2 (forced onto the CPU, see dist_driver._force_fsdp2): sharded checkpoints and gathered saves
    give the 1-process run's losses and weights (the resume above is exact under FSDP2 too)."""
    assert (runs / f"{kind}-fsdp2-split" / "checkpoints" / "step-2" / "engine").is_dir()  # accelerate's sharded state
    key = "train/loss" if kind == "sft" else "ppo/loss/total"
    one = [r[key] for r in metric_rows(runs / f"{kind}-1p") if key in r]
    sharded = [r[key] for r in metric_rows(runs / f"{kind}-fsdp2-whole") if key in r]
    n = min(len(one), len(sharded))
    assert n >= 3 and sharded[:n] == pytest.approx(one[:n], rel=LOSS_RTOL, abs=LOSS_ATOL)
    if kind == "sft":  # the same 6 steps: the weights too
        w1, w2 = model_file(runs / "sft-1p"), model_file(runs / "sft-fsdp2-whole")
        assert w1.keys() == w2.keys()
        assert max((w1[k] - w2[k]).abs().max().item() for k in w1) <= WEIGHT_ATOL


# ---------------------------------------------------------------- processes that disagree


def test_processes_that_disagree_stop_with_one_clear_error(runs):
    for rank in (0, 1):  # the same message on both processes, naming the one that failed
        missing = (runs / "missing" / f"error_rank{rank}.txt").read_text()
        assert "loading the SFT data failed on 1 of 2 processes" in missing and "process 1:" in missing
        assert "sft.rank1.jsonl" in missing
        different = (runs / "different" / f"error_rank{rank}.txt").read_text()
        assert "the processes disagree on the training run" in different and "'examples': 8" in different
        prompts = (runs / "prompts" / f"error_rank{rank}.txt").read_text()
        assert "loading the prompts failed on 1 of 2 processes" in prompts and "prompts.rank1.jsonl" in prompts


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
