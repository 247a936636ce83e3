"""One side of the DPO benchmark (rlhfkit in the project venv, TRL 1.16 in bench/.venv-trl116):

    python bench/dpo_sides.py ours|trl SPEC.json

Both train SmolLM2-135M with LoRA (r, alpha, all linear layers; the reference is the policy with
its adapters off) on the same conversational pairs, `batch_size` pairs per optimisation step, the
sigmoid loss, beta 0.1, float32 (or bf16 mixed), no precomputed reference. TRL runs with its own
defaults otherwise (its `gradient_checkpointing` is reported). Prints one line `BENCH_RESULT
{json}`: per-step seconds, peak RSS, the loss curve, the mean sequence lengths.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
if len(sys.argv) > 1 and sys.argv[1] == "ours":  # this checkout's rlhfkit, whatever the venv has installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402


def _rows(spec):
    return [{"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}]} for p, c, r in spec["pairs"]]


def ours(spec: dict) -> dict:
    from rlhfkit.methods import dpo
    from rlhfkit.training import supervised

    data = Path(spec["scratch"]) / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(spec)))
    seconds, lengths = [], []
    original = supervised.SupervisedLoop.train_step

    def timed(self, task, indices):  # the loop's own step, timed from outside
        t = time.perf_counter()
        out = original(self, task, indices)
        seconds.append(time.perf_counter() - t)
        if not lengths:
            ps = [task.pairs[i] for i in indices]
            lengths.append(sum(len(p.prompt) + (len(p.chosen) + len(p.rejected)) / 2 for p in ps) / len(ps))
        return out

    supervised.SupervisedLoop.train_step = timed
    config = dpo.DPOConfig(model=spec["policy"], data=str(data), output_dir=str(Path(spec["scratch"]) / "ours"),
                           lora=True, lora_r=spec["lora_r"], lora_alpha=spec["lora_alpha"], epochs=1,
                           batch_size=spec["batch_size"], learning_rate=spec["learning_rate"], beta=0.1,
                           max_length=1024, warmup_ratio=0.0, log_every=0, seed=spec["seed"],
                           mixed_precision="bf16" if spec["precision"] == "bf16" else "no",
                           limit=spec["batch_size"] * (spec["warmup"] + spec["steps"]), **spec.get("ours_options", {}))
    result = dpo.train_dpo(config, progress=False)
    return {"step_seconds": seconds[spec["warmup"]:], "warmup_seconds": seconds[:spec["warmup"]],
            "losses": result["steps"], "mean_tokens_per_sequence": lengths[0] if lengths else None}


def trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(spec["policy"])
    model = AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=torch.float32)
    rows = _rows(spec)[: spec["batch_size"] * (spec["warmup"] + spec["steps"])]
    data = Dataset.from_list(rows)
    args = DPOConfig(output_dir=spec["scratch"], per_device_train_batch_size=spec["batch_size"],
                     learning_rate=spec["learning_rate"], beta=0.1, loss_type=["sigmoid"],
                     max_steps=spec["warmup"] + spec["steps"], bf16=spec["precision"] == "bf16", logging_steps=1,
                     save_strategy="no", report_to=[], seed=spec["seed"], dataloader_num_workers=0, use_cpu=True,
                     max_grad_norm=1.0, **spec.get("trl_options", {}))
    peft = LoraConfig(r=spec["lora_r"], lora_alpha=spec["lora_alpha"], lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=peft)
    marks = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            marks.append(("begin", time.perf_counter()))

        def on_step_end(self, *a, **k):
            marks.append(("end", time.perf_counter()))

    trainer.add_callback(Clock())
    trainer.train()
    begins = [m[1] for m in marks if m[0] == "begin"]
    ends = [m[1] for m in marks if m[0] == "end"]
    steps = [e - b for b, e in zip(begins, ends)]
    ds = trainer.train_dataset
    n = min(len(ds), spec["batch_size"])
    tokens = sum(len(ds[i]["prompt_ids"]) + (len(ds[i]["chosen_ids"]) + len(ds[i]["rejected_ids"])) / 2
                 for i in range(n)) / n
    return {"step_seconds": steps[spec["warmup"]:], "warmup_seconds": steps[:spec["warmup"]],
            "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
            "gradient_checkpointing": args.gradient_checkpointing, "mean_tokens_per_sequence": tokens}


def main(side: str, spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    baseline = common.rss_bytes()
    result = (ours if side == "ours" else trl)(spec)
    median = common.median(result["step_seconds"])
    result.update({"side": side, "baseline_rss_bytes": baseline, "peak_rss_bytes": common.peak_rss_bytes(),
                   "median_step_s": median, "samples_per_s": spec["batch_size"] / median if median else None})
    common.emit(result)


if __name__ == "__main__":
    if sys.argv[1] == "ours":
        from rlhfkit.runtime import reexec_with_tuned_malloc

        reexec_with_tuned_malloc()
    main(sys.argv[1], sys.argv[2])
