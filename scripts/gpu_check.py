"""The shipped launch configs on a GPU machine, in a few minutes: `python scripts/gpu_check.py` (or scripts/gpu_check.sh).

For each config in configs/accelerate/ (ddp, fsdp2, fsdp2_lora, deepspeed_zero2, deepspeed_zero3; the
DeepSpeed ones only where `deepspeed` imports), two launches with up to 2 processes (one per GPU; a
1-GPU machine runs 1 process, which still goes through the engine's wrapping, sharded checkpoints and
gathered saves):
1. SFT on tiny-gpt2 (LoRA under fsdp2_lora, full otherwise) and PPO on tiny-gpt2 (LoRA under ddp and
   fsdp2_lora, full otherwise), each whole, and again stopped after a checkpoint;
2. the stopped runs resumed.
Checks: every run finishes, the resumed run ends where the whole one does (weights within 1e-6 under
no sharding, 1e-3 under the bf16 engines), the losses stay within 2% of the DDP run's (the engines
run bf16), and every final folder has its model card. Prints one line per config and a summary;
exit 1 if any failed. Jobs run through tests/dist_driver.py (fixed responses, dropout off).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "dist_driver.py"
CONFIGS = ["ddp", "fsdp2", "fsdp2_lora", "deepspeed_zero2", "deepspeed_zero3"]


def gpus() -> int:
    import torch

    return torch.cuda.device_count()


def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: str, jobs: list[dict], folder: Path, name: str, nproc: int) -> tuple[int, float]:
    spec = folder / f"{name}.json"
    spec.write_text(json.dumps({"jobs": jobs}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file",
           str(ROOT / "configs" / "accelerate" / f"{config}.yaml"), "--num_processes", str(nproc),
           "--main_process_port", str(port()), str(DRIVER), str(spec)]
    start = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    (folder / f"{name}.log").write_text(proc.stdout + proc.stderr)
    return proc.returncode, time.time() - start


def jobs(config: str, folder: Path, data: dict, stop: bool) -> list[dict]:
    lora = config in ("ddp", "fsdp2_lora")
    online = dict(prompts=data["prompts"], max_new_tokens=6, learning_rate=1e-3, steps=4, seed=3, log_every=0,
                  batch_size=4, mini_batch_size=4, gradient_accumulation_steps=1, save_every=2)
    specs = {
        "sft": ("sft", dict(model="tiny-gpt2", data=data["sft"], epochs=2, batch_size=4, learning_rate=1e-3,
                            warmup_ratio=0.0, log_every=1, save_every=2, lora=config == "fsdp2_lora")),
        "ppo": ("ppo", dict(online, model="tiny-gpt2", lora=lora, ppo_epochs=2)),
    }
    out = []
    for name, (kind, cfg) in specs.items():
        job = {"kind": kind, "out": str(folder / f"{name}-{'split' if stop else 'whole'}"), "config": cfg,
               "zero_dropout": True, "fixed_responses": kind == "ppo"}
        if stop:
            job["stop_before_step"] = 4
        out.append(job)
    return out


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    for sub in (folder, folder / "model"):
        for name in ("model.safetensors", "adapter_model.safetensors"):
            if (sub / name).exists():
                return load_file(str(sub / name))
    return {}


def losses(folder: Path) -> list[float]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r.get("train/loss", r.get("ppo/loss/total")) for r in rows if "train/loss" in r or "ppo/loss/total" in r]


def check(config: str, root: Path, data: dict, nproc: int, reference: dict | None) -> tuple[bool, str, dict]:
    folder = root / config
    folder.mkdir()
    rc1, t1 = launch(config, jobs(config, folder, data, False) + jobs(config, folder, data, True), folder,
                     "whole-and-stopped", nproc)
    if rc1:
        return False, f"first launch failed (rc {rc1}, {t1:.0f}s): see {folder}/whole-and-stopped.log", {}
    resumed = [dict(j, config=dict(j["config"], resume=True), stop_before_step=None)
               for j in jobs(config, folder, data, True)]
    rc2, t2 = launch(config, resumed, folder, "resumed", nproc)
    if rc2:
        return False, f"resume launch failed (rc {rc2}): see {folder}/resumed.log", {}
    notes, ok, got = [], True, {}
    tol = 1e-6 if config == "ddp" else 1e-3
    for name in ("sft", "ppo"):
        a, b = weights(folder / f"{name}-whole"), weights(folder / f"{name}-split")
        worst = max(((a[k].float() - b[k].float()).abs().max().item() for k in a), default=float("inf"))
        ok &= bool(a) and a.keys() == b.keys() and worst <= tol
        card = (folder / f"{name}-whole" / ("model" if name == "ppo" else "") / "README.md").exists()
        ok &= card
        got[name] = losses(folder / f"{name}-whole")
        line = f"{name}: resume diff {worst:.1e}, card {'yes' if card else 'NO'}"
        if reference and reference.get(name) and got[name]:
            rel = max(abs(x - y) / max(abs(y), 1e-3) for x, y in zip(got[name], reference[name]))
            line += f", losses vs ddp {rel:.1%}"
            ok &= rel <= 0.02 or config == "ddp"
        notes.append(line)
    return ok, f"{t1 + t2:.0f}s; " + "; ".join(notes), got


def main(argv: list[str]) -> int:
    n = gpus()
    configs = CONFIGS
    if "--cpu-smoke" in argv:  # this script's own check where there is no GPU: the DDP config on 2 CPU processes
        n, configs = 2, ["ddp"]
    elif n == 0:
        print("gpu_check: no CUDA GPU here; the CPU side is tests/test_distributed.py (or --cpu-smoke)")
        return 2
    nproc = min(n, 2)
    root = Path(tempfile.mkdtemp(prefix="rlhfkit-gpu-check-"))
    sys.path.insert(0, str(ROOT / "tests"))
    import dist_driver

    data = {"sft": root / "sft.jsonl", "prompts": root / "prompts.jsonl"}
    data["sft"].write_text("".join(json.dumps({"prompt": f"Say something kind number {i}",
                                               "completion": f"You are wonderful, friend {i}."}) + "\n"
                                   for i in range(12)))
    data["prompts"].write_text("".join(json.dumps({"prompt": p}) + "\n" for p in dist_driver.PROMPTS))
    data = {k: str(v) for k, v in data.items()}
    where = "CPU smoke run (gloo)" if "--cpu-smoke" in argv else f"{n} GPU(s)"
    print(f"gpu_check: {where}, {nproc} process(es) per launch, folder {root}")
    results, reference = {}, None
    for config in configs:
        if config.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
            results[config] = (None, "skipped: pip install deepspeed")
            print(f"{config:16s} SKIP  {results[config][1]}", flush=True)
            continue
        ok, line, got = check(config, root, data, nproc, reference)
        if config == "ddp" and ok:
            reference = got
        results[config] = (ok, line)
        print(f"{config:16s} {'PASS' if ok else 'FAIL'}  {line}", flush=True)
    failed = [c for c, (ok, _) in results.items() if ok is False]
    print(f"gpu_check: {sum(ok is True for ok, _ in results.values())} passed, {len(failed)} failed"
          + (f" ({', '.join(failed)})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
