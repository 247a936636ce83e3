"""Post-training quantization through transformers' `TorchAoConfig` (torchao does the maths; no kernels here).

    rlhfkit quantize --model DIR --scheme int8-weight --out DIR

The model (a full folder, or an adapter merged first) is loaded with `from_pretrained(...,
quantization_config=TorchAoConfig(scheme))`, saved with `save_pretrained` (torchao's tensor
subclasses flattened into safetensors, the config's `quantization_config` saying how to rebuild
them) and reloaded with plain `from_pretrained` to check that it generates the same tokens. The
folder loads anywhere transformers and torchao are installed, `pipeline("text-generation", ...)`
included. Every `nn.Linear` but the output head is quantized; embeddings stay in float32.

On this CPU (torchao's pip wheel ships CUDA kernels only):
- int8-weight: int8 weights with a scale per output row, float32 activations;
- int8-dynamic: int8 weights and activations quantized per token at run time;
- int4-weight: 4-bit weights in groups of 32 with a scale each (torchao's `IntxWeightOnlyConfig`,
  the int4 layout that runs on a CPU). torchao stores each 4-bit value in a byte on the CPU and
  dequantizes it at every matmul, so it is no smaller on disk than int8 and slower than float32;
  its packed int4 kernels (`Int4WeightOnlyConfig`) need a CUDA GPU.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.errors import UserError

SCHEMES = ("int8-weight", "int8-dynamic", "int4-weight")
# what each scheme is on this CPU, said before the work starts
CPU_NOTES = {
    "int8-weight": "int8 weights (a scale per output row), float32 activations",
    "int8-dynamic": "int8 weights and int8 activations quantized per token at run time",
    "int4-weight": "4-bit weights in groups of {group}; on a CPU torchao keeps one value per byte and "
                   "dequantizes at every matmul: no smaller on disk than int8 and slower than float32 here "
                   "(its packed int4 kernels need a CUDA GPU)",
}


def import_torchao():
    """torchao, imported here only (compression paths), with its import-time chatter quieted."""
    from rlhfkit.runtime import quiet_torchao_import

    quiet_torchao_import()
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise UserError("quantization needs torchao; run: pip install -c constraints.txt torchao "
                        "(or: make install)") from None
    return torchao


def torchao_config(scheme: str, group_size: int = 32):
    """The torchao `AOBaseConfig` of a scheme."""
    import_torchao()
    import torch
    from torchao.quantization import (
        Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, IntxWeightOnlyConfig,
    )
    from torchao.quantization.granularity import PerGroup

    if scheme == "int8-weight":
        return Int8WeightOnlyConfig()
    if scheme == "int8-dynamic":
        return Int8DynamicActivationInt8WeightConfig()
    if scheme == "int4-weight":
        return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))
    raise UserError(f"--scheme {scheme!r}: choose one of {', '.join(SCHEMES)}")


@dataclass
class QuantizeResult:
    out: Path
    scheme: str
    quantized_layers: int
    reload_matches: bool
    tokens: list[int]


def quantizable_linears(config, cls) -> dict[str, int]:
    """{module name: in_features} of the nn.Linear layers torchao would quantize (not the output head),
    read from a weightless (meta) instance of the architecture."""
    import torch

    with torch.device("meta"):
        model = cls.from_config(config)
    head = model.get_output_embeddings()
    return {n: m.in_features for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and m is not head}


def check_architecture(config, cls, scheme: str, group_size: int) -> dict[str, int]:
    """The scheme must have something to quantize in this architecture, in shapes it supports."""
    linears = quantizable_linears(config, cls)
    arch = (getattr(config, "architectures", None) or [cls.__name__])[0]
    if not linears:
        raise UserError(
            f"--scheme {scheme}: {arch} has no nn.Linear layers to quantize (GPT-2-style models keep their "
            "projections in transformers' Conv1D, which torchao does not quantize); use a Llama-, Qwen-, "
            "Mistral- or T5-style model, or prune it instead (`rlhfkit prune`)")
    if scheme == "int4-weight":
        bad = sorted(n for n, k in linears.items() if k % group_size)
        if bad:
            ok = [g for g in (256, 128, 64, 32, 16, 8) if all(k % g == 0 for k in linears.values())]
            fix = f"pass --group-size {ok[0]}" if ok else "use --scheme int8-weight"
            raise UserError(f"--scheme int4-weight: {len(bad)} layer(s) of {arch} (e.g. {bad[0]}, "
                            f"{linears[bad[0]]} inputs) do not split into groups of {group_size}; {fix}")
    return linears


def _model_class(config):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM


def probe_tokens(model, tokenizer, max_new_tokens: int = 8) -> list[int]:
    """Greedy tokens from a fixed prompt: the check that a saved folder generates what the model did."""
    import torch

    from rlhfkit.models.generation import encode_prompts

    ids = torch.tensor([encode_prompts(tokenizer, ["Write a short, kind reply to a neighbour."])[0]])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id)
    start = 1 if getattr(model.config, "is_encoder_decoder", False) else ids.shape[1]
    return out[0, start:].tolist()


def load_quantized(folder):
    """A quantized folder with plain `from_pretrained` (torchao rebuilds its tensors from the config)."""
    import_torchao()
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(folder))
    return _model_class(config).from_pretrained(str(folder))


def quantize_model(model: str, out, scheme: str, group_size: int = 32, progress: bool = True) -> QuantizeResult:
    """Quantize `model` (folder, adapter folder or name) with `scheme` into the plain folder `out`."""
    import torch
    from transformers import AutoConfig

    from rlhfkit.compression.source import check_output, plain_folder
    from rlhfkit.models.loading import load_tokenizer

    if scheme not in SCHEMES:
        raise UserError(f"--scheme {scheme!r}: choose one of {', '.join(SCHEMES)}")
    if group_size < 1:
        raise UserError("--group-size must be at least 1")
    out = check_output(out, [model])
    work = Path(tempfile.mkdtemp(prefix="rlhfkit-quantize-"))
    try:
        src = plain_folder(model, work / "merged")
        config = AutoConfig.from_pretrained(str(src))
        if getattr(config, "quantization_config", None):
            raise UserError(f"--model {model} is already quantized ({config.quantization_config.get('quant_method')}); "
                            "quantize the float model it came from")
        cls = _model_class(config)
        linears = check_architecture(config, cls, scheme, group_size)
        print(f"rlhfkit quantize: {scheme}: " + CPU_NOTES[scheme].format(group=group_size))
        from transformers import TorchAoConfig

        qconfig = TorchAoConfig(torchao_config(scheme, group_size))
        quantized = cls.from_pretrained(str(src), quantization_config=qconfig, dtype=torch.float32).eval()
        tokenizer = load_tokenizer(str(src))
        before = probe_tokens(quantized, tokenizer)
        if out.exists():
            shutil.rmtree(out)
        from rlhfkit.compression.source import save_plain

        save_plain(quantized, tokenizer, out)
        reloaded = load_quantized(out).eval()
        after = probe_tokens(reloaded, tokenizer)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if after != before:
        raise UserError(f"{out}: the reloaded model generates {after[:6]}... where the quantized model "
                        f"generated {before[:6]}...; the torchao version may not round-trip this scheme")
    (out / "compression.json").write_text(json.dumps(
        {"method": "quantize", "scheme": scheme, "group_size": group_size if scheme == "int4-weight" else None,
         "library": "torchao via transformers TorchAoConfig", "source": str(model), "quantized_layers": len(linears),
         "note": CPU_NOTES[scheme].format(group=group_size)}, indent=1))
    print(f"rlhfkit quantize: {len(linears)} linear layers quantized; {out} reloads and generates the same tokens")
    return QuantizeResult(out, scheme, len(linears), True, after)
