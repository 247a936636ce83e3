"""The PPO bench's analysis: FLOPs and rates per case against the matmul peak, the markdown report, and
the issue's goals checked against the measured rows."""

from __future__ import annotations

import common
from cases import split_case

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
