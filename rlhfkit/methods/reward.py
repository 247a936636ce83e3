"""Train a scalar reward model on preference pairs, Bradley-Terry (`rlhfkit reward`): the supervised loop.

Pairs come from a pairs file or a rankings file (expanded to pairs). The model
is a sequence classifier with one output (default backbone: the embedded
`minilm-l6` encoder) reading (prompt, completion) as a text pair. Loss per pair:
-log sigmoid(r_chosen - r_rejected - margin); with `ties="half"` a ranking's tied
pairs count too, as half a win each way. A held-out split (by prompt, so no
prompt's completions are in both halves) gives pairwise accuracy and loss on the
decisive pairs after every epoch (and the mean reward gap of tied pairs). The saved folder loads with
`AutoModelForSequenceClassification.from_pretrained` and as a reward with
`get_reward("FOLDER")`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlhfkit.config import OptimFields, option, renamed
from rlhfkit.errors import UserError


@renamed(backbone="model", lr="learning_rate", out="output_dir")
@dataclass
class RewardConfig(OptimFields):
    model: str = option("minilm-l6", "embedded name, hub id or folder of the encoder/classifier to train")
    data: str = option(None, "pairs {prompt, chosen, rejected} or rankings {prompt, completions, ranks} file")
    eval_data: str | None = option(None, "held-out pairs/rankings file (default: split --eval-fraction off --data)")
    eval_fraction: float = option(0.1, "fraction of prompts held out for evaluation when --eval-data is not given")
    output_dir: str = option("runs/reward", "output folder: model, tokenizer, config.yaml, metrics.jsonl")
    epochs: int = option(2, "passes over the training pairs")
    batch_size: int = option(16, "pairs per optimisation step (whole prompts: see --group-by-prompt)")
    group_by_prompt: bool = option(True, "keep all pairs of a prompt in one batch, each distinct completion scored "
                                         "once (InstructGPT): K forward passes for a ranking's K-choose-2 pairs")
    warmup_ratio: float = option(0.1, "fraction of steps for linear warm-up, then linear decay to 0")
    margin: float = option(0.0, "margin the chosen reward should win by: loss -log sigmoid(r_c - r_r - margin)")
    ties: Literal["drop", "half"] = option("drop", "completions a ranking ranks equal: drop their pairs (InstructGPT, "
                                                   "TRL), or train on them as half a win each way (a draw in "
                                                   "Bradley-Terry), which pulls their rewards together")
    max_length: int = option(256, "tokens per (prompt, completion) sequence; longer ones are truncated and counted")
    limit: int | None = option(None, "use only the first N pairs of --data")
    log_every: int = option(10, "write a metrics line every N steps")
    save_every: int = option(0, "checkpoint every N steps into output_dir/checkpoints (0 = only at the end)")
    resume: bool = option(False, "continue from the latest checkpoint in output_dir (same data and settings)")


def _prompt_key(pair) -> str:
    return pair.prompt if isinstance(pair.prompt, str) else json.dumps(pair.prompt, sort_keys=True)


def split_by_prompt(pairs: list, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out whole prompts (all their pairs) so held-out accuracy is on unseen prompts.

    With a single distinct prompt, pairs are split at random instead.
    """
    if fraction <= 0:
        return list(pairs), []
    if not 0 < fraction < 1:
        raise UserError(f"--eval-fraction must be in [0, 1), got {fraction}")
    keys = [_prompt_key(p) for p in pairs]
    groups = sorted(set(keys))
    rng = random.Random(seed)
    if len(groups) < 2:
        order = list(range(len(pairs)))
        rng.shuffle(order)
        n_eval = max(1, round(fraction * len(pairs))) if len(pairs) > 1 else 0
        held = set(order[:n_eval])
    else:
        rng.shuffle(groups)
        n_eval = min(len(groups) - 1, max(1, round(fraction * len(groups))))
        held_groups = set(groups[:n_eval])
        held = {i for i, k in enumerate(keys) if k in held_groups}
    train = [p for i, p in enumerate(pairs) if i not in held]
    held_out = [p for i, p in enumerate(pairs) if i in held]
    return train, held_out


