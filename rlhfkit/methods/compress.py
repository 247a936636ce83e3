"""Every compression of one tuned model, and their deployment table: the demo's `--compress` stage
and the measured table in docs/deploy.md.

    from rlhfkit.methods.compress import CompressSuite, run_suite
    rows = run_suite("runs/demo/model", "runs/demo/compress", CompressSuite())

Into `out/`: quantized folders (int8-weight, int8-dynamic, int4-weight), pruned ones (magnitude and
Wanda at the same unstructured sparsity, Wanda 2:4, depth by block influence), the distilled
student with half the blocks and the same layer-dropped student without distillation, then
`out/metrics.json` and `out/report.html` comparing them all with the teacher on the same held-out
prompts, and `out/goals.json`: the issue's goals, each with its measured figure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rlhfkit.errors import UserError


@dataclass
class CompressSuite:
    schemes: list[str] = field(default_factory=lambda: ["int8-weight", "int8-dynamic", "int4-weight"])
    sparsity: float = 0.5
    pattern: str | None = "2:4"
    depth_fraction: float = 0.25          # blocks dropped by depth pruning
    distill: bool = True
    student_fraction: float = 0.5         # student blocks / teacher blocks
    distill_rows: int = 128
    distill_data: str | None = None       # default: the calibration prompts (the teacher answers them)
    distill_epochs: int = 2
    distill_batch_size: int = 8
    distill_lr: float = 2e-4
    distill_max_new_tokens: int = 48
    calibration: str | None = None        # default: the shipped training prompts
    n_calibration: int = 64
    n_prompts: int = 32
    max_new_tokens: int = 32
    heldout_prompts: str | None = None
    heldout_text: str | None = None
    seed: int = 0
    reuse: bool = False                   # keep compressed folders a previous run finished (compression.json)


def _quantizable(teacher: str) -> str | None:
    """None, or why this architecture cannot be quantized (the suite then skips quantization)."""
    from rlhfkit.compression.quantize import _model_class, check_architecture
    from rlhfkit.models.loading import _portable_base, load_config

    name = str(teacher)
    adapter = Path(name) / "adapter_config.json"
    if adapter.exists():
        name = _portable_base(json.loads(adapter.read_text())["base_model_name_or_path"])
    config = load_config(name)
    try:
        check_architecture(config, _model_class(config), "int8-weight", 32)
    except UserError as e:
        return str(e)
    return None


def run_suite(teacher: str, out, suite: CompressSuite | None = None, progress: bool = True) -> list[dict]:
    """Compress `teacher` every way in `suite` into `out`, measure all; returns the table rows."""
    from rlhfkit.compression.layers import block_stacks
    from rlhfkit.compression.measure import ASSETS, MeasureSettings, deployment_table
    from rlhfkit.compression.prune import prune_model
    from rlhfkit.compression.quantize import quantize_model
    from rlhfkit.compression.source import load_source
    from rlhfkit.methods.distill import DistillConfig, train_distill

    suite = suite or CompressSuite()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    calibration = suite.calibration or str(ASSETS / "prompts_train.jsonl")
    models, skipped = {}, {}

    def done(folder: Path) -> bool:
        if suite.reuse and (folder / "compression.json").exists():
            print(f"rlhfkit compress: reusing {folder}")
            return True
        return False

    why = _quantizable(teacher)
    for scheme in suite.schemes:
        if why:
            skipped[scheme] = why
            continue
        models[scheme] = out / scheme if done(out / scheme) else quantize_model(teacher, out / scheme, scheme).out
    prune_jobs = [(f"{m}-{int(100 * suite.sparsity)}%", m, suite.sparsity, None) for m in ("magnitude", "wanda")]
    if suite.pattern:
        prune_jobs.append((f"wanda-{suite.pattern}", "wanda", None, suite.pattern))
    for name, method, sparsity, pattern in prune_jobs:
        folder = out / name.replace(":", "of")
        models[name] = folder if done(folder) else prune_model(
            teacher, folder, method, sparsity, pattern, calibration=calibration, n_calibration=suite.n_calibration,
            progress=progress).out
    src = load_source(teacher, "--teacher")
    n_blocks = len(block_stacks(src.model)[0][1])
    if suite.depth_fraction and len(block_stacks(src.model)) == 1:
        drop = max(1, round(suite.depth_fraction * n_blocks))
        folder = out / f"depth-{drop}"
        models[f"depth-{drop}"] = folder if done(folder) else prune_model(
            teacher, folder, "depth", drop_layers=drop, calibration=calibration, n_calibration=suite.n_calibration).out
    layers = max(1, round(suite.student_fraction * n_blocks))
    folder = out / f"distilled-{layers}"
    if suite.distill and done(folder) and (folder / "baselines" / "layer-dropped").exists():
        models[f"distilled-{layers}"] = folder
        models[f"layer-dropped-{layers}"] = folder / "baselines" / "layer-dropped"
    elif suite.distill:
        result = train_distill(DistillConfig(
            teacher=teacher, student_layers=layers, data=suite.distill_data or calibration, output_dir=str(folder),
            limit=suite.distill_rows, epochs=suite.distill_epochs, batch_size=suite.distill_batch_size,
            learning_rate=suite.distill_lr, max_new_tokens=suite.distill_max_new_tokens, measure=True,
            seed=suite.seed), progress=progress, teacher_source=src)
        models[f"distilled-{layers}"] = result["out"]
        models[f"layer-dropped-{layers}"] = result["undistilled"]
    del src
    settings = MeasureSettings(heldout_prompts=suite.heldout_prompts, heldout_text=suite.heldout_text,
                               n_prompts=suite.n_prompts, max_new_tokens=suite.max_new_tokens, seed=suite.seed)
    rows = deployment_table(teacher, models, out, settings, title="Deployment table", progress=progress)
    goals = check_goals(rows)
    (out / "goals.json").write_text(json.dumps({"goals": goals, "skipped": skipped}, indent=1))
    for g in goals:
        print(f"rlhfkit compress: goal {'met' if g['met'] else 'NOT met'}: {g['goal']}: {g['measured']}")
    for k, v in skipped.items():
        print(f"rlhfkit compress: {k} skipped: {v}")
    return rows


def check_goals(rows: list[dict]) -> list[dict]:
    """The issue's goals against the measured rows (those whose models are in the table)."""
    by = {r["model"]: r for r in rows}
    goals = []

    def add(goal, met, measured):
        goals.append({"goal": goal, "met": bool(met), "measured": measured})

    q = by.get("int8-weight")
    if q:
        add("int8 weight-only: linear weights <= 0.35x fp32", q["linear_size_ratio"] <= 0.35,
            f"{q['linear_size_ratio']:.3f}x")
        add("int8 weight-only: tokens/s >= 1.3x fp32", q["speedup"] >= 1.3, f"{q['speedup']:.2f}x")
        add("int8 weight-only: perplexity <= +3%", q["perplexity_change"] <= 0.03, f"{100 * q['perplexity_change']:+.2f}%")
        sampled = q["toxicity_change"] == q["toxicity_change"]  # NaN when the CPU was too slow to sample it
        add("int8 weight-only: toxicity within +10% of the teacher", sampled and q["toxicity_change"] <= 0.10,
            f"{100 * q['toxicity_change']:+.1f}%" if sampled else
            f"not sampled: {q['tokens_per_second']:.2f} tokens/s on this CPU")
    mag = next((r for k, r in by.items() if k.startswith("magnitude-")), None)
    wan = next((r for k, r in by.items() if k.startswith("wanda-") and k.endswith("%")), None)
    if mag and wan:
        add(f"pruning at {wan['sparsity']:.0%}: Wanda's perplexity below magnitude's",
            wan["perplexity"] < mag["perplexity"], f"Wanda {wan['perplexity']:.2f} vs magnitude {mag['perplexity']:.2f}")
    dis = next((r for k, r in by.items() if k.startswith("distilled-")), None)
    raw = next((r for k, r in by.items() if k.startswith("layer-dropped-")), None)
    t = by["teacher"]
    if dis and raw:
        add("distilled student's perplexity closer to the teacher's than the undistilled one's",
            abs(dis["perplexity"] - t["perplexity"]) < abs(raw["perplexity"] - t["perplexity"]),
            f"teacher {t['perplexity']:.2f}, distilled {dis['perplexity']:.2f}, not distilled {raw['perplexity']:.2f}")
        add("distilled student's toxicity closer to the teacher's than the undistilled one's",
            abs(dis["toxicity"] - t["toxicity"]) < abs(raw["toxicity"] - t["toxicity"]),
            f"teacher {t['toxicity']:.4f}, distilled {dis['toxicity']:.4f}, not distilled {raw['toxicity']:.4f}")
        add("distilled student: tokens/s >= 1.7x the teacher", dis["speedup"] >= 1.7, f"{dis['speedup']:.2f}x")
    return goals
