"""The model a compression command starts from: a full folder, an adapter folder merged into its base
on the fly, or any model name; and the checks that fail early with the fix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlhfkit.errors import UserError

WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")


@dataclass
class Source:
    model: object       # a transformers model in eval mode, adapters merged, no gradients
    tokenizer: object
    seq2seq: bool
    name: str           # what the user passed
    adapter: bool       # merged from a LoRA adapter


def has_weights(folder: Path) -> bool:
    return any(any(folder.glob(pattern)) for pattern in WEIGHT_FILES)


def check_model_folder(name: str, flag: str = "--model") -> None:
    """A folder must hold a model (config and weights) or an adapter (its config and weights)."""
    folder = Path(str(name))
    if not folder.exists():
        return  # a name: resolved (embedded, hub id) by the loader, which says when it cannot
    if not folder.is_dir():
        raise UserError(f"{flag} {name}: a file, not a model folder; pass the folder that holds config.json "
                        "and the weights")
    if (folder / "adapter_config.json").exists():
        if not has_weights(folder):
            raise UserError(f"{flag} {name}: an adapter folder without its weights (adapter_model.safetensors); "
                            "point to the folder the training run saved, e.g. runs/ppo/model")
        return
    if not (folder / "config.json").exists():
        inner = folder / "model"
        hint = f" (the model is in {inner}: pass {inner})" if (inner / "config.json").exists() or \
            (inner / "adapter_config.json").exists() else ""
        raise UserError(f"{flag} {name}: not a model folder (no config.json or adapter_config.json){hint}")
    if not has_weights(folder):
        raise UserError(f"{flag} {name}: the folder has a config.json but no weights (*.safetensors or "
                        "pytorch_model.bin); save the model with save_pretrained, or export it with "
                        "`rlhfkit export --model DIR --merge --out DIR`")


def load_source(name: str, flag: str = "--model", verbose: bool = False) -> Source:
    """The model in float32, adapters merged, frozen and in eval mode."""
    import torch

    from rlhfkit.models.loading import load_policy

    check_model_folder(name, flag)
    adapter = (Path(str(name)) / "adapter_config.json").exists()
    policy = load_policy(str(name), dtype=torch.float32, verbose=verbose)
    model = policy.model.merge_and_unload() if adapter else policy.model
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Source(model, policy.tokenizer, policy.seq2seq, str(name), adapter)


def plain_folder(name: str, work: Path, flag: str = "--model") -> Path:
    """A plain transformers folder of `name` (itself when it already is one; else exported into `work`),
    for the code paths that must go through `from_pretrained` (quantization)."""
    check_model_folder(name, flag)
    folder = Path(str(name))
    if folder.is_dir() and (folder / "config.json").exists():
        return folder
    from rlhfkit.models.export import export_model

    return export_model(str(name), work, merge=True)


def save_plain(model, tokenizer, out: Path) -> Path:
    """save_pretrained of a model and its tokenizer, with the generation ids a pipeline needs."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        if generation.pad_token_id is None:
            generation.pad_token_id = tokenizer.pad_token_id
        if generation.eos_token_id is None:
            generation.eos_token_id = tokenizer.eos_token_id
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def check_output(out, sources: list[str]) -> Path:
    """--out must be a new folder, not one of the inputs."""
    if not out:
        raise UserError("--out is required: the folder to write the compressed model into")
    out = Path(out)
    for s in sources:
        if Path(str(s)).exists() and out.resolve() == Path(str(s)).resolve():
            raise UserError(f"--out {out} is the input folder itself; write into a new folder")
    return out
