"""PPO benchmark: rlhfkit against trl 1.12.0 and against the machine's matmul peak.

    make bench ARGS="--cases tiny-gpt2 --steps 2"
    .venv/bin/python bench/run.py --cases smollm2-full-fp32 smollm2-full-bf16 --steps 4

For each case, each side runs in its own subprocess, one after the other: ours
(bench/ours.py, project venv) and the peer (bench/peer_trl.py, bench/.venv-trl,
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

PEER_VENV = BENCH / ".venv-trl"
PEER_TRL = "trl==1.12.0"
RESULTS = BENCH / "results"
PEER_CACHE = RESULTS / "peer-cache.json"
MODELS = {"tiny-gpt2": "tiny-gpt2", "smollm2": "smollm2-135m"}
# Pad token to use when a tokenizer pads with its EOS (SmolLM2: <|im_end|> ends every chat turn).
PAD_FALLBACK = {"smollm2-135m": "<|endoftext|>"}
ALL_CASES = [f"{m}-{mode}-{prec}" for m in MODELS for mode in ("full", "lora") for prec in ("fp32", "bf16")]
# Any case + these suffixes (in any order): our side with a PPOConfig switch on: activation checkpointing,
# torch.compile of the layers, a static sampling KV cache. trl's PPO loop uses none of them, so such
# rows have no peer figure of their own.
OURS_ONLY = {"-ckpt": "gradient_checkpointing", "-compile": "compile", "-static": "static_cache"}
GROUPS = {
    "tiny-gpt2": ["tiny-gpt2-full-fp32"],
    "smollm2": [c for c in ALL_CASES if c.startswith("smollm2")],
    "default": ["tiny-gpt2-full-fp32"] + [c for c in ALL_CASES if c.startswith("smollm2")],
    "all": ALL_CASES,
}
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


def expand_cases(items: list[str]) -> list[str]:
    out: list[str] = []
    for item in (x for raw in items for x in raw.split(",") if x):
        names = GROUPS.get(item, [item])
        for name in names:
            if case_options(name)[0] not in ALL_CASES:
                raise SystemExit(f"unknown case {name!r}; cases: {', '.join(ALL_CASES)}; groups: {', '.join(GROUPS)}")
            if name not in out:
                out.append(name)
    return out


def case_options(case: str) -> tuple[str, dict]:
    """The base case (MODEL-MODE-PRECISION) and the PPOConfig switches its suffixes turn on."""
    options = {}
    while True:
        suffix = next((x for x in OURS_ONLY if case.endswith(x)), None)
        if suffix is None:
            return case, options
        options[OURS_ONLY[suffix]] = True
        case = case.removesuffix(suffix)


def split_case(case: str) -> tuple[str, str, str]:
    model, mode, prec = case_options(case)[0].rsplit("-", 2)
    return MODELS[model], mode, prec


# ---------------------------------------------------------------- peer venv


def project_versions() -> dict:
    return {name: metadata.version(name) for name in ("torch", "transformers", "peft", "accelerate", "datasets")}


def peer_requirements() -> list[str]:
    v = project_versions()
    return [PEER_TRL] + [f"{n}=={v[n]}" for n in ("transformers", "peft", "accelerate", "datasets")]


def ensure_peer_venv() -> Path:
    """bench/.venv-trl with trl 1.12.0 on the project's own torch/transformers/peft/accelerate/datasets."""
    import fcntl

    python = PEER_VENV / "bin" / "python"
    stamp = PEER_VENV / ".bench-installed"
    reqs = peer_requirements()
    import tempfile

    lock_path = Path(tempfile.gettempdir()) / "rlhfkit-bench-venv-trl.lock"
    with open(lock_path, "w") as lock:  # two bench runs never build it at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists() and stamp.exists() and stamp.read_text().split() == reqs:
            return python
        print(f"bench: installing the peer venv {PEER_VENV.relative_to(ROOT)}: {' '.join(reqs)} (a minute or two, once)")
        if not (PEER_VENV / "pyvenv.cfg").exists() or not python.exists():
            base = getattr(sys, "_base_executable", None) or "python3"
            subprocess.run([base, "-m", "venv", "--clear", str(PEER_VENV)], check=True)
        # Never let pip run as the base interpreter (a half-made venv would install globally).
        probe = subprocess.run([str(python), "-c", "import sys; print(sys.prefix != sys.base_prefix)"],
                               capture_output=True, text=True)
        if probe.stdout.strip() != "True":
            raise SystemExit(f"bench: {python} is not a virtual environment; remove {PEER_VENV} and run again")
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), *reqs],
                       check=True)
        stamp.write_text("\n".join(reqs) + "\n")
    return python


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


# ---------------------------------------------------------------- analysis


