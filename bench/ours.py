"""Time rlhfkit's PPO on one benchmark case (project venv).

    .venv/bin/python bench/ours.py SPEC.json

Same SPEC.json as bench/peer_trl.py. Runs rlhfkit's own loop,
`PPOTrainer.train(reward, steps=k)` one step at a time, so each timed step is the
whole library step: generation, decoding, reward scoring, rollout forwards,
advantages, PPO epochs, logging. The reward is `rlhfkit.rewards.ClassifierReward`
on the shared reward model, fed (prompt, completion) pairs so it reads query +
response as trl's reward model does. Responses are exactly `max_new_tokens`
long (min_new_tokens = max_new_tokens), as trl's with no stop token. The KL
coefficient is fixed at the peer's value and gradient clipping is off (trl's PPO
loop does not clip), so both sides do the same optimisation work.

Prints one line `BENCH_RESULT {json}` with per-step seconds, the time split taken
from the trainer's `time/...` statistics, peak RSS and the reward/KL curves.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    import transformers
    from datasets import Dataset
    from transformers import AutoTokenizer

    import rlhfkit
    from rlhfkit.models import LoraOptions, load_policy
    from rlhfkit.ppo import PPOConfig, PPOTrainer
    from rlhfkit.rewards import ClassifierReward

    common.import_model_code(spec)
    baseline = common.rss_bytes()
    B = spec["batch_size"]
    tokenizer = AutoTokenizer.from_pretrained(spec["reward_model"])
    tokenizer.padding_side = "left"
    lora = LoraOptions(r=spec["lora_r"], alpha=spec["lora_alpha"]) if spec["lora"] else None
    # With LoRA in bf16 the frozen base is only ever read in bf16: load it so (the trainer keeps
    # norms, adapters and value head in float32), as PPOTrainer does when it loads by name.
    dtype = "bfloat16" if spec["lora"] and spec["precision"] == "bf16" else "float32"
    # The trainer and the reward share the reward model's tokenizer (its pad token, see build_reward_model):
    # keep only the policy's model, not the second copy of the tokenizer that load_policy returns with it.
    model = load_policy(spec["policy"], lora=lora, dtype=dtype, verbose=False).model
    reward = ClassifierReward(spec["reward_model"], tokenizer=tokenizer, pair_input=True, batch_size=B)
    queries = spec["queries"]
    texts = tokenizer.batch_decode(queries)
    dataset = Dataset.from_dict({"input_ids": queries, "prompt": texts})
    config = PPOConfig(
        model=spec["policy"], lora=bool(spec["lora"]), lora_r=spec["lora_r"], lora_alpha=spec["lora_alpha"],
        output_dir=None, steps=spec["warmup"] + spec["steps"], learning_rate=spec["learning_rate"],
        batch_size=B, mini_batch_size=spec["mini_batch_size"], ppo_epochs=spec["ppo_epochs"],
        max_new_tokens=spec["max_new_tokens"], min_new_tokens=spec["max_new_tokens"],
        temperature=spec["temperature"], top_k=0, top_p=1.0, mixed_precision="bf16" if spec["precision"] == "bf16" else "no",
        init_kl_coef=spec["kl_coef"], adaptive_kl=False, vf_coef=spec["vf_coef"], max_grad_norm=None,
        gradient_checkpointing=spec.get("gradient_checkpointing", False), compile=spec.get("compile", False),
        static_cache=spec.get("static_cache", False),
        seed=spec["seed"], log_every=0, samples_per_step=0, max_prompt_tokens=None,
    )
    trainer = PPOTrainer(config, model, tokenizer=tokenizer, dataset=dataset)
    loaded = common.rss_bytes()

    steps: list[float] = []
    t_all = time.perf_counter()
    for k in range(1, config.steps + 1):
        t = time.perf_counter()
        trainer.train(reward, steps=k)
        steps.append(time.perf_counter() - t)
    wall = time.perf_counter() - t_all

    history = trainer.history
    timed = history[spec["warmup"]:]
    keys = {"generation": "time/generate", "reward": "time/reward", "rollout": "time/ppo/forward_pass",
            "training": "time/ppo/optimize_step", "train_passes": "time/ppo/train_passes"}
    phases = {name: common.median([h.get(key, 0.0) for h in timed]) for name, key in keys.items()}
    step_median = common.median(steps[spec["warmup"]:])
    if step_median is not None:  # train_passes is a part of training
        phases["other"] = step_median - sum(v or 0.0 for k, v in phases.items() if k != "train_passes")
    ref = trainer.ref_model
    common.emit({
        "side": "ours", "library": f"rlhfkit=={getattr(rlhfkit, '__version__', '?')}",
        "transformers": transformers.__version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "mixed_precision": trainer.accelerator.mixed_precision, "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "step_seconds": steps[spec["warmup"]:], "warmup_seconds": steps[: spec["warmup"]],
        "median_step_s": step_median, "phases_median_s": phases,
        "peak_rss_bytes": common.peak_rss_bytes(), "baseline_rss_bytes": baseline, "loaded_rss_bytes": loaded,
        "policy_weights_bytes": common.weights_bytes(model),
        "reward_weights_bytes": common.weights_bytes(reward.model),
        "reference_copy": ref is not None,
        "policy_dims": common.dims_dict(common.count_dims(model)),
        "reward_dims": common.dims_dict(common.count_dims(reward.model)),
        "query_len": common.median([h.get("tokens/queries_len_mean", 0.0) for h in timed]) or len(queries[0]),
        "response_len": common.median([h.get("tokens/responses_len_mean", 0.0) for h in timed]) or spec["max_new_tokens"],
        "wall_s": wall,
        "curves": [{"reward": h.get("env/reward_mean"), "kl": h.get("objective/kl")} for h in history],
    })


if __name__ == "__main__":
    from rlhfkit.runtime import reexec_with_tuned_malloc

    reexec_with_tuned_malloc()  # as the `rlhfkit` command does (RLHFKIT_TUNED_MALLOC=0 turns it off)
    main(sys.argv[1])
