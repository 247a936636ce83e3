"""Direct preference optimisation (`rlhfkit dpo`): the DPO family on the supervised loop, causal or seq2seq.

Data: pairs {prompt, chosen, rejected} (text or conversations, the prompt explicit or
implicit), rankings (each row's N-choose-2 pairs, ties dropped), or, for `kto`,
unpaired rows {prompt, completion, label} (pairs and rankings convert to it). See
`rlhfkit.data`.

Losses (`--loss-type`, several with `--loss-weights`, as TRL): sigmoid (DPO; with
`--label-smoothing` conservative DPO), robust, hinge, ipo, sft, simpo, orpo and kto;
the maths is in `rlhfkit.objectives.dpo`. The reference is, as PPO's, a
`models.reference.Reference`: the given `--ref-model`, the LoRA policy with its adapters
switched off (no second copy), or a frozen copy under full fine-tuning; simpo, orpo and
sft need none and none is built. `--precompute-ref` computes the reference's log-probs
once before training and drops the reference from memory.

Sequences: the prompt exactly as generation builds it (chat template with the generation
prompt where the model has one), then the completion and EOS, as SFT encodes them; pairs
longer than `--max-length` are counted and reported with their rows and then truncated
(prompt start, completion ends), left out, or stop the run (`--long-pairs`). Logged metrics
carry TRL's names: rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies,
logps/chosen, logps/rejected, logits/chosen, logits/rejected (and kl for kto).
"""

from __future__ import annotations

import random
from pathlib import Path

from rlhfkit.errors import UserError
from rlhfkit.methods.dpo_config import LOSS_TYPES, DPOConfig
from rlhfkit.methods.dpo_encoding import EncodedExample, EncodedPair, encode_pairs, encode_unpaired, mismatched
from rlhfkit.methods.dpo_tasks import KTOTask, PairTask, ReferenceLogps, evaluate_task

# ---------------------------------------------------------------- loading


def load_training_data(config: DPOConfig):
    """(train, held-out) pairs, or KTO examples; every row validated before any model loads."""
    from rlhfkit.data import load_preferences, load_unpaired
    from rlhfkit.methods.reward import split_by_prompt

    load = load_unpaired if config.unpaired else load_preferences
    items = load(config.data)
    if config.limit:
        items = items[: config.limit]
    if config.eval_data:
        train, held_out = items, load(config.eval_data)
    else:
        train, held_out = split_by_prompt(items, config.eval_fraction, config.seed)
    if not train:
        raise UserError(f"{config.data}: nothing left to train on after the held-out split; lower --eval-fraction")
    if config.unpaired:
        good = sum(e.label for e in train)
        if good == 0 or good == len(train):
            which = "desirable (label true)" if good else "undesirable (label false)"
            raise UserError(f"{config.data}: all {len(train)} KTO examples are {which}; KTO needs both classes "
                            "(its loss compares each against the batch's KL reference point)")
    return train, held_out


# ---------------------------------------------------------------- training


def _no_dropout(model) -> None:
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def _reference(config: DPOConfig, model):
    """The Reference this run compares against (None for reference-free losses): the given model, the
    policy with its adapters off under LoRA (no second copy), else a frozen copy of the policy as it starts."""
    from rlhfkit.models.reference import Reference

    if not config.needs_reference:
        return None
    if config.ref_model:
        from rlhfkit.models import load_policy

        given = load_policy(config.ref_model, verbose=False).model
        if config.disable_dropout:
            _no_dropout(given)
        return Reference.given(given)
    return Reference.for_policy(model)