def training_batches(pairs: list, batch_size: int, rng: random.Random, group_by_prompt: bool) -> list[list[int]]:
    """One epoch's batches of pair indices, shuffled.

    `group_by_prompt`: prompts are shuffled and packed whole, in order, into batches of
    up to `batch_size` pairs (a prompt with more pairs fills a batch alone), so the
    K-choose-2 pairs of a ranking are seen together. InstructGPT found that shuffling a
    ranking's correlated pairs apart makes the model overfit within an epoch.
    Otherwise pairs are shuffled individually.
    """
    if not group_by_prompt:
        order = list(range(len(pairs)))
        rng.shuffle(order)
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    groups: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        groups.setdefault(_prompt_key(pair), []).append(i)
    order = list(groups.values())
    rng.shuffle(order)
    batches, current = [], []
    for group in order:
        if current and len(current) + len(group) > batch_size:
            batches.append(current)
            current = []
        current = current + group
    return batches + ([current] if current else [])


def encode_pairs(tokenizer, pairs, max_length: int, what: str = "pairs") -> list[tuple[dict, dict]]:
    """(chosen features, rejected features) per pair, as the reward model sees them (a text pair
    `tokenizer(prompt, completion)`); prints how many pairs were truncated."""
    from rlhfkit.data import prompt_text
    from rlhfkit.rewards import encode_for_classifier

    prompts = [prompt_text(p.prompt) for p in pairs]
    chosen = encode_for_classifier(tokenizer, prompts, [p.chosen for p in pairs], True, None)
    rejected = encode_for_classifier(tokenizer, prompts, [p.rejected for p in pairs], True, None)
    long = [i for i, (c, r) in enumerate(zip(chosen, rejected))
            if len(c["input_ids"]) > max_length or len(r["input_ids"]) > max_length]
    if long:
        print(f"rlhfkit reward: {len(long)} of {len(pairs)} {what} truncated to {max_length} tokens")
        sub = [pairs[i] for i in long]
        sub_prompts = [prompts[i] for i in long]
        cut_c = encode_for_classifier(tokenizer, sub_prompts, [p.chosen for p in sub], True, max_length)
        cut_r = encode_for_classifier(tokenizer, sub_prompts, [p.rejected for p in sub], True, max_length)
        for i, c, r in zip(long, cut_c, cut_r):
            chosen[i], rejected[i] = c, r
            if c["input_ids"] == r["input_ids"]:
                raise UserError(
                    f"{what}: pair {i + 1} (prompt {prompts[i][:40]!r}) has identical chosen and rejected after "
                    f"truncation to {max_length} tokens; raise --max-length"
                )
    return list(zip(chosen, rejected))


