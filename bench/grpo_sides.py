"""One side of the GRPO benchmark (rlhfkit in the project venv, TRL 1.16 in bench/.venv-trl116):

    python bench/grpo_sides.py ours|trl SPEC.json

Both train SmolLM2-135M with LoRA (r, alpha), in the spec's precision (bf16 mixed or float32), on the same chat prompts, 4
completions per prompt and 16 completions per optimisation step in micro-batches of 4, exactly
`max_new_tokens` new tokens (min_new_tokens = max_new_tokens), temperature 1, no KL (TRL's default
beta 0: no reference model), one pass per batch, DAPO's token-mean loss, the same reward function
(bench/grpo_reward.py). Prints one line `BENCH_RESULT {json}`: per-step seconds, the sampling time
per step, peak RSS, the reward curve.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from grpo_reward import short_polite  # noqa: E402


def ours(spec: dict) -> dict:
    from rlhfkit.methods.grpo import GRPOConfig, GRPOTrainer

    config = GRPOConfig(
        model=spec["policy"], lora=True, lora_r=spec["lora_r"], lora_alpha=spec["lora_alpha"], output_dir=None,
        steps=spec["warmup"] + spec["steps"], learning_rate=spec["learning_rate"], batch_size=spec["batch_size"],
        num_generations=spec["num_generations"], mini_batch_size=spec["batch_size"],
        gradient_accumulation_steps=spec["batch_size"] // spec["micro_batch_size"], ppo_epochs=1,
        max_new_tokens=spec["max_new_tokens"], min_new_tokens=spec["max_new_tokens"], temperature=1.0,
        mixed_precision="bf16" if spec["precision"] == "bf16" else "no", kl_penalty="none", seed=spec["seed"], log_every=0, samples_per_step=0,
        max_grad_norm=1.0, **spec.get("ours_options", {}))
    trainer = GRPOTrainer(config, dataset=[p for p in spec["prompts"]])
    loaded = common.rss_bytes()
    steps = []
    for k in range(1, config.steps + 1):
        t = time.perf_counter()
        trainer.train(short_polite, steps=k)
        steps.append(time.perf_counter() - t)
    timed = trainer.history[spec["warmup"]:]
    return {"step_seconds": steps[spec["warmup"]:], "warmup_seconds": steps[:spec["warmup"]],
            "generate_seconds": [h["time/generate"] for h in timed],
            "train_pass_seconds": [h["time/ppo/train_passes"] for h in timed],
            "loaded_rss_bytes": loaded, "rewards": [h["env/reward_mean"] for h in trainer.history]}


def trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(spec["policy"])
    model = AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=torch.float32)
    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in spec["prompts"]]})
    micro = spec["micro_batch_size"]
    accumulation = spec["batch_size"] // micro
    args = GRPOConfig(
        output_dir=spec["scratch"], per_device_train_batch_size=micro, gradient_accumulation_steps=accumulation,
        steps_per_generation=accumulation, num_generations=spec["num_generations"],
        max_completion_length=spec["max_new_tokens"], temperature=1.0, top_k=0, top_p=1.0,
        generation_kwargs={"min_new_tokens": spec["max_new_tokens"]}, beta=0.0, loss_type="dapo", num_iterations=1,
        learning_rate=spec["learning_rate"], max_steps=spec["warmup"] + spec["steps"], bf16=spec["precision"] == "bf16",
        logging_steps=1, save_strategy="no", report_to=[], seed=spec["seed"], dataloader_num_workers=0,
        use_cpu=True, max_grad_norm=1.0, **spec.get("trl_options", {}))
    peft = LoraConfig(r=spec["lora_r"], lora_alpha=spec["lora_alpha"], lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=model, reward_funcs=short_polite, args=args, train_dataset=data,
                          processing_class=tokenizer, peft_config=peft)
    loaded = common.rss_bytes()
    marks, generate = [], []
    inner = trainer.model
    original = inner.generate

    def timed_generate(*a, **k):
        t = time.perf_counter()
        out = original(*a, **k)
        generate.append(time.perf_counter() - t)
        return out
    inner.generate = timed_generate

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            marks.append(("begin", time.perf_counter(), len(generate)))

        def on_step_end(self, *a, **k):
            marks.append(("end", time.perf_counter(), len(generate)))

    trainer.add_callback(Clock())
    trainer.train()
    begins = [m for m in marks if m[0] == "begin"]
    ends = [m for m in marks if m[0] == "end"]
    steps = [e[1] - b[1] for b, e in zip(begins, ends)]
    gen = [sum(generate[b[2]:e[2]]) for b, e in zip(begins, ends)]
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return {"step_seconds": steps[spec["warmup"]:], "warmup_seconds": steps[:spec["warmup"]],
            "generate_seconds": gen[spec["warmup"]:], "loaded_rss_bytes": loaded, "rewards": rewards,
            "gradient_checkpointing": args.gradient_checkpointing}


def main(side: str, spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    baseline = common.rss_bytes()
    result = (ours if side == "ours" else trl)(spec)
    result.update({"side": side, "baseline_rss_bytes": baseline, "peak_rss_bytes": common.peak_rss_bytes(),
                   "median_step_s": common.median(result["step_seconds"]),
                   "median_generate_s": common.median(result["generate_seconds"])})
    common.emit(result)


if __name__ == "__main__":
    if sys.argv[1] == "ours":
        from rlhfkit.runtime import reexec_with_tuned_malloc

        reexec_with_tuned_malloc()
    main(sys.argv[1], sys.argv[2])
