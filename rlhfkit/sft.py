"""`rlhfkit sft`: supervised fine-tuning on prompt/completion rows.

Rows: {"prompt", "completion"} (prompt may be a chat message list; completion
text, or a one-message assistant list), or {"messages": [...]} whose last
message is the assistant's reply and the messages before it the prompt.

Causal models see the prompt exactly as generation and PPO build it
(`rlhfkit.generation.format_prompt`: the chat template with a generation
prompt when the model has one) followed by the completion and EOS; the loss
covers completion tokens only. Seq2seq models get the prompt on the encoder and
the completion as decoder labels. Optional LoRA; the result is saved with
`save_pretrained` (the adapter, or the merged model with --merge).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlhfkit.config import add_config_command, option
from rlhfkit.errors import DataError, UserError


@dataclass
class SFTConfig:
    model: str = option("smollm2-135m", "embedded name, hub id or folder of the causal or seq2seq model")
    data: str = option(None, "rows {prompt, completion} or {messages: [..., assistant reply]}")
    out: str = option("runs/sft", "output folder: model (or adapter), tokenizer, config.yaml, metrics.jsonl")
    epochs: int = option(1, "passes over the data")
    batch_size: int = option(8, "rows per optimisation step")
    lr: float = option(5e-5, "peak learning rate (AdamW); LoRA usually wants ~1e-4 to 2e-4")
    weight_decay: float = option(0.0, "AdamW weight decay")
    warmup_ratio: float = option(0.05, "fraction of steps for linear warm-up, then linear decay to 0")
    max_grad_norm: float = option(1.0, "gradient clipping norm (0 = off)")
    max_length: int = option(512, "tokens per row (prompt + completion); longer rows are truncated and counted")
    eval_fraction: float = option(0.0, "fraction of rows held out; their loss is reported after every epoch")
    lora: bool = option(False, "train a LoRA adapter instead of all weights")
    lora_r: int = option(16, "LoRA rank")
    lora_alpha: int = option(32, "LoRA alpha")
    lora_dropout: float = option(0.0, "LoRA dropout")
    merge: bool = option(False, "with --lora: save the merged model instead of the adapter")
    mixed_precision: Literal["no", "bf16"] = option("no", "bf16 autocast for forward/backward (CPU AVX512-BF16)")
    limit: int | None = option(None, "use only the first N rows")
    log_every: int = option(10, "write a metrics line every N steps")
    seed: int = option(0, "random seed")


@dataclass(frozen=True)
class SFTExample:
    prompt: object  # text or chat message list
    completion: str


# ---------------------------------------------------------------- data


def load_sft_rows(path) -> list[SFTExample]:
    """SFT rows from a file, each validated; a bad row stops with a DataError naming it."""
    from rlhfkit.data import read_records

    records = read_records(path)
    if not records:
        raise UserError(f"{path}: no rows; an SFT file needs rows like {{\"prompt\": ..., \"completion\": ...}}")
    return [_sft_row(path, row, rec) for row, rec in records]


def _sft_row(path, row, rec) -> SFTExample:
    from rlhfkit.data import maybe_json, parse_messages, parse_prompt, parse_text

    has_prompt = rec.get("prompt") is not None
    if not has_prompt and rec.get("messages") is not None:
        messages = parse_messages(path, row, "messages", rec["messages"])
        if messages[-1]["role"] != "assistant":
            raise DataError(path, row, "messages", "the last message must be the assistant's reply to learn")
        if len(messages) < 2:
            raise DataError(path, row, "messages", "no prompt messages before the assistant's reply")
        return SFTExample(messages[:-1], messages[-1]["content"])
    if not has_prompt:
        have = ", ".join(sorted(rec)) or "none"
        raise DataError(path, row, "prompt", f"missing column (columns present: {have}); "
                        "give {prompt, completion} or {messages}")
    prompt = parse_prompt(path, row, rec)
    if rec.get("completion") is None:
        have = ", ".join(sorted(rec)) or "none"
        raise DataError(path, row, "completion", f"missing column (columns present: {have})")
    completion = maybe_json(rec["completion"])
    if isinstance(completion, list):
        reply = parse_messages(path, row, "completion", completion)
        if len(reply) != 1 or reply[0]["role"] != "assistant":
            raise DataError(path, row, "completion", "a message-list completion is one assistant message")
        completion = reply[0]["content"]
    return SFTExample(prompt, parse_text(path, row, "completion", completion))


# ---------------------------------------------------------------- tokenisation


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # causal: -100 on prompt tokens; seq2seq: the decoder targets


def _fit(prompt_ids: list[int], completion_ids: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Cut to max_length: the completion keeps at least half the room; the prompt keeps its end."""
    if len(prompt_ids) + len(completion_ids) <= max_length:
        return prompt_ids, completion_ids
    keep_c = min(len(completion_ids), max(max_length // 2, max_length - len(prompt_ids)))
    keep_p = max_length - keep_c
    return (prompt_ids[-keep_p:] if keep_p else []), completion_ids[:keep_c]


def encode_examples(tokenizer, examples: list[SFTExample], seq2seq: bool, max_length: int) -> tuple[list[Encoded], int]:
    """Token ids and labels per example, and how many examples were truncated."""
    from rlhfkit.generation import format_prompt, uses_chat_template

    chat = uses_chat_template(tokenizer)
    prompts = [format_prompt(tokenizer, e.prompt, chat) for e in examples]
    out, cut = [], 0
    if seq2seq:
        p_ids = tokenizer(prompts)["input_ids"]
        c_ids = tokenizer([e.completion for e in examples])["input_ids"]
        for p, c in zip(p_ids, c_ids):
            cut += len(p) > max_length or len(c) > max_length
            out.append(Encoded(p[-max_length:], c[:max_length]))
        return out, cut
    completions = [
        e.completion if chat or not p or p[-1].isspace() or e.completion[:1].isspace() else " " + e.completion
        for e, p in zip(examples, prompts)
    ]
    p_ids = tokenizer(prompts, add_special_tokens=not chat)["input_ids"]
    c_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    for p, c in zip(p_ids, c_ids):
        c = c + ([eos] if eos is not None else [])
        cut += len(p) + len(c) > max_length
        p, c = _fit(p, c, max_length)
        out.append(Encoded(p + c, [-100] * len(p) + c))
    return out, cut


def _collate(batch: list[Encoded], pad_id: int, seq2seq: bool, device):
    import torch

    from rlhfkit.generation import pad

    ids, mask = pad([e.input_ids for e in batch], pad_id, device=device)
    if seq2seq:
        labels, lmask = pad([e.labels for e in batch], pad_id, device=device)
    else:
        labels, lmask = pad([e.labels for e in batch], -100, device=device)
    labels = labels.masked_fill(lmask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "tokens": int((labels != -100).sum())}


def _loss(model, batch, autocast: bool):
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    return out.loss.float()


def evaluate_loss(model, tokenizer, encoded: list[Encoded], seq2seq: bool, batch_size: int = 8, autocast: bool = False) -> float:
    """Mean per-token loss over completion tokens."""
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(encoded), batch_size):
            batch = _collate(encoded[start:start + batch_size], tokenizer.pad_token_id, seq2seq, device)
            total += _loss(model, batch, autocast).item() * batch["tokens"]
            tokens += batch["tokens"]
    model.train(was_training)
    return total / max(tokens, 1)


# ---------------------------------------------------------------- training


def train_sft(config: SFTConfig, progress: bool = True) -> dict:
    """Fine-tune and save; returns {"steps": [loss per step], "epochs": [...], "out": folder}."""
    import torch
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    from rlhfkit.config import save_yaml
    from rlhfkit.models import LoraOptions, load_policy

    if not config.data:
        raise UserError("no training data; pass --data FILE with rows {prompt, completion} or {messages}")
    for name in ("epochs", "batch_size", "max_length"):
        if getattr(config, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if config.merge and not config.lora:
        raise UserError("--merge only applies with --lora (full fine-tuning already saves the whole model)")
    examples = load_sft_rows(config.data)  # every row validated before the model is even loaded
    if config.limit:
        examples = examples[: config.limit]
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    held_out: list[SFTExample] = []
    if config.eval_fraction > 0:
        if not config.eval_fraction < 1:
            raise UserError(f"--eval-fraction must be in [0, 1), got {config.eval_fraction}")
        order = list(range(len(examples)))
        rng.shuffle(order)
        n_eval = max(1, round(config.eval_fraction * len(examples)))
        if n_eval >= len(examples):
            raise UserError(f"{config.data}: too few rows ({len(examples)}) to hold out {config.eval_fraction:.0%}")
        held_out = [examples[i] for i in order[:n_eval]]
        examples = [examples[i] for i in sorted(order[n_eval:])]

    lora = LoraOptions(r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout) if config.lora else None
    policy = load_policy(config.model, lora=lora)
    model, tokenizer, seq2seq = policy.model, policy.tokenizer, policy.seq2seq
    train_enc, cut = encode_examples(tokenizer, examples, seq2seq, config.max_length)
    if cut:
        print(f"rlhfkit sft: {cut} of {len(train_enc)} rows truncated to {config.max_length} tokens")
    eval_enc, eval_cut = encode_examples(tokenizer, held_out, seq2seq, config.max_length) if held_out else ([], 0)
    if eval_cut:
        print(f"rlhfkit sft: {eval_cut} of {len(eval_enc)} held-out rows truncated to {config.max_length} tokens")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(config, out / "config.yaml")
    autocast = config.mixed_precision == "bf16"
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    total = math.ceil(len(train_enc) / config.batch_size) * config.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total), total)
    print(f"rlhfkit sft: {len(train_enc)} training rows, {len(eval_enc)} held-out, {total} steps "
          f"({'seq2seq' if seq2seq else 'causal'}, {'LoRA' if config.lora else 'full fine-tuning'})")
    history = {"steps": [], "epochs": [], "out": str(out)}
    step = 0
    model.train()
    with open(out / "metrics.jsonl", "w", encoding="utf-8") as metrics:
        for epoch in range(1, config.epochs + 1):
            order = list(range(len(train_enc)))
            rng.shuffle(order)
            total_loss, total_tokens, started = 0.0, 0, time.time()
            bar = tqdm(range(0, len(order), config.batch_size), desc=f"epoch {epoch}/{config.epochs}", unit="step",
                       disable=not progress)
            for start in bar:
                batch = _collate([train_enc[i] for i in order[start:start + config.batch_size]],
                                 tokenizer.pad_token_id, seq2seq, device)
                loss = _loss(model, batch, autocast)
                if not torch.isfinite(loss):
                    raise UserError(f"non-finite loss at epoch {epoch}, step {step + 1}; lower --lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                step += 1
                history["steps"].append(loss.item())
                total_loss += loss.item() * batch["tokens"]
                total_tokens += batch["tokens"]
                bar.set_postfix(loss=f"{total_loss / max(total_tokens, 1):.3f}")
                if step % config.log_every == 0:
                    metrics.write(json.dumps({"epoch": epoch, "step": step, "train/loss": loss.item(),
                                              "lr": scheduler.get_last_lr()[0]}) + "\n")
                    metrics.flush()
            bar.close()
            record = {"epoch": epoch, "step": step, "train/epoch_loss": total_loss / max(total_tokens, 1),
                      "seconds": time.time() - started}
            line = f"epoch {epoch}/{config.epochs}: train loss {record['train/epoch_loss']:.4f}"
            if eval_enc:
                record["eval/loss"] = evaluate_loss(model, tokenizer, eval_enc, seq2seq, config.batch_size, autocast)
                line += f" | held-out loss {record['eval/loss']:.4f}"
            history["epochs"].append(record)
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            print(line, flush=True)
    _save(model, tokenizer, config, out)
    return history


def _save(model, tokenizer, config: SFTConfig, out: Path) -> None:
    from rlhfkit.models import EMBEDDED

    if config.lora and config.merge:
        model = model.merge_and_unload()
        what = "merged model"
    elif config.lora:
        what = "LoRA adapter"
    else:
        what = "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    adapter_file = out / "adapter_config.json"
    if config.lora and not config.merge and config.model in EMBEDDED and adapter_file.exists():
        # Record the embedded name, so the base rebuilds anywhere instead of pointing into this machine's cache.
        adapter = json.loads(adapter_file.read_text())
        adapter["base_model_name_or_path"] = config.model
        adapter_file.write_text(json.dumps(adapter, indent=2, sort_keys=True))
    print(f"rlhfkit sft: {what} saved to {out}")


def add_command(subparsers) -> None:
    add_config_command(subparsers, "sft", "supervised fine-tuning on prompt/completion rows (causal or seq2seq)",
                       SFTConfig, train_sft)
