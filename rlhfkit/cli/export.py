"""`rlhfkit export --model DIR --merge --out DIR`: a plain transformers folder (LoRA merged, value head dropped)."""

from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.config import add_config_command, option


@dataclass
class ExportConfig:
    model: str = option(None, "folder rlhfkit saved (model, adapter, PPO run's model/), or any model name")
    output_dir: str = option(None, "folder to write the plain transformers model into")
    merge: bool = option(False, "merge a LoRA adapter into its base model (needed for adapters)")
    push_to_hub: str | None = option(None, "then upload the exported folder to this Hub repo id (user/name)")


def run_export(config: ExportConfig) -> int:
    from rlhfkit.models.card import check_push, push_folder
    from rlhfkit.models.export import export_model

    check_push(config.push_to_hub)
    out = export_model(config.model, config.output_dir, merge=config.merge)
    print(f"rlhfkit export: plain transformers folder in {out} (loads with from_pretrained, no rlhfkit needed)")
    if config.push_to_hub:
        print(f"rlhfkit export: pushed to {push_folder(out, config.push_to_hub)}")
    return 0


def add_command(subparsers) -> None:
    add_config_command(subparsers, "export", "a plain transformers folder: LoRA merged, value head dropped, "
                       "tokenizer and generation config included", ExportConfig, run_export)
