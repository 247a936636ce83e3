"""Supervised fine-tuning on prompt/completion rows (`rlhfkit sft`): the supervised loop with the NLL of completion tokens.

Rows: {"prompt", "completion"} (prompt may be a chat message list; completion
text, or a one-message assistant list), or {"messages": [...]} whose last
message is the assistant's reply and the messages before it the prompt.

Causal models see the prompt exactly as generation and PPO build it
(`rlhfkit.models.generation.format_prompt`: the chat template with a generation
prompt when the model has one) followed by the completion and EOS; the loss
covers completion tokens only. Seq2seq models get the prompt on the encoder and
the completion as decoder labels. Optional LoRA; the result is saved with
`save_pretrained` (the adapter, or the merged model with --merge). The loss is the
token-mean NLL of completion tokens (`objectives.lm.nll_loss`) over each whole batch,
also under gradient accumulation and across processes.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import LoraFields, OptimFields, option, renamed
from rlhfkit.errors import DataError, UserError


@renamed(lr="learning_rate", out="output_dir")
@dataclass
class SFTConfig(OptimFields, LoraFields):
    model: str = option("smollm2-135m", "embedded name, hub id or folder of the causal or seq2seq model")
    data: str = option(None, "rows {prompt, completion} or {messages: [..., assistant reply]}")
    output_dir: str = option("runs/sft", "output folder: model (or adapter), tokenizer, config.yaml, metrics.jsonl")
    epochs: int = option(1, "passes over the data")
    batch_size: int = option(8, "rows per optimisation step")
    warmup_ratio: float = option(0.05, "fraction of steps for linear warm-up, then linear decay to 0")
    max_length: int = option(512, "tokens per row (prompt + completion); longer rows are truncated and counted")
    eval_fraction: float = option(0.0, "fraction of rows held out; their loss is reported after every epoch")
    merge: bool = option(False, "with --lora: save the merged model instead of the adapter")
    limit: int | None = option(None, "use only the first N rows")
    log_every: int = option(10, "write a metrics line every N steps")
    save_every: int = option(0, "checkpoint every N steps into output_dir/checkpoints (0 = only at the end)")
    resume: bool = option(False, "continue from the latest checkpoint in output_dir (same data and settings)")


@dataclass(frozen=True)
class SFTExample:
    prompt: object  # text or chat message list
    completion: str


# ---------------------------------------------------------------- data


def load_sft_rows(path) -> list[SFTExample]:
    """SFT rows from a file, each validated; a bad row stops with a DataError naming it."""
    from rlhfkit.datafiles import read_records

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
    from rlhfkit.models.generation import format_prompt, uses_chat_template

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
    from rlhfkit.models.generation import pad

    ids, mask = pad([e.input_ids for e in batch], pad_id, device=device)
    if seq2seq:
        labels, lmask = pad([e.labels for e in batch], pad_id, device=device)
    else:
        labels, lmask = pad([e.labels for e in batch], -100, device=device)
    labels = labels.masked_fill(lmask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "tokens": int((labels != -100).sum())}


def _token_logprobs(model, batch, seq2seq: bool):
    """(log-probs of the label tokens, their mask), [B, T] each, from the model's logits."""
    from rlhfkit.ops.logprobs import logprobs_from_logits

    labels = batch["labels"]
    if seq2seq:
        inner = getattr(model, "module", model)  # under DDP the model's own methods are on .module
        decoder_ids = inner.prepare_decoder_input_ids_from_labels(labels=labels.clamp(min=0))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       decoder_input_ids=decoder_ids).logits
        targets = labels
    else:  # position t predicts token t + 1
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        targets = labels[:, 1:]
    mask = targets != -100
    return logprobs_from_logits(logits, targets.clamp(min=0)), mask


class _SFTTask:
    """The supervised loop's view of SFT: units are completion tokens, the loss their summed NLL."""

    def __init__(self, encoded: list[Encoded], pad_id: int, seq2seq: bool, device):
        self.encoded, self.pad_id, self.seq2seq, self.device = encoded, pad_id, seq2seq, device

    def units(self, indices) -> int:
        return sum(sum(t != -100 for t in self.encoded[i].labels[int(not self.seq2seq):]) for i in indices)

    def loss(self, model, indices):
        from rlhfkit.objectives.lm import nll_loss

        batch = _collate([self.encoded[i] for i in indices], self.pad_id, self.seq2seq, self.device)
        logprobs, mask = _token_logprobs(model, batch, self.seq2seq)
        return nll_loss(logprobs, mask, "token-sum"), {}


def evaluate_loss(model, tokenizer, encoded: list[Encoded], seq2seq: bool, batch_size: int = 8, autocast: bool = False) -> float:
    """Mean per-token loss over completion tokens."""
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    task = _SFTTask(encoded, tokenizer.pad_token_id, seq2seq, device)
    total, tokens = 0.0, 0
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        for start in range(0, len(encoded), batch_size):
            idx = list(range(start, min(start + batch_size, len(encoded))))
            loss, _ = task.loss(model, idx)
            total += loss.item()
            tokens += task.units(idx)
    model.train(was_training)
    return total / max(tokens, 1)


