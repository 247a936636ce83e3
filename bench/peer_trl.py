"""Time trl 1.12.0's `trl.experimental.ppo.PPOTrainer` on one benchmark case.

Runs inside the peer's own venv (bench/.venv-trl112), never the project's:

    bench/.venv-trl112/bin/python bench/peer_trl.py SPEC.json

SPEC.json (written by run.py) names the policy folder, the shared reward-model
folder (its tokenizer beside it), the query token ids and the settings. Prints one
line `BENCH_RESULT {json}`.

Settings mapped onto trl's PPOConfig (see trl/experimental/ppo/ppo_config.py):
batch B and mini-batch M -> per_device_train_batch_size=B,
gradient_accumulation_steps=1, num_mini_batches=B/M (so local_batch_size=B,
local_mini_batch_size=M and one optimiser step per mini-batch); num_ppo_epochs;
response_length = max new tokens; stop_token=None (every response is exactly
`response_length` tokens, as on our side); total_episodes = B * (warm-up + timed
steps); num_sample_generations=0; local_rollout_forward_batch_size=B (one
generation batch). bf16: trl 1.12 builds its Accelerator without a
mixed_precision argument and transformers 5 no longer exports the
TrainingArguments' choice, so `bf16=True` alone trains in fp32; we also set
ACCELERATE_MIXED_PRECISION=bf16, as `accelerate launch --mixed_precision bf16`
would. Gradient checkpointing (a trl default) is never enabled by trl's PPO loop.

Per-step time: a callback's on_train_begin/on_step_end timestamps. The split
wraps trl's module-level `batch_generation` (generation), `get_reward` (value and
reward forwards) and no-grad `forward` (reference); training runs from the first
grad-enabled forward of a step to on_step_end.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    if spec["precision"] == "bf16":
        os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16"
    import torch

    torch.set_num_threads(spec["threads"])
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as trl_ppo

    common.import_model_code(spec)
    baseline = common.rss_bytes()
    B, M = spec["batch_size"], spec["mini_batch_size"]
    total_steps = spec["warmup"] + spec["steps"]
    tokenizer = AutoTokenizer.from_pretrained(spec["reward_model"])
    tokenizer.padding_side = "left"
    policy = AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=torch.float32)
    ref = None if spec["lora"] else AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(spec["reward_model"], num_labels=1, dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(spec["reward_model"], num_labels=1, dtype=torch.float32)
    peft_config = None
    if spec["lora"]:
        from peft import LoraConfig

        peft_config = LoraConfig(r=spec["lora_r"], lora_alpha=spec["lora_alpha"], lora_dropout=0.0,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    queries = spec["queries"]
    n_prompts = B * total_steps
    dataset = Dataset.from_dict({"input_ids": [queries[i % len(queries)] for i in range(n_prompts)]})
    out_dir = tempfile.mkdtemp(prefix="bench-trl-")
    config = PPOConfig(
        output_dir=out_dir, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
        use_cpu=True, seed=spec["seed"], learning_rate=spec["learning_rate"],
        per_device_train_batch_size=B, gradient_accumulation_steps=1, num_mini_batches=B // M,
        num_ppo_epochs=spec["ppo_epochs"], response_length=spec["max_new_tokens"], total_episodes=n_prompts,
        stop_token=None, missing_eos_penalty=None, kl_coef=spec["kl_coef"], temperature=spec["temperature"],
        vf_coef=spec["vf_coef"], cliprange=0.2, cliprange_value=0.2, gamma=1.0, lam=0.95,
        num_sample_generations=0, local_rollout_forward_batch_size=B, gradient_checkpointing=False,
        bf16=spec["precision"] == "bf16", fp16=False, dataloader_num_workers=0,
    )

    marks: dict = {"steps": [], "phase": []}
    current = {"generation": 0.0, "reference": 0.0, "value_reward": 0.0, "train_start": None}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                current[name] += time.perf_counter() - t
        return wrapper

    orig_forward = trl_ppo.forward

    def forward(*args, **kwargs):
        if torch.is_grad_enabled():
            if current["train_start"] is None:
                current["train_start"] = time.perf_counter()
            return orig_forward(*args, **kwargs)
        t = time.perf_counter()
        try:
            return orig_forward(*args, **kwargs)
        finally:
            current["reference"] += time.perf_counter() - t

    trl_ppo.batch_generation = timed("generation", trl_ppo.batch_generation)
    trl_ppo.get_reward = timed("value_reward", trl_ppo.get_reward)
    trl_ppo.forward = forward
    history: list[dict] = []

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            marks["t"] = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                history.append({k: v for k, v in logs.items() if isinstance(v, (int, float))})

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            train = now - current["train_start"] if current["train_start"] is not None else 0.0
            marks["steps"].append(now - marks["t"])
            marks["phase"].append({"generation": current["generation"], "reference": current["reference"],
                                   "value_reward": current["value_reward"], "training": train})
            marks["t"] = now
            current.update({"generation": 0.0, "reference": 0.0, "value_reward": 0.0, "train_start": None})

    loaded = common.rss_bytes()
    trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=ref, reward_model=reward,
                         train_dataset=dataset, value_model=value, peft_config=peft_config, callbacks=[Timer()])
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0

    timed_steps = marks["steps"][spec["warmup"]:]
    phases = marks["phase"][spec["warmup"]:]
    policy_dims = common.count_dims(trainer.model.policy)
    reward_dims = common.count_dims(reward)
    common.emit({
        "side": "peer", "library": f"trl=={trl.__version__}", "transformers": transformers.__version__,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "mixed_precision": trainer.accelerator.mixed_precision,
        "step_seconds": timed_steps, "warmup_seconds": marks["steps"][: spec["warmup"]],
        "median_step_s": common.median(timed_steps),
        "phases_median_s": {k: common.median([p[k] for p in phases]) for k in (phases[0] if phases else {})},
        "peak_rss_bytes": common.peak_rss_bytes(), "baseline_rss_bytes": baseline, "loaded_rss_bytes": loaded,
        "policy_dims": common.dims_dict(policy_dims), "reward_dims": common.dims_dict(reward_dims),
        "query_len": len(queries[0]), "response_len": spec["max_new_tokens"], "wall_s": wall,
        "curves": [{"reward": h.get("objective/scores"), "kl": h.get("objective/kl")} for h in history],
    })


if __name__ == "__main__":
    main(sys.argv[1])
