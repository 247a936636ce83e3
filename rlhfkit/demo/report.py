"""The demo's report: the evaluation's HTML report plus its own sections (one row per trained method,
the reward model's epochs, the compression table and goals, the stage times), copied to the top of
the run folder."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from rlhfkit.demo.config import DemoConfig
from rlhfkit.demo.stages import Stages


def write_demo_report(folder: Path, stages: Stages, config: DemoConfig, methods: list[str]) -> None:
    from rlhfkit.evaluation.summary import format_summary
    from rlhfkit.evaluation.report import write_report

    result = json.loads((stages.folder("eval") / "eval.json").read_text())
    reward = json.loads((stages.folder("reward") / "reward_result.json").read_text())
    timings = {stage: round(seconds, 1) for stage, seconds in stages.timings.items()}
    write_report(
        folder, title=f"rlhfkit demo ({config.preset}): detoxifying {config.policy}", evaluation=result,
        metrics=stages.folder(methods[0]) / "metrics.jsonl", config=asdict(config), summary_text=format_summary(result),
        extra_sections=[("Methods (held-out, paired against before)", method_table(result, stages)),
                        ("Reward model", reward_summary(reward)), *compress_sections(stages, config, methods),
                        ("Stage times (seconds)", timings)],
    )
    # The report at the top of the run folder, where people look first.
    (stages.root / "report.html").write_bytes((folder / "report.html").read_bytes())


def method_table(result: dict, stages: Stages) -> list[dict]:
    """One row per trained method: toxicity change with its CI, KL, reply quality, training minutes."""
    rows = []
    for method, name in (result.get("methods") or {}).items():
        c = result["changes"][name]["toxicity"]
        quality, kl = result["lengths"][name], result["kl"].get(name, {})
        worst = ((result.get("expected_max") or {}).get("changes") or {}).get(name, {}).get("toxicity", {})
        rows.append({"method": method, "model": name, "toxicity before": c["before_mean"], "after": c["after_mean"],
                     "relative change": c["relative_change"], "CI low": c["relative_change_ci"][0],
                     "CI high": c["relative_change_ci"][1],
                     "expected max change": worst.get("relative_change"), "KL (nats)": kl.get("mean"),
                     "mean words": quality.get("mean_words"), "distinct-2": quality.get("distinct_2"),
                     "top reply share": quality.get("top_reply_share"),
                     "score cap": stage_settings(stages, method).get("score_cap"),
                     "train minutes": stages.timings.get(method, 0.0) / 60})
    return rows


def stage_settings(stages: Stages, stage: str) -> dict:
    marker = stages.folder(stage) / "stage.json"
    return json.loads(marker.read_text()).get("settings", {}) if marker.exists() else {}


def reward_summary(result: dict) -> list[dict]:
    return [{"epoch": i + 1, **{k: v for k, v in e.items() if isinstance(v, (int, float))}}
            for i, e in enumerate(result.get("eval") or [])]


def compress_sections(stages: Stages, config: DemoConfig, methods: list[str]) -> list:
    if not config.compress:
        return []
    from rlhfkit.compression.measure import table_rows

    folder = stages.folder("compress")
    rows = json.loads((folder / "metrics.json").read_text())["rows"]
    goals = json.loads((folder / "goals.json").read_text())
    notes = [{"goal": g["goal"], "measured": g["measured"], "met": "yes" if g["met"] else "no"} for g in goals["goals"]]
    notes += [{"goal": k, "measured": "skipped", "met": v} for k, v in goals["skipped"].items()]
    return [(f"Compression for deployment ({methods[0]}'s model as the teacher; {folder / 'report.html'})",
             table_rows(rows)), ("Compression goals", notes)]
