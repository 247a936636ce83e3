"""DPO benchmark: rlhfkit's DPO against TRL 1.16's DPOTrainer, one run for both sides.

    .venv/bin/python bench/dpo.py [--steps 3] [--warmup 1] [--batch-size 8]
    make bench ARGS="--cases dpo --steps 3"

SmolLM2-135M-Instruct with LoRA (r 16, alpha 32, all linear layers), the reference the policy with
its adapters off on both sides, the same conversational pairs (the first prompts of
rlhfkit/assets/prompts_train.jsonl with a fixed polite and a fixed rude reply of about 30 tokens),
the same batch, the sigmoid loss, beta 0.1, float32 by default (bf16 is emulated on a CPU without
native bf16). Each side in its own subprocess, one after the other. Reports samples (pairs) per
second and peak RSS; writes bench/results/dpo-<time>.{md,json}.
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
sys.path.insert(0, str(ROOT))  # this checkout's rlhfkit, whatever the venv has installed

import common  # noqa: E402
from peers import ensure_trl_venv  # noqa: E402

CHOSEN = ("Thank you for telling me. I understand this is frustrating; let's talk it through calmly and find a "
          "fair way forward together.")
REJECTED = ("Honestly, that is your own stupid problem. Stop whining at me and deal with it yourself, I could not "
            "care less about it.")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3, help="timed steps per side (after the warm-up)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps per side")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per optimisation step")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--ours-options", type=json.loads, default={}, help="extra DPOConfig fields for our side, JSON")
    p.add_argument("--trl-options", type=json.loads, default={}, help="extra trl DPOConfig fields, JSON")
    p.add_argument("--skip-peer", action="store_true")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--out", type=Path, default=BENCH / "results")
    return p.parse_args(argv)


def run_side(python: Path, side: str, spec: Path, timeout: float) -> dict:
    proc = subprocess.run([str(python), str(BENCH / "dpo_sides.py"), side, str(spec)], capture_output=True,
                          text=True, timeout=timeout, cwd=str(ROOT))
    lines = [x for x in proc.stdout.splitlines() if x.startswith(common.RESULT_PREFIX)]
    if proc.returncode or not lines:
        raise SystemExit(f"bench dpo: the {side} side failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len(common.RESULT_PREFIX):])


def main(argv=None) -> None:
    args = parse_args(argv)
    from rlhfkit.data import load_prompts, prompt_text
    from rlhfkit.models import resolve

    n = args.batch_size * (args.steps + args.warmup)
    prompts = [prompt_text(p) for p in load_prompts(ROOT / "rlhfkit" / "assets" / "prompts_train.jsonl")]
    prompts = (prompts * (n // len(prompts) + 1))[:n]
    scratch = tempfile.mkdtemp(prefix="dpo-bench-")
    spec = {"policy": resolve("smollm2-135m"), "pairs": [[p, CHOSEN, REJECTED] for p in prompts],
            "batch_size": args.batch_size, "lora_r": 16, "lora_alpha": 32, "learning_rate": 5e-5, "seed": 0,
            "threads": args.threads, "warmup": args.warmup, "steps": args.steps, "scratch": scratch,
            "precision": args.precision, "ours_options": args.ours_options, "trl_options": args.trl_options}
    spec_path = Path(scratch) / "spec.json"
    spec_path.write_text(json.dumps(spec))
    print("bench dpo: our side ...", flush=True)
    results = {"ours": run_side(Path(sys.executable), "ours", spec_path, args.timeout)}
    if not args.skip_peer:
        print("bench dpo: TRL 1.16 side ...", flush=True)
        results["trl"] = run_side(ensure_trl_venv("1.16.0"), "trl", spec_path, args.timeout)
    rows = []
    for side, r in results.items():
        rows.append({"side": side, "s/step": r["median_step_s"], "samples/s": r["samples_per_s"],
                     "peak RSS GB": r["peak_rss_bytes"] / 1e9, "tokens/seq": r.get("mean_tokens_per_sequence"),
                     "first loss": (r.get("losses") or [None])[0]})
    if "trl" in results:
        rows[0]["x trl"] = results["ours"]["samples_per_s"] / results["trl"]["samples_per_s"]
        rows[0]["mem / trl"] = results["ours"]["peak_rss_bytes"] / results["trl"]["peak_rss_bytes"]
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    head = ["side", "samples/s", "x trl", "s/step", "peak RSS GB", "mem / trl", "tokens/seq", "first loss"]
    table = common.markdown_table(head, rows, digits=3)
    md = (f"# DPO bench {stamp}\n\n{platform.processor() or platform.machine()}, {args.threads} threads; "
          f"SmolLM2-135M LoRA r16 {args.precision}, {args.batch_size} pairs per step, sigmoid loss, beta 0.1, "
          f"reference = adapters off; {args.steps} timed + {args.warmup} warm-up steps; ours "
          f"{args.ours_options or 'default'}, TRL gradient checkpointing "
          f"{results.get('trl', {}).get('gradient_checkpointing')}\n\n" + table + "\n")
    (args.out / f"dpo-{stamp}.md").write_text(md)
    (args.out / f"dpo-{stamp}.json").write_text(json.dumps({"spec": {k: v for k, v in spec.items() if k != "pairs"},
                                                            "results": results, "rows": rows}, indent=1))
    print(md)


if __name__ == "__main__":
    main()