def analyse(case: str, ours: dict | None, peer: dict | None, peaks: dict, args) -> dict:
    """FLOPs per step (from our side's counts, else the peer's), rates and shares of the matmul peak."""
    _, mode, prec = split_case(case)
    src = ours if ours and "error" not in ours else peer if peer and "error" not in peer else None
    row: dict = {"case": case}
    if src is None:
        return row
    policy, reward = common.Dims(**src["policy_dims"]), common.Dims(**src["reward_dims"])
    if mode == "lora" and policy.lora == 0 and ours and "error" not in ours:
        policy = common.Dims(**ours["policy_dims"])
    q = src.get("query_len") or args.prompt_tokens
    r = src.get("response_len") or args.max_new_tokens
    flops = common.ppo_step_flops(policy, reward, args.batch_size, q, r, args.ppo_epochs, mode == "lora")
    row["flops"] = flops
    row["peer_flops"] = common.peer_step_flops(policy, reward, args.batch_size, q, r, args.ppo_epochs, mode == "lora")
    peak = peaks["bf16" if prec == "bf16" else "fp32"]
    row["peak_gflops"] = peak
    if ours and "error" not in ours and ours.get("median_step_s"):
        step = ours["median_step_s"]
        train_s = (ours.get("phases_median_s") or {}).get("training")
        row["ours_step_gflops"] = flops["total"] / step / 1e9
        row["ours_step_share"] = row["ours_step_gflops"] / peak
        if train_s:
            row["ours_train_gflops"] = flops["training"] / train_s / 1e9
            row["ours_train_share"] = row["ours_train_gflops"] / peak
        passes_s = (ours.get("phases_median_s") or {}).get("train_passes")
        if passes_s:
            row["ours_passes_gflops"] = flops["training"] / passes_s / 1e9
            row["ours_passes_share"] = row["ours_passes_gflops"] / peak
        weights = ours["policy_weights_bytes"] + ours["reward_weights_bytes"]
        peak_rss = ours.get("os_peak_rss_bytes") or ours["peak_rss_bytes"]
        row["ours_peak_rss_gb"] = peak_rss / 1e9
        row["ours_mem_over_weights"] = (peak_rss - ours["baseline_rss_bytes"]) / weights
        row["weights_gb"] = weights / 1e9
    if peer and "error" not in peer and peer.get("median_step_s"):
        row["peer_step_gflops"] = flops["total"] / peer["median_step_s"] / 1e9
        row["peer_peak_rss_gb"] = (peer.get("os_peak_rss_bytes") or peer["peak_rss_bytes"]) / 1e9
        if ours and "error" not in ours and ours.get("median_step_s"):
            row["speedup"] = peer["median_step_s"] / ours["median_step_s"]
    return row


def fmt(x, spec=".2f", suffix=""):
    return "-" if x is None else f"{x:{spec}}{suffix}"