def train_dpo(config: DPOConfig, progress: bool = True) -> dict:
    """Train, evaluate every epoch when there is held-out data, save; returns
    {"steps": [loss per step], "epochs": [...], "out": folder, "reference": kind}."""
    import torch

    from rlhfkit.config import save_yaml
    from rlhfkit.models import LoraOptions, load_policy
    from rlhfkit.training.runtime import everywhere
    from rlhfkit.training.supervised import shuffled_plan, start_loop

    config.check()
    train, held_out = everywhere(lambda: load_training_data(config), "DPO data")
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    policy = load_policy(config.model, lora=LoraOptions.of(config))
    model, tokenizer, seq2seq = policy.model, policy.tokenizer, policy.seq2seq
    if config.disable_dropout:
        _no_dropout(model)
    what = "examples" if config.unpaired else "pairs"
    encode = encode_unpaired if config.unpaired else encode_pairs
    train_enc = encode(tokenizer, train, seq2seq, config.max_length, config.long_pairs, f"training {what}")
    eval_enc = encode(tokenizer, held_out, seq2seq, config.max_length, config.long_pairs, f"held-out {what}")
    # a frozen copy is taken before the loop prepares (and later updates) the policy
    reference = _reference(config, model)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(config, out / "config.yaml")
    plan = shuffled_plan(len(train_enc), config.epochs, config.batch_size, rng)
    loop = start_loop(model, plan, config, "dpo")
    if config.gradient_checkpointing:
        from rlhfkit.models.speed import checkpoint_activations

        checkpoint_activations(loop.unwrapped)  # the loop's model.train() keeps the layers' flag on
    pad_id = tokenizer.pad_token_id
    kind = reference.kind if reference is not None else "none"
    ref = None
    if reference is not None:
        if reference.kind == "adapters_off":  # the prepared policy's own peft model, adapters switched off
            from rlhfkit.models.reference import Reference

            reference = Reference.adapters_off(loop.unwrapped)
        ref = ReferenceLogps(reference.to(loop.runtime.device), pad_id, config.shares_prompt)
        if config.precompute_ref:
            items = train_enc + eval_enc
            if config.unpaired:
                kl_train = [(train_enc[i].prompt, train_enc[j].completion)
                            for i, j in enumerate(mismatched(len(train_enc), config.batch_size))]
                kl_eval = [(eval_enc[i].prompt, eval_enc[j].completion)
                           for i, j in enumerate(mismatched(len(eval_enc), config.batch_size))]
                prompts = [x.prompt for x in items] + [p for p, _ in kl_train + kl_eval]
                completions = [x.completion for x in items] + [c for _, c in kl_train + kl_eval]
            else:
                prompts = [x.prompt for x in items] * 2
                completions = [x.chosen for x in items] + [x.rejected for x in items]
            ref.precompute(prompts, completions, max(2 * config.batch_size, 8), progress and loop.runtime.is_main_process)
            del reference
            kind += ", precomputed"
    reduce = loop.runtime.reduce_sum if loop.runtime.num_processes > 1 else None
    if config.unpaired:
        task, eval_task = (KTOTask(train_enc, pad_id, config, ref, reduce),
                           KTOTask(eval_enc, pad_id, config, ref) if eval_enc else None)
    else:
        task, eval_task = (PairTask(train_enc, pad_id, config, ref),
                           PairTask(eval_enc, pad_id, config, ref) if eval_enc else None)
    print(f"rlhfkit dpo: {len(train_enc)} training {what}, {len(eval_enc)} held-out, {loop.total_steps} steps, "
          f"loss {'+'.join(config.loss_type)} ({'seq2seq' if seq2seq else 'causal'}, "
          f"{'LoRA' if config.lora else 'full fine-tuning'}, reference: {kind})")

    def after_epoch(record: dict) -> dict:
        line = f"epoch {record['epoch']}/{config.epochs}: train loss {record['train/epoch_loss']:.4f}"
        if "train/epoch_rewards/accuracies" in record:
            line += f", reward accuracy {record['train/epoch_rewards/accuracies']:.1%}"
        extra = {}
        if eval_task is not None:
            ev = evaluate_task(loop.unwrapped, eval_task, len(eval_enc), config.batch_size,
                               config.mixed_precision == "bf16")
            extra = {f"eval/{k}": v for k, v in ev.items()}
            line += f" | held-out loss {ev['loss']:.4f}"
            if "rewards/accuracies" in ev:
                line += f", reward accuracy {ev['rewards/accuracies']:.1%}"
        if loop.runtime.is_main_process:
            print(line, flush=True)
        return extra

    history = loop.fit(task, after_epoch, progress)
    full = loop.runtime.full_state_dict(loop.model)
    if loop.runtime.is_main_process:
        from rlhfkit.methods.sft import _save
        from rlhfkit.models.card import publish

        _save(loop.unwrapped, tokenizer, config, out, full, method="dpo")
        publish(out, "kto" if config.unpaired else "dpo", config, datasets=[config.data, config.eval_data],
                history=history)
    return {"steps": [row["loss"] for row in loop.steps], "epochs": history, "out": str(out), "reference": kind}


__all__ = ["DPOConfig", "EncodedExample", "EncodedPair", "KTOTask", "LOSS_TYPES", "PairTask", "encode_pairs",
           "encode_unpaired", "evaluate_task", "load_training_data", "mismatched", "train_dpo"]
