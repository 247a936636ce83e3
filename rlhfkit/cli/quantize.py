"""`rlhfkit quantize --model DIR --scheme int8-weight|int8-dynamic|int4-weight --out DIR`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhfkit.config import add_config_command, option


@dataclass
class QuantizeConfig:
    model: str = option(None, "the tuned model: a full folder, an adapter folder (merged first) or a model name")
    output_dir: str = option(None, "folder to write the quantized transformers model into")
    scheme: Literal["int8-weight", "int8-dynamic", "int4-weight"] = option(
        "int8-weight", "int8-weight: int8 weights; int8-dynamic: int8 weights and activations; int4-weight: 4-bit "
                       "weight groups (on a CPU no faster or smaller than int8: torchao's packed int4 kernels need CUDA)")
    group_size: int = option(32, "int4-weight: weights per quantization group")
    heldout_prompts: str | None = option(None, "held-out prompts for the deployment table (default: the shipped ones)")
    heldout_text: str | None = option(None, "held-out text rows for perplexity (default: the SFT-style shipped text)")
    n_prompts: int = option(32, "held-out prompts the table samples on")
    max_new_tokens: int = option(32, "tokens per sampled completion in the table")
    measure: bool = option(True, "write the deployment table (metrics.json, report.html) comparing the input")
    seed: int = option(0, "random seed of the table's sampling")


def run_quantize(config: QuantizeConfig) -> int:
    from rlhfkit.compression.quantize import quantize_model

    result = quantize_model(config.model, config.output_dir, config.scheme, config.group_size)
    if config.measure:
        from rlhfkit.compression.measure import MeasureSettings, deployment_table

        deployment_table(config.model, {config.scheme: str(result.out)}, result.out,
                         MeasureSettings.of(config), title=f"rlhfkit quantize ({config.scheme})")
    print(f"rlhfkit quantize: {result.out} (loads with from_pretrained when torchao is installed)")
    return 0


def add_command(subparsers) -> None:
    add_config_command(subparsers, "quantize", "post-training quantization through torchao (transformers' "
                       "TorchAoConfig); writes a folder that loads with from_pretrained, and the deployment table",
                       QuantizeConfig, run_quantize)