def render(report: dict) -> str:
    args = report["settings"]
    peaks = report["matmul_peak"]
    lines = [
        f"# PPO benchmark {report['timestamp']}",
        "",
        f"Machine: {report['cpu']}, {args['threads']} threads. Settings: batch {args['batch_size']}, mini-batch "
        f"{args['mini_batch_size']}, {args['ppo_epochs']} PPO epochs, {args['prompt_tokens']} prompt + "
        f"{args['max_new_tokens']} response tokens, {args['steps']} timed steps after {args['warmup']} warm-up. "
        f"Peer: trl {report.get('peer_versions', {}).get('trl', '-')} (trl.experimental.ppo.PPOTrainer). "
        f"Matmul peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s "
        f"(best of start/end of run).",
        "",
        "| case | ours s/step | peer s/step | speed-up | ours peak RSS GB | ours mem / weights | peer peak RSS GB "
        "| TFLOP/step | train GFLOP/s | train % peak | passes % peak | step % peak | peak GFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for case in report["cases"]:
        c = report["results"][case]
        a = c["analysis"]
        ours, peer = c.get("ours") or {}, c.get("peer") or {}
        ours_s = fmt(ours.get("median_step_s")) if "error" not in ours else "error"
        if c.get("peer_status") == "skipped":
            peer_s = "skipped"
        elif "error" in peer:
            peer_s = "error"
        else:
            peer_s = fmt(peer.get("median_step_s")) + (" (cached)" if c.get("peer_status") == "cached" else "")
        lines.append(
            f"| {case} | {ours_s} | {peer_s} | {fmt(a.get('speedup'), '.2f', 'x')} "
            f"| {fmt(a.get('ours_peak_rss_gb'))} | {fmt(a.get('ours_mem_over_weights'), '.2f', 'x')} "
            f"| {fmt(a.get('peer_peak_rss_gb'))} | {fmt((a.get('flops') or {}).get('total', None) and a['flops']['total'] / 1e12, '.3g')} "
            f"| {fmt(a.get('ours_train_gflops'), '.1f')} | {fmt(a.get('ours_train_share') and 100 * a['ours_train_share'], '.0f', '%')} "
            f"| {fmt(a.get('ours_passes_share') and 100 * a['ours_passes_share'], '.0f', '%')} "
            f"| {fmt(a.get('ours_step_share') and 100 * a['ours_step_share'], '.0f', '%')} | {fmt(a.get('peak_gflops'), '.0f')} |"
        )
        if c.get("peer_status") == "cached":
            notes.append(f"- {case}: peer figure from bench/results/peer-cache.json, measured {c.get('peer_measured_at')} "
                         f"over {len(peer.get('step_seconds') or [])} timed steps.")
        for side in ("ours", "peer"):
            if "error" in (c.get(side) or {}):
                notes.append(f"- {case}: {side} failed: {c[side]['error']}")
    lines += ["", "Time split (median s/step): ours generation / reward / rollout forwards / training / other; "
              "peer generation / value+reward forwards / reference forward / training.", ""]
    for case in report["cases"]:
        c = report["results"][case]
        o = (c.get("ours") or {}).get("phases_median_s") or {}
        p = (c.get("peer") or {}).get("phases_median_s") or {}
        lines.append(f"- {case}: ours " + " / ".join(fmt(o.get(k)) for k in ("generation", "reward", "rollout", "training", "other"))
                     + "; peer " + " / ".join(fmt(p.get(k)) for k in ("generation", "value_reward", "reference", "training")))
    lines += ["", "Reward / KL per step (warm-up first) of our side:", ""]
    for case in report["cases"]:
        curves = (report["results"][case].get("ours") or {}).get("curves") or []
        if curves:
            lines.append(f"- {case}: " + ", ".join(f"{fmt(c['reward'], '.3f')}/{fmt(c['kl'], '.3f')}" for c in curves))
    goals = goal_checks(report)
    if goals:
        lines += ["", "Goals (issue):", ""] + [f"- {g}" for g in goals]
    if notes:
        lines += ["", "Notes:", ""] + notes
    return "\n".join(lines) + "\n"


def goal_checks(report: dict) -> list[str]:
    res = report["results"]

    def get(case, side, key):
        c = res.get(case) or {}
        return (c.get(side) or {}).get(key) if side else (c.get("analysis") or {}).get(key)

    out = []
    peer32 = get("smollm2-full-fp32", "peer", "median_step_s")
    if peer32 is None and report.get("peer_full_fp32"):  # not a case of this run: the cached figure
        peer32 = report["peer_full_fp32"]["median_step_s"]
        out.append(f"(the peer's smollm2-full-fp32 figure below is from the cache, measured "
                   f"{report['peer_full_fp32']['measured_at']}: {peer32:.1f} s/step)")
    for case in ("smollm2-full-fp32", "smollm2-lora-fp32"):
        s = get(case, None, "speedup")
        if s is not None:
            out.append(f"{case}: {s:.2f}x the peer's steps/s (goal >= 2x): {'met' if s >= 2 else 'NOT met'}")
    for case in (c for c in report["cases"] if c.startswith("smollm2") and split_case(c)[2] == "bf16"):
        ours = get(case, "ours", "median_step_s")
        if ours and peer32:
            r = peer32 / ours
            out.append(f"{case}: {r:.2f}x the peer's full fp32 steps/s (goal >= 4x): {'met' if r >= 4 else 'NOT met'}")
    for case in report["cases"]:
        share, passes = get(case, None, "ours_train_share"), get(case, None, "ours_passes_share")
        if case.startswith("smollm2") and share is not None:
            out.append(f"{case}: training phase (passes + optimiser steps) at {100 * share:.0f}% of the matmul peak, "
                       f"its forward+backward passes alone at {fmt(passes and 100 * passes, '.0f', '%')} (goal >= 60%): "
                       f"{'met' if share >= 0.6 else 'passes only' if (passes or 0) >= 0.6 else 'NOT met'}")
        mem = get(case, None, "ours_mem_over_weights")
        if case.startswith("smollm2-lora") and mem is not None:
            out.append(f"{case}: peak memory {mem:.2f}x the weights (goal <= 1.3x): {'met' if mem <= 1.3 else 'NOT met'}")
    for prec_pair in (("smollm2-full-fp32", "smollm2-full-bf16"), ("smollm2-lora-fp32", "smollm2-lora-bf16")):
        a, b = (get(c, "ours", "curves") for c in prec_pair)
        if a and b:
            mean = lambda xs, k: sum(x[k] for x in xs) / len(xs)  # noqa: E731
            out.append(f"{prec_pair[1]} vs fp32 over {min(len(a), len(b))} steps: mean reward {mean(b, 'reward'):.3f} vs "
                       f"{mean(a, 'reward'):.3f}, mean KL {mean(b, 'kl'):.3f} vs {mean(a, 'kl'):.3f} "
                       "(goal: no worse; needs --steps 20 to mean anything)")
    return out


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
    peer_python = None if args.skip_peer else ensure_peer_venv()
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