# ---------------------------------------------------------------- training


def _split(config: SFTConfig, examples: list, rng) -> tuple[list, list]:
    if config.eval_fraction <= 0:
        return examples, []
    if not config.eval_fraction < 1:
        raise UserError(f"--eval-fraction must be in [0, 1), got {config.eval_fraction}")
    order = list(range(len(examples)))
    rng.shuffle(order)
    n_eval = max(1, round(config.eval_fraction * len(examples)))
    if n_eval >= len(examples):
        raise UserError(f"{config.data}: too few rows ({len(examples)}) to hold out {config.eval_fraction:.0%}")
    return [examples[i] for i in sorted(order[n_eval:])], [examples[i] for i in order[:n_eval]]


def train_sft(config: SFTConfig, progress: bool = True) -> dict:
    """Fine-tune and save; returns {"steps": [loss per step], "epochs": [...], "out": folder}."""
    import torch

    from rlhfkit.config import save_yaml
    from rlhfkit.models import LoraOptions, load_policy
    from rlhfkit.training.supervised import shuffled_plan, start_loop

    if not config.data:
        raise UserError("no training data; pass --data FILE with rows {prompt, completion} or {messages}")
    for name in ("epochs", "batch_size", "max_length"):
        if getattr(config, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if config.merge and not config.lora:
        raise UserError("--merge only applies with --lora (full fine-tuning already saves the whole model)")
    from rlhfkit.training.runtime import everywhere

    # every row validated before the model is even loaded, on every process (one stops: all stop)
    examples = everywhere(lambda: load_sft_rows(config.data), "SFT data")
    if config.limit:
        examples = examples[: config.limit]
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    examples, held_out = _split(config, examples, rng)

    policy = load_policy(config.model, lora=LoraOptions.of(config))
    model, tokenizer, seq2seq = policy.model, policy.tokenizer, policy.seq2seq
    train_enc, cut = encode_examples(tokenizer, examples, seq2seq, config.max_length)
    if cut:
        print(f"rlhfkit sft: {cut} of {len(train_enc)} rows truncated to {config.max_length} tokens")
    eval_enc, eval_cut = encode_examples(tokenizer, held_out, seq2seq, config.max_length) if held_out else ([], 0)
    if eval_cut:
        print(f"rlhfkit sft: {eval_cut} of {len(eval_enc)} held-out rows truncated to {config.max_length} tokens")
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(config, out / "config.yaml")
    plan = shuffled_plan(len(train_enc), config.epochs, config.batch_size, rng)
    loop = start_loop(model, plan, config, "sft")
    task = _SFTTask(train_enc, tokenizer.pad_token_id, seq2seq, loop.runtime.device)
    print(f"rlhfkit sft: {len(train_enc)} training rows, {len(eval_enc)} held-out, {loop.total_steps} steps "
          f"({'seq2seq' if seq2seq else 'causal'}, {'LoRA' if config.lora else 'full fine-tuning'})")
    def after_epoch(record: dict) -> dict:
        line = f"epoch {record['epoch']}/{config.epochs}: train loss {record['train/epoch_loss']:.4f}"
        extra = {}
        if eval_enc:
            extra["eval/loss"] = evaluate_loss(loop.unwrapped, tokenizer, eval_enc, seq2seq, config.batch_size,
                                               config.mixed_precision == "bf16")
            line += f" | held-out loss {extra['eval/loss']:.4f}"
        if loop.runtime.is_main_process:
            print(line, flush=True)
        return extra

    history = loop.fit(task, after_epoch, progress)
    full = loop.runtime.full_state_dict(loop.model)  # FSDP / DeepSpeed: gathered from every process
    if loop.runtime.is_main_process:
        from rlhfkit.models.card import publish

        _save(loop.unwrapped, tokenizer, config, out, full)
        publish(out, "sft", config, datasets=[config.data], history=history)
    return {"steps": [row["loss"] for row in loop.steps], "epochs": history, "out": str(out)}


def _save(model, tokenizer, config, out: Path, state_dict: dict | None = None, method: str = "sft") -> None:
    """The adapter (or, with merge, the merged model) or the whole model, and the tokenizer (SFT, DPO)."""
    from rlhfkit.models import EMBEDDED

    if config.lora and config.merge:
        model = model.merge_and_unload()
        what = "merged model"
    elif config.lora:
        what = "LoRA adapter"
    else:
        what = "model"
    model.save_pretrained(out, **({"state_dict": state_dict} if state_dict is not None else {}))
    tokenizer.save_pretrained(out)
    adapter_file = out / "adapter_config.json"
    if config.lora and not config.merge and config.model in EMBEDDED and adapter_file.exists():
        # Record the embedded name, so the base rebuilds anywhere instead of pointing into this machine's cache.
        adapter = json.loads(adapter_file.read_text())
        adapter["base_model_name_or_path"] = config.model
        adapter_file.write_text(json.dumps(adapter, indent=2, sort_keys=True))
    print(f"rlhfkit {method}: {what} saved to {out}")
