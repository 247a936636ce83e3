"""A plain transformers folder from anything rlhfkit saved (`rlhfkit export --model DIR --merge --out DIR`).

The folder loads with `AutoModelForCausalLM` / `AutoModelForSeq2SeqLM` /
`AutoModelForSequenceClassification.from_pretrained(OUT)` and `pipeline(...)` on a machine with no
rlhfkit: a LoRA adapter is merged into its base (which may be an embedded model, resolved here), the
PPO value head is left out, and the tokenizer and generation config are written beside the weights,
with a model card that carries the source's training section and, when given, an evaluation table.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rlhfkit.errors import UserError
from rlhfkit.models.card import CARD, card_metadata, folder_kind, write_model_card


def _training_section(folder: Path) -> str:
    """The '## Training' (and '## Data') sections of a folder's model card, if it has one."""
    path = folder / CARD
    if not path.is_file():
        return ""
    text, out, keep = path.read_text(encoding="utf-8"), [], False
    for line in text.splitlines():
        if line.startswith("## "):
            keep = line[3:].strip() in ("Training", "Data")
        if keep:
            out.append(line.replace("## ", "### ", 1) if line.startswith("## ") else line)
    return "\n".join(out).strip()


def export_model(model: str | Path, out: str | Path, merge: bool = False, evaluation: list[dict] | None = None,
                 evaluation_title: str = "Evaluation", overwrite: bool = True) -> Path:
    """Write a plain transformers folder of `model` (a folder rlhfkit saved, or any model name) into `out`."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.models.loading import load_policy, load_tokenizer

    source = Path(str(model))
    out = Path(out)
    if source.exists() and out.resolve() == source.resolve():
        raise UserError(f"--out {out} is the model folder itself; export into a new folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out} exists and is not empty")
        shutil.rmtree(out)
    is_folder = source.is_dir()
    if is_folder:
        kind, adapter = folder_kind(source)
    else:
        kind, adapter = None, False
    if adapter and not merge:
        raise UserError(f"{source} is a LoRA adapter; add --merge to fold it into its base model (a plain "
                        "transformers folder), or load the adapter with peft as it is")
    if kind == "classifier" and adapter:
        raise UserError(f"{source}: exporting a classifier adapter is not supported; train the reward model in full")
    meta = card_metadata(source) if is_folder else {}
    if kind == "classifier":
        net = AutoModelForSequenceClassification.from_pretrained(str(source))
        tokenizer = load_tokenizer(str(source))
    else:
        policy = load_policy(str(model), dtype=None, verbose=False)
        net, tokenizer = policy.model, policy.tokenizer
        kind = "seq2seq" if policy.seq2seq else "causal"
        if adapter:
            net = net.merge_and_unload()
    net = net.to(torch.float32) if next(net.parameters()).dtype == torch.float16 else net
    for p in net.parameters():
        p.requires_grad_(False)
    out.mkdir(parents=True, exist_ok=True)
    generation = getattr(net, "generation_config", None)
    if kind != "classifier" and generation is not None:
        if generation.pad_token_id is None:
            generation.pad_token_id = tokenizer.pad_token_id
        if generation.eos_token_id is None:
            generation.eos_token_id = tokenizer.eos_token_id
    if getattr(net.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        net.config.pad_token_id = tokenizer.pad_token_id
    net.save_pretrained(str(out))  # safetensors; no value head, no adapter files
    tokenizer.save_pretrained(str(out))
    if kind != "classifier" and generation is not None and not (out / "generation_config.json").exists():
        generation.save_pretrained(str(out))
    _check_plain(out)
    tags = meta.get("tags") or []
    method = tags[1] if len(tags) > 1 and tags[0] == "rlhfkit" else "export"
    base = str(source) if is_folder else str(model)
    notes = (f"Exported by `rlhfkit export` from `{source.name if is_folder else model}`"
             + (": the LoRA adapter merged into its base" if adapter else "")
             + ("; the PPO value head left out" if is_folder and (source / "value_head.safetensors").exists() else "")
             + ". A plain transformers folder: no rlhfkit needed to load it.")
    section = _training_section(source) if is_folder else ""
    if section:
        notes += "\n\n## From the source model's card\n\n" + section
    write_model_card(out, method=method, base_model=base if is_folder else str(model), evaluation=evaluation,
                     evaluation_title=evaluation_title, notes=notes,
                     command=f"rlhfkit export --model {model} {'--merge ' if merge else ''}--out {out}")
    return out


def _check_plain(out: Path) -> None:
    """What a plain folder must hold, and must not."""
    names = {p.name for p in out.iterdir()}
    missing = [n for n in ("config.json",) if n not in names]
    if not any(n.endswith(".safetensors") for n in names):
        missing.append("*.safetensors")
    if missing or "adapter_config.json" in names or "value_head.safetensors" in names:
        raise UserError(f"export to {out} went wrong: missing {missing}, files {sorted(names)}")
    config = json.loads((out / "config.json").read_text())
    if config.get("auto_map"):
        raise UserError(f"{out}/config.json needs remote code ({config['auto_map']}); it would not load as a plain folder")
