"""The PPO bench's cases: MODEL-MODE-PRECISION (tiny-gpt2 | smollm2, full | lora, fp32 | bf16), suffixes
that switch one of our PPOConfig settings on (ours-only rows), and the named groups."""

from __future__ import annotations

MODELS = {"tiny-gpt2": "tiny-gpt2", "smollm2": "smollm2-135m"}
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
