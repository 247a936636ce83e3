"""`rlhfkit eval`: a model (and optionally a baseline) on held-out prompts, with bootstrap CIs.

Writes `eval.json` (every float finite or null), the score-distribution plots
and a self-contained `report.html` into `--out`, and prints the summary.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import SamplingFields, add_config_command, option, renamed, to_dict

HELDOUT = Path(__file__).parent / "assets" / "prompts_heldout.jsonl"
RECOMMENDED_PROMPTS = 200


@renamed(out="output_dir")
@dataclass
class EvalConfig(SamplingFields):
    model: str = option(None, "model to evaluate: embedded name, hub id, folder, or a saved LoRA adapter folder")
    baseline: str | None = option(None, "model to compare against on the same prompts (e.g. the one before tuning)")
    prompts: str | None = option(None, f"held-out prompts file (default: the shipped {HELDOUT.name})")
    score: list[str] = option(["toxicity"], "score sources: toxicity, profanity, vader, module:function, reward-model folder")
    n: int | None = option(None, f"number of prompts used, from the top of the file (default: all; {RECOMMENDED_PROMPTS}+ recommended)")
    samples_per_prompt: int = option(1, "completions sampled per prompt and model")
    seed: int = option(0, "random seed for sampling (the same for every model) and the bootstrap")
    output_dir: str = option("eval", "output folder: eval.json, plots (PNG) and report.html")
    batch_size: int = option(16, "sequences generated or scored at once")
    n_boot: int = option(2000, "bootstrap resamples for the confidence intervals")
    level: float = option(0.95, "confidence level of the intervals")
    kl: bool = option(True, "measure KL(model || baseline) on the model's responses")
    dtype: str = option("float32", "model weights dtype: float32 or bfloat16")
    show: int = option(3, "paired samples printed (all go to the report)")


def _validate(config: EvalConfig) -> None:
    from rlhfkit.errors import UserError

    for name in ("samples_per_prompt", "max_new_tokens", "batch_size"):
        if getattr(config, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if config.n is not None and config.n < 1:
        raise UserError("--n must be at least 1 (or leave it out to use every prompt)")
    if config.n_boot < 100:
        raise UserError("--n-boot must be at least 100 for a usable confidence interval (default 2000)")
    if not 0.5 <= config.level < 1:
        raise UserError("--level must be between 0.5 and 1, e.g. 0.95")
    if config.temperature <= 0:
        raise UserError("--temperature must be positive")
    if isinstance(config.score, str):  # from YAML: score: toxicity
        config.score = [config.score]
    if not config.score:
        raise UserError("--score needs at least one source, e.g. --score toxicity vader")


def run_eval(config: EvalConfig) -> dict:
    """Evaluate, write eval.json + plots + report.html into config.output_dir, print the summary; returns the result."""
    from rlhfkit.data import load_prompts
    from rlhfkit.evaluation import evaluate, save_json
    from rlhfkit.evaluation.summary import format_summary
    from rlhfkit.models.generation import GenerationSettings
    from rlhfkit.evaluation.report import write_report

    _validate(config)
    prompts = load_prompts(config.prompts or HELDOUT)
    if config.n is not None:
        if config.n > len(prompts):
            print(f"rlhfkit eval: warning: --n {config.n} but the file has {len(prompts)} prompts; using all of them",
                  file=sys.stderr)
        prompts = prompts[: config.n]
    if len(prompts) < RECOMMENDED_PROMPTS:
        print(f"rlhfkit eval: warning: only {len(prompts)} prompts; confidence intervals from fewer than "
              f"{RECOMMENDED_PROMPTS} are rough", file=sys.stderr)
    models = {"baseline": config.baseline, "model": config.model} if config.baseline else {"model": config.model}
    result = evaluate(
        models, prompts, config.score, n_samples_per_prompt=config.samples_per_prompt, settings=GenerationSettings.of(config),
        baseline_name="baseline" if config.baseline else None, seed=config.seed, batch_size=config.batch_size,
        n_boot=config.n_boot, level=config.level, kl=config.kl, dtype=config.dtype,
        max_prompt_tokens=config.max_prompt_tokens,
    )
    result["config"] = to_dict(config)
    out = Path(config.output_dir)
    json_path = save_json(result, out / "eval.json")
    summary = format_summary(result, max_samples=config.show)
    report = write_report(out, title=f"rlhfkit eval: {config.model}", evaluation=result, config=to_dict(config),
                          summary_text=format_summary(result, max_samples=0))
    print(summary)
    print(f"rlhfkit eval: wrote {json_path} and {report}")
    return result


def add_command(subparsers) -> None:
    add_config_command(subparsers, "eval", "a model vs a baseline on held-out prompts, with bootstrap CIs and a report",
                       EvalConfig, run_eval)
