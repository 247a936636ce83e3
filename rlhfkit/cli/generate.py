"""`rlhfkit generate`: K sampled completions per prompt, ready for labelling."""

from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.config import SamplingFields, add_config_command, option


@dataclass
class GenerateConfig(SamplingFields):
    model: str = option("smollm2-135m", "embedded name, hub id or folder of the model to sample from")
    prompts: str = option(None, "prompts file (JSONL, CSV, Parquet or datasets folder)")
    out: str = option("completions.jsonl", "output JSONL file: one row per prompt with its completions")
    n: int = option(4, "completions per prompt")
    batch_size: int = option(32, "sequences generated at once")
    limit: int | None = option(None, "use only the first N prompts")
    seed: int = option(0, "random seed")
    dtype: str = option("float32", "model weights dtype: float32 or bfloat16")


def run_generate(config: GenerateConfig) -> int:
    from rlhfkit.datafiles import write_jsonl
    from rlhfkit.data import load_prompts, prompt_to_json
    from rlhfkit.errors import UserError
    from rlhfkit.models.generation import GenerationSettings, generate_completions
    from rlhfkit.models import load_policy

    for name in ("n", "max_new_tokens", "batch_size"):
        if getattr(config, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if config.temperature <= 0:
        raise UserError("--temperature must be positive")
    prompts = load_prompts(config.prompts)
    if config.limit:
        prompts = prompts[: config.limit]
    policy = load_policy(config.model, dtype=config.dtype)
    completions = generate_completions(
        policy.model, policy.tokenizer, prompts, n=config.n, settings=GenerationSettings.of(config), batch_size=config.batch_size,
        seed=config.seed, max_prompt_tokens=config.max_prompt_tokens,
    )
    rows = [{**prompt_to_json(p), "completions": c, "model": config.model} for p, c in zip(prompts, completions)]
    write_jsonl(config.out, rows)
    print(f"rlhfkit generate: wrote {len(rows)} prompts x {config.n} completions to {config.out}")
    return 0


def add_command(subparsers) -> None:
    add_config_command(subparsers, "generate", "sample K completions per prompt (rankings format minus ranks)",
                       GenerateConfig, run_generate)