def load_reward_backbone(name: str, seed: int = 0):
    """A one-output sequence classifier (reward head freshly initialised when the backbone has none) + tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.models import load_config, load_tokenizer, resolve

    config = load_config(name)
    if getattr(config, "is_encoder_decoder", False):
        raise UserError(f"backbone '{name}' is an encoder-decoder model; use an encoder (BERT/RoBERTa) or a decoder")
    torch.manual_seed(seed)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            resolve(name), num_labels=1, ignore_mismatched_sizes=True
        )
    except (OSError, ValueError) as e:
        raise UserError(f"cannot build a reward model from '{name}': {str(e).splitlines()[0]}") from None
    tokenizer = load_tokenizer(name)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.config.id2label, model.config.label2id = {0: "reward"}, {"reward": 0}
    model.config.problem_type = "regression"
    model.config.rlhfkit_pair_input = True
    return model, tokenizer


def pair_rewards(model, pairs: list[tuple[dict, dict]], pad_id: int, autocast: bool = False):
    """(r_chosen [n], r_rejected [n]) for encoded pairs, each distinct sequence scored once:
    the pairs of one ranking share its K completions, so K forward passes serve K-choose-2 pairs."""
    import torch

    from rlhfkit.rewards import classifier_logits, collate_features

    index: dict[tuple, int] = {}
    unique, slots = [], []
    for pair in pairs:
        for features in pair:
            key = (tuple(features["input_ids"]), tuple(features.get("token_type_ids", ())))
            if key not in index:
                index[key] = len(unique)
                unique.append(features)
            slots.append(index[key])
    batch = collate_features(unique, pad_id, next(model.parameters()).device)
    device = next(model.parameters()).device.type
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
        r = classifier_logits(model, batch)[:, 0].float()
    slots = torch.tensor(slots, device=r.device).view(-1, 2)
    return r[slots[:, 0]], r[slots[:, 1]]


def evaluate_pairs(model, tokenizer, encoded, batch_size: int = 32, margin: float = 0.0, autocast: bool = False,
                   tied=()) -> dict:
    """Pairwise accuracy (equal rewards count half) and mean Bradley-Terry loss over the encoded
    decisive pairs; with `tied` (encoded tied pairs), their mean reward gap |r_a - r_b| as `tie_gap`."""
    import torch

    from rlhfkit.objectives.preference import bradley_terry_loss

    if not encoded:
        return {}
    was_training = model.training
    model.eval()
    total_loss, correct, gap = 0.0, 0.0, 0.0
    with torch.inference_mode():
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start:start + batch_size]
            rc, rr = pair_rewards(model, chunk, tokenizer.pad_token_id, autocast)
            total_loss += bradley_terry_loss(rc, rr, margin).item() * len(chunk)
            correct += ((rc > rr).float() + 0.5 * (rc == rr).float()).sum().item()
        for start in range(0, len(tied), batch_size):
            ra, rb = pair_rewards(model, tied[start:start + batch_size], tokenizer.pad_token_id, autocast)
            gap += (ra - rb).abs().sum().item()
    model.train(was_training)
    out = {"loss": total_loss / len(encoded), "accuracy": correct / len(encoded), "pairs": len(encoded)}
    return out | ({"tie_gap": gap / len(tied), "tied_pairs": len(tied)} if tied else {})


def _prepare(config: RewardConfig):
    from rlhfkit.data import load_preferences

    if not config.data:
        raise UserError("no training data; pass --data FILE (pairs {prompt, chosen, rejected} or rankings)")
    for name in ("epochs", "batch_size", "max_length"):
        if getattr(config, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if config.ties not in ("drop", "half"):
        raise UserError(f"--ties {config.ties!r}: use drop or half")
    ties = config.ties == "half"
    pairs = load_preferences(config.data, ties)  # validates every row before anything is trained
    if config.limit:
        pairs = pairs[: config.limit]
    if config.eval_data:
        train, held_out = pairs, load_preferences(config.eval_data, ties)
    else:
        train, held_out = split_by_prompt(pairs, config.eval_fraction, config.seed)
    if not train:
        raise UserError(f"{config.data}: no training pairs left after the held-out split; lower --eval-fraction")
    return train, held_out


class _PairTask:
    """The supervised loop's view of reward modelling: units are pairs, the loss their summed BT loss
    (a tied pair's: half a win each way). The accuracy stat counts a tied pair half, as chance would."""

    def __init__(self, encoded, pad_id: int, margin: float, tie: list[bool] | None = None):
        self.encoded, self.pad_id, self.margin = encoded, pad_id, margin
        self.tie = tie if tie is not None else [False] * len(encoded)

    def units(self, indices) -> int:
        return len(indices)

    def loss(self, model, indices):
        import torch

        from rlhfkit.objectives.preference import bradley_terry_loss, bradley_terry_tie_loss

        rc, rr = pair_rewards(model, [self.encoded[i] for i in indices], self.pad_id)
        tie = torch.tensor([self.tie[i] for i in indices], device=rc.device)
        loss = bradley_terry_loss(rc[~tie], rr[~tie], self.margin, reduction="sum")
        if tie.any():
            loss = loss + bradley_terry_tie_loss(rc[tie], rr[tie], reduction="sum")
        return loss, {"accuracy": (rc > rr)[~tie].sum().item() + 0.5 * tie.sum().item()}


def train_reward_model(config: RewardConfig, progress: bool = True) -> dict:
    """Train, evaluate every epoch, save; returns {"train": [...per epoch], "eval": [...], "out": folder}."""
    from rlhfkit.config import save_yaml
    from rlhfkit.training.supervised import start_loop

    from rlhfkit.training.runtime import everywhere

    train, held_out = everywhere(lambda: _prepare(config), "preference data")  # one process stops: all stop
    out = Path(config.output_dir)
    random.seed(config.seed)
    model, tokenizer = load_reward_backbone(config.model, config.seed)
    train_enc = encode_pairs(tokenizer, train, config.max_length, "training pairs")
    decisive, tied = [p for p in held_out if not p.tie], [p for p in held_out if p.tie]
    eval_enc = encode_pairs(tokenizer, decisive, config.max_length, "held-out pairs") if decisive else []
    eval_tied = encode_pairs(tokenizer, tied, config.max_length, "held-out tied pairs") if tied else []
    n_tied = sum(p.tie for p in train)
    print(
        f"rlhfkit reward: {len(train_enc)} training pairs" + (f" ({n_tied} of them ties)" if n_tied else "")
        + f", {len(eval_enc)} held-out pairs, backbone {config.model}"
        + ("" if eval_enc else " (no held-out split: --eval-fraction 0)")
    )
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(config, out / "config.yaml")
    autocast = config.mixed_precision == "bf16"
    rng = random.Random(config.seed)
    plan = [training_batches(train, config.batch_size, rng, config.group_by_prompt) for _ in range(config.epochs)]
    loop = start_loop(model, plan, config, "reward")
    history = {"train": [], "eval": [], "out": str(out)}
    if eval_enc and loop.step == 0:
        before = evaluate_pairs(loop.unwrapped, tokenizer, eval_enc, config.batch_size * 2, config.margin, autocast,
                                eval_tied)
        print(f"before training: held-out loss {before['loss']:.4f}, accuracy {before['accuracy']:.1%}")
        loop._log(out / "metrics.jsonl", {"epoch": 0, "step": 0, **{f"eval/{k}": v for k, v in before.items()}})

    def after_epoch(record: dict) -> dict:
        line = f"epoch {record['epoch']}/{config.epochs}: train loss {record['train/epoch_loss']:.4f}, " \
               f"accuracy {record['train/epoch_accuracy']:.1%}"
        extra = {}
        if eval_enc:
            ev = evaluate_pairs(loop.unwrapped, tokenizer, eval_enc, config.batch_size * 2, config.margin, autocast,
                                eval_tied)
            extra = {f"eval/{k}": v for k, v in ev.items()}
            line += f" | held-out loss {ev['loss']:.4f}, accuracy {ev['accuracy']:.1%} ({ev['pairs']} pairs)"
            if "tie_gap" in ev:
                line += f", tied pairs' mean reward gap {ev['tie_gap']:.3f}"
        if loop.runtime.is_main_process:
            print(line, flush=True)
        return extra

    task = _PairTask(train_enc, tokenizer.pad_token_id, config.margin, [p.tie for p in train])
    for r in loop.fit(task, after_epoch, progress):
        history["train"].append({"epoch": r["epoch"], "loss": r["train/epoch_loss"],
                                 "accuracy": r["train/epoch_accuracy"], "seconds": r["seconds"]})
        if "eval/loss" in r:
            history["eval"].append({"epoch": r["epoch"], **{k[5:]: v for k, v in r.items() if k.startswith("eval/")}})
    full = loop.runtime.full_state_dict(loop.model)  # FSDP / DeepSpeed: gathered from every process
    if loop.runtime.is_main_process:
        from rlhfkit.models.card import publish

        loop.unwrapped.save_pretrained(out, **({"state_dict": full} if full is not None else {}))
        tokenizer.save_pretrained(out)
        publish(out, "reward", config, datasets=[config.data, config.eval_data], history=loop.history)
    final = history["eval"][-1] if history["eval"] else None
    if final:
        print(f"rlhfkit reward: held-out pairwise accuracy {final['accuracy']:.1%} on {final['pairs']} pairs; "
              f"model saved to {out}")
    else:
        print(f"rlhfkit reward: model saved to {out}")
    return history
