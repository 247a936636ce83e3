"""PPO benchmark: rlhfkit against trl 1.12.0 and against the machine's matmul peak.

    make bench ARGS="--cases tiny-gpt2 --steps 2"
    .venv/bin/python bench/run.py --cases smollm2-full-fp32 smollm2-full-bf16 --steps 4

For each case, each side runs in its own subprocess, one after the other: ours
(bench/ours.py, project venv) and the peer (bench/peer_trl.py, bench/.venv-trl112,
created here on first use). Prints a markdown table and writes it with the raw
JSON to bench/results/<timestamp>.{md,json}. See bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime
from importlib import metadata
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
from analysis import analyse, fmt, render  # noqa: E402
from cases import OURS_ONLY, case_options, expand_cases, split_case  # noqa: E402
from peers import ensure_trl_venv  # noqa: E402

PEER_TRL_VERSION = "1.12.0"  # the last TRL with a PPOTrainer (trl.experimental.ppo); its venv: bench/.venv-trl112
PEER_TRL = f"trl=={PEER_TRL_VERSION}"
RESULTS = BENCH / "results"
PEER_CACHE = RESULTS / "peer-cache.json"
# Pad token to use when a tokenizer pads with its EOS (SmolLM2: <|im_end|> ends every chat turn).
PAD_FALLBACK = {"smollm2-135m": "<|endoftext|>"}
# Reference points measured on this machine (issue): trl 1.12 at 16/4/4/48, full, fp32.
PEER_REF_S, REF_TOKENS = 96.0, 16 * 98 * 4


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=["default"],
                   help="cases (MODEL-MODE-PRECISION, e.g. smollm2-lora-bf16; MODEL is tiny-gpt2 or smollm2) or "
                        "groups: tiny-gpt2 (= tiny-gpt2-full-fp32), smollm2 (its 4 cases), default, all; "
                        "a case ending in -ckpt, -compile and/or -static (e.g. smollm2-lora-bf16-ckpt-compile-static) "
                        "runs only our side, with activation checkpointing / torch.compile / a static KV cache; "
                        "comma- or space-separated")
    p.add_argument("--steps", type=int, default=4, help="timed PPO steps per side (after the warm-up)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps per side")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--mini-batch-size", type=int, default=4)
    p.add_argument("--ppo-epochs", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=48, help="response length (every response has exactly this)")
    p.add_argument("--prompt-tokens", type=int, default=50, help="query length (every query has exactly this)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for every side and the matmul peak")
    p.add_argument("--learning-rate", type=float, default=3e-6)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--kl-coef", type=float, default=0.05)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-peer", action="store_true", help="time only our side")
    p.add_argument("--skip-ours", action="store_true", help="time only the peer (fills the peer cache)")
    p.add_argument("--fresh-peer", action="store_true", help="re-measure the peer even when the cache has the case")
    p.add_argument("--cached-peer", action="store_true",
                   help="use the peer's cached figures where the cache has the case; never run the peer")
    p.add_argument("--timeout", type=float, default=None, help="seconds allowed per side and case")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the time estimate, run nothing")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = p.parse_args(argv)
    args.cases = expand_cases(args.cases)
    if args.batch_size % args.mini_batch_size:
        p.error("--batch-size must be a multiple of --mini-batch-size (trl needs it too)")
    return args


# ---------------------------------------------------------------- peer venv


def project_versions() -> dict:
    return {name: metadata.version(name) for name in ("torch", "transformers", "peft", "accelerate", "datasets")}


def peer_versions(python: Path) -> dict:
    code = ("import json; from importlib import metadata as m; print(json.dumps({n: m.version(n) for n in "
            "('trl','torch','transformers','peft','accelerate','datasets')}))")
    return json.loads(subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True).stdout)


# ---------------------------------------------------------------- assets


def prepare_case_assets(model_name: str, args) -> dict:
    """Policy folder, shared reward-model folder (tokenizer beside it) and the queries."""
    from transformers import AutoTokenizer

    from rlhfkit.models import cache_dir, resolve

    policy = resolve(model_name)
    rm_dir = cache_dir() / "bench" / f"{model_name}-rm-v1"
    common.build_reward_model(policy, rm_dir, seed=args.seed, pad_token=PAD_FALLBACK.get(model_name))
    tokenizer = AutoTokenizer.from_pretrained(str(rm_dir))
    texts = [json.loads(line)["prompt"] for line in
             (ROOT / "rlhfkit" / "assets" / "prompts_train.jsonl").read_text(encoding="utf-8").splitlines() if line]
    n = args.batch_size * (args.steps + args.warmup)
    queries = common.build_prompts(tokenizer, texts, n, args.prompt_tokens)
    return {"policy": policy, "reward_model": str(rm_dir), "queries": queries}


def make_spec(case: str, assets: dict, args) -> dict:
    _, mode, prec = split_case(case)
    return {
        "case": case, "policy": assets["policy"], "reward_model": assets["reward_model"], "queries": assets["queries"],
        "lora": mode == "lora", "lora_r": args.lora_r, "lora_alpha": args.lora_alpha, "precision": prec,
        "batch_size": args.batch_size, "mini_batch_size": args.mini_batch_size, "ppo_epochs": args.ppo_epochs,
        "max_new_tokens": args.max_new_tokens, "steps": args.steps, "warmup": args.warmup, "threads": args.threads,
        "learning_rate": args.learning_rate, "temperature": args.temperature, "kl_coef": args.kl_coef,
        "vf_coef": 0.1, "seed": args.seed, **{name: False for name in OURS_ONLY.values()}, **case_options(case)[1],
    }


# ---------------------------------------------------------------- running a side


def run_side(python: Path, script: str, spec: dict, log_path: Path, threads: int, timeout: float | None) -> dict:
    """Run one side in a fresh process; its result JSON plus the OS's peak RSS of that process."""
    spec_path = log_path.with_suffix(".spec.json")
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"})
    env.pop("PYTHONPATH", None)
    start = time.perf_counter()
    result = None
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen([str(python), str(BENCH / script), str(spec_path)], cwd=str(ROOT), env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in proc.stdout:
            log.write(line)
            if line.startswith(common.RESULT_PREFIX):
                result = json.loads(line[len(common.RESULT_PREFIX):])
            elif line.strip() and "%|" not in line:  # tqdm refreshes arrive as lines (universal newlines)
                print(f"    | {line.rstrip()[:160]}", flush=True)
            if timeout is not None and time.perf_counter() - start > timeout:
                proc.kill()
                break
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    spec_path.unlink(missing_ok=True)
    if result is None or proc.returncode != 0:
        return {"error": f"exit code {proc.returncode}; log: {log_path.relative_to(ROOT)}", "wall_s": wall}
    result["os_peak_rss_bytes"] = usage.ru_maxrss * 1024  # Linux reports KiB
    result["process_wall_s"] = wall
    return result


def peer_cache_key(case: str, args, versions: dict) -> str:
    fields = {"case": case, "batch": args.batch_size, "mini": args.mini_batch_size, "epochs": args.ppo_epochs,
              "new_tokens": args.max_new_tokens, "prompt_tokens": args.prompt_tokens, "threads": args.threads,
              "lr": args.learning_rate, "temperature": args.temperature, "kl": args.kl_coef, "seed": args.seed,
              "lora": [args.lora_r, args.lora_alpha], "versions": versions, "cpu": cpu_model()}
    # The step count is not part of the key: a median s/step measured over 3 steps serves a later
    # run of 5 (the cache entry keeps its own per-step times and the table notes how many).
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def load_peer_cache() -> dict:
    try:
        return json.loads(PEER_CACHE.read_text())
    except (OSError, ValueError):
        return {}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def estimate_seconds(args) -> float:
    """Rough wall time: the peer scaled from the issue's 96 s reference, ours assumed as slow, plus loading."""
    scale = args.batch_size * (args.prompt_tokens + args.max_new_tokens) * args.ppo_epochs / REF_TOKENS
    total = 0.0
    for case in args.cases:
        model, _, _ = split_case(case)
        per_step = 1.0 if model == "tiny-gpt2" else PEER_REF_S * scale
        sides = (0 if args.skip_ours else 1) + (0 if args.skip_peer or args.cached_peer else 1)
        total += sides * ((args.steps + args.warmup) * per_step + 20)
    return total


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    scripts = {"dpo": "dpo", "grpo": "grpo", "sampling": "sampling"}  # benches with a script of their own
    if argv[:1] == ["--cases"] and len(argv) > 1 and argv[1] in scripts:  # bench/<name>.py, with its own flags
        import importlib

        importlib.import_module(scripts[argv[1]]).main(argv[2:])
        return 0
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    est = estimate_seconds(args)
    print(f"bench: cases {', '.join(args.cases)}; {args.steps} timed + {args.warmup} warm-up steps per side; "
          f"rough estimate {est / 60:.0f} min (a smollm2 peer step at 16/4/4/48 takes ~96 s)")
    if args.dry_run:
        return 0
    if args.cached_peer and args.fresh_peer:
        raise SystemExit("--cached-peer and --fresh-peer contradict each other")
    peer_python = None if args.skip_peer else ensure_trl_venv(PEER_TRL_VERSION)
    import torch

    torch.set_num_threads(args.threads)
    print("bench: measuring the matmul peak (fp32, bf16)")
    peaks_start = {"fp32": common.matmul_peak("float32"), "bf16": common.matmul_peak("bfloat16")}
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    logs = args.out / "logs"
    logs.mkdir(exist_ok=True)
    versions = peer_versions(peer_python) if peer_python else {}
    cache = load_peer_cache()
    report = {"timestamp": stamp, "cpu": cpu_model(), "cases": args.cases,
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "project_versions": project_versions(), "peer_versions": versions, "results": {}}
    for case in args.cases:
        model_name, _, _ = split_case(case)
        print(f"bench: {case}: preparing the shared reward model and prompts")
        spec = make_spec(case, prepare_case_assets(model_name, args), args)
        entry: dict = {}
        if not args.skip_ours:
            print(f"bench: {case}: ours (rlhfkit)")
            entry["ours"] = run_side(Path(sys.executable), "ours.py", spec, logs / f"{stamp}-{case}-ours.log",
                                     args.threads, args.timeout)
            print(f"bench: {case}: ours median {fmt(entry['ours'].get('median_step_s'))} s/step "
                  f"{entry['ours'].get('error', '')}")
        if peer_python is None or case_options(case)[1]:
            entry["peer_status"] = "skipped"
        else:
            key = peer_cache_key(case, args, versions)
            if key in cache and not args.fresh_peer:
                entry["peer"], entry["peer_status"] = cache[key]["result"], "cached"
                entry["peer_measured_at"] = cache[key]["measured_at"]
                print(f"bench: {case}: peer from cache ({entry['peer_measured_at']}); --fresh-peer re-measures")
            elif args.cached_peer:
                entry["peer_status"] = "skipped"
                print(f"bench: {case}: no cached peer figure; skipped (--cached-peer)")
            else:
                print(f"bench: {case}: peer ({PEER_TRL})")
                entry["peer"] = run_side(peer_python, "peer_trl.py", spec, logs / f"{stamp}-{case}-peer.log",
                                         args.threads, args.timeout)
                entry["peer_status"] = "measured"
                print(f"bench: {case}: peer median {fmt(entry['peer'].get('median_step_s'))} s/step "
                      f"{entry['peer'].get('error', '')}")
                if "error" not in entry["peer"]:
                    cache = load_peer_cache()
                    cache[key] = {"case": case, "measured_at": stamp, "result": entry["peer"]}
                    PEER_CACHE.write_text(json.dumps(cache, indent=1))
        report["results"][case] = entry
    peaks_end = {"fp32": common.matmul_peak("float32"), "bf16": common.matmul_peak("bfloat16")}
    peaks = {k: max(peaks_start[k]["gflops"], peaks_end[k]["gflops"]) for k in ("fp32", "bf16")}
    report["matmul_peak"] = peaks
    report["matmul_peak_runs"] = {"start": peaks_start, "end": peaks_end}
    for case in args.cases:
        entry = report["results"][case]
        entry["analysis"] = analyse(case, entry.get("ours"), entry.get("peer"), peaks, args)
    reference = "smollm2-full-fp32"
    if reference not in args.cases and versions and any(c.startswith("smollm2") for c in args.cases):
        hit = load_peer_cache().get(peer_cache_key(reference, args, versions))
        if hit:  # the bf16 goal (>= 4x the peer's full fp32) still gets its reference
            report["peer_full_fp32"] = {"median_step_s": hit["result"]["median_step_s"], "measured_at": hit["measured_at"]}
    text = render(report)
    print()
    print(text)
    (args.out / f"{stamp}.md").write_text(text, encoding="utf-8")
    (args.out / f"{stamp}.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    md = (args.out / f"{stamp}.md").resolve()
    print(f"bench: wrote {md.relative_to(ROOT) if md.is_relative_to(ROOT) else md} and .json")
    failed = [c for c in args.cases for s in ("ours", "peer") if "error" in (report["results"][c].get(s) or {})]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
