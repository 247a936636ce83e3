"""GRPO benchmark: rlhfkit's GRPO against TRL 1.16's GRPOTrainer, one run for both, and the machine's peak.

    .venv/bin/python bench/grpo.py [--steps 3] [--warmup 1] [--ours-options '{"compile": true}']
    make bench ARGS="--cases grpo"

SmolLM2-135M-Instruct with LoRA (r 16, alpha 32, all linear layers), bf16 mixed precision (float32 on a CPU without native bf16), the same
64 chat prompts (the first of rlhfkit/assets/prompts_train.jsonl), 4 generations per prompt, 16
completions per step in micro-batches of 4, exactly 48 new tokens, no KL (TRL's default beta 0),
DAPO's token-mean loss, one pass per batch, the reward of bench/grpo_reward.py. TRL runs with its
own defaults otherwise (gradient checkpointing on). Each side in its own subprocess, one after the
other; the matmul peak of that precision is measured in the same run. Writes bench/results/grpo-<time>.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
from peers import ensure_trl_venv  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3, help="timed steps per side (after the warm-up)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps per side")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                   help="both sides' precision (default: bf16 where the CPU has native bf16, else fp32)")
    p.add_argument("--ours-options", type=json.loads, default={},
                   help='extra GRPOConfig fields for our side, JSON (e.g. {"compile": true})')
    p.add_argument("--trl-options", type=json.loads, default={}, help="extra trl GRPOConfig fields, JSON")
    p.add_argument("--skip-peer", action="store_true")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--out", type=Path, default=BENCH / "results")
    return p.parse_args(argv)


def run_side(python: Path, side: str, spec: Path, timeout: float) -> dict:
    proc = subprocess.run([str(python), str(BENCH / "grpo_sides.py"), side, str(spec)], capture_output=True,
                          text=True, timeout=timeout, cwd=str(ROOT))
    lines = [x for x in proc.stdout.splitlines() if x.startswith(common.RESULT_PREFIX)]
    if proc.returncode or not lines:
        raise SystemExit(f"bench: the {side} side failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len(common.RESULT_PREFIX):])


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    from rlhfkit.data import load_prompts
    from rlhfkit.models import resolve
    from rlhfkit.models.loading import load_policy

    torch.set_num_threads(args.threads)
    from rlhfkit.runtime import cpu_has_native_bf16

    args.precision = args.precision or ("bf16" if cpu_has_native_bf16() else "fp32")
    policy = resolve("smollm2-135m")
    prompts = [p for p in load_prompts(ROOT / "rlhfkit" / "assets" / "prompts_train.jsonl")[:64]]
    scratch = tempfile.mkdtemp(prefix="grpo-bench-")
    spec = {"policy": policy, "prompts": prompts, "batch_size": 16, "micro_batch_size": 4, "num_generations": 4,
            "max_new_tokens": args.max_new_tokens, "lora_r": 16, "lora_alpha": 32, "learning_rate": 1e-5,
            "seed": 0, "threads": args.threads, "warmup": args.warmup, "steps": args.steps, "scratch": scratch,
            "ours_options": args.ours_options, "trl_options": args.trl_options, "precision": args.precision}
    spec_path = Path(scratch) / "spec.json"
    spec_path.write_text(json.dumps(spec))
    peak = common.matmul_peak(args.precision)
    model = load_policy("smollm2-135m", lora={"r": 16, "alpha": 32}, verbose=False).model
    dims = common.count_dims(model)
    del model
    print(f"bench grpo: {args.precision} matmul peak {peak['gflops']} GFLOP/s; our side ...", flush=True)
    results = {"ours": run_side(Path(sys.executable), "ours", spec_path, args.timeout)}
    if not args.skip_peer:
        print("bench grpo: TRL 1.16 side ...", flush=True)
        results["trl"] = run_side(ensure_trl_venv("1.16.0"), "trl", spec_path, args.timeout)
    # work per step: sampling 16 x (prompt + 48) tokens (one forward each), training one forward+backward
    from rlhfkit.models.generation import encode_prompts
    from rlhfkit.models.loading import load_tokenizer

    prompt_len = sum(len(q) for q in encode_prompts(load_tokenizer("smollm2-135m"), prompts)) / len(prompts)
    n, new = spec["batch_size"], args.max_new_tokens
    sample_flops = common.forward_flops(dims, n, prompt_len + new, new)
    train_flops = common.train_flops(dims, n, prompt_len + new - 1, new, lora=True)
    rows = []
    for side, r in results.items():
        gen = r["median_generate_s"]
        passes = common.median(r.get("train_pass_seconds", [])) if r.get("train_pass_seconds") else None
        rows.append({
            "side": side, "s/step": r["median_step_s"], "sampling s": gen, "sampling tok/s": n * new / gen,
            "sampling % peak": 100 * sample_flops / gen / 1e9 / peak["gflops"],
            "train passes % peak": 100 * train_flops / passes / 1e9 / peak["gflops"] if passes else None,
            "peak RSS GB": r["peak_rss_bytes"] / 1e9, "rewards": r["rewards"]})
    if "trl" in results:
        rows[0]["x trl"] = results["trl"]["median_step_s"] / results["ours"]["median_step_s"]
        rows[0]["mem / trl"] = results["ours"]["peak_rss_bytes"] / results["trl"]["peak_rss_bytes"]
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    head = ["side", "s/step", "x trl", "peak RSS GB", "mem / trl", "sampling tok/s", "sampling % peak",
            "train passes % peak"]
    table = common.markdown_table(head, rows)
    md = (f"# GRPO bench {stamp}\n\n{platform.processor() or platform.machine()}, {args.threads} threads, {args.precision} peak "
          f"{peak['gflops']} GFLOP/s; SmolLM2-135M LoRA r16 {args.precision}, 16 completions (4 prompts x 4) per step, "
          f"{new} new tokens, {args.steps} timed + {args.warmup} warm-up steps; ours {args.ours_options or 'default'}, "
          f"TRL gradient checkpointing {results.get('trl', {}).get('gradient_checkpointing')}\n\n" + table + "\n")
    (args.out / f"grpo-{stamp}.md").write_text(md)
    (args.out / f"grpo-{stamp}.json").write_text(json.dumps({"spec": spec, "peak": peak, "results": results,
                                                             "rows": rows}, indent=1))
    print(md)


if __name__ == "__main__":
    main()
