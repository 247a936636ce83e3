"""Knowledge distillation (`rlhfkit distill`): a smaller student learns the tuned teacher's
next-token distributions, on the supervised loop.

    rlhfkit distill --teacher DIR --student-layers 15 --data prompts.jsonl --out DIR
    rlhfkit distill --teacher DIR --student NAME --data prompts.jsonl --loss jsd --beta 0.5 --on-policy-fraction 0.5

The teacher is a full folder, or base + adapter merged on the fly. The student is a given model
(same tokenizer) or the teacher with layers dropped, initialised from the teacher's own blocks
(evenly spaced, first and last kept: `compression.layers`). Causal and seq2seq.

Data: prompts, with completions where the rows have them; prompts without one get a completion
sampled once from the teacher (sequence-level KD, Kim & Rush 2016), kept in teacher_samples.jsonl.
On every completion token the loss is

    kd_weight * D(teacher || student at temperature T)  +  ce_weight * CE(student, the completion token)

with D one of `objectives.distill` (forward_kl, Hinton's soft targets scaled by T^2; reverse_kl; jsd,
GKD's generalised JSD with --beta). With --on-policy-fraction lambda, each step's prompts are, with
probability lambda, answered by the student itself before the step (the loop's `before_step`, no
gradients) and the divergence is taken on those samples, as GKD does; the hard-label term is left
out there (the student's own tokens are no labels). Each sequence's token-mean loss counts once
(units are sequences), so on-policy samples of any length weigh the same.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlhfkit.config import OptimFields, option
from rlhfkit.errors import UserError


@dataclass
class DistillConfig(OptimFields):
    teacher: str = option(None, "the tuned teacher: full folder, adapter folder (merged on the fly) or model name")
    student: str | None = option(None, "a smaller student model (name or folder) with the teacher's tokenizer")
    student_layers: int | None = option(None, "or: the teacher with only N blocks, initialised from its own blocks")
    data: str = option(None, "prompts {prompt} (the teacher answers them once) or rows {prompt, completion}")
    output_dir: str = option("runs/distill", "output folder: the student (plain transformers), metrics, report")
    loss: Literal["forward_kl", "reverse_kl", "jsd"] = option("forward_kl", "divergence to the teacher: "
                                                              "forward_kl (Hinton, x T^2), reverse_kl, jsd (GKD)")
    beta: float = option(0.5, "jsd: interpolation (0 = forward KL, 1 = reverse KL)")
    temperature: float = option(2.0, "softmax temperature of teacher and student in the divergence")
    kd_weight: float = option(1.0, "weight of the divergence to the teacher (soft targets)")
    ce_weight: float = option(0.2, "weight of the cross-entropy on the completion tokens (hard labels)")
    on_policy_fraction: float = option(0.0, "probability that a step's completions are the student's own samples (GKD's lambda)")
    keep_sparsity: bool = option(False, "keep the student's zero weights at zero (recovering a pruned model)")
    epochs: int = option(1, "passes over the data")
    batch_size: int = option(8, "prompts per optimisation step")
    learning_rate: float = option(1e-4, "peak learning rate (AdamW)")
    warmup_ratio: float = option(0.05, "fraction of steps for linear warm-up, then linear decay to 0")
    max_new_tokens: int = option(48, "tokens per teacher or student sample")
    sample_temperature: float = option(0.7, "temperature of the teacher's and the student's samples")
    max_length: int = option(256, "tokens per prompt + completion")
    limit: int | None = option(None, "use only the first N rows")
    log_every: int = option(10, "write a metrics line every N steps")
    measure: bool = option(True, "write the deployment table (teacher, student, and the layer-dropped student "
                                 "before distillation) into output_dir")
    heldout_prompts: str | None = option(None, "held-out prompts for the table (default: the shipped ones)")
    heldout_text: str | None = option(None, "held-out text for perplexity (default: the shipped documents)")
    n_prompts: int = option(32, "held-out prompts the table samples on")


# ---------------------------------------------------------------- data


def load_distill_rows(path) -> list[tuple[object, str | None]]:
    """(prompt, completion or None) per row."""
    from rlhfkit.datafiles import read_records
    from rlhfkit.data import maybe_json, parse_prompt, parse_text

    records = read_records(path)
    if not records:
        raise UserError(f"{path}: no rows; give prompts {{\"prompt\": ...}} (optionally with a \"completion\")")
    rows = []
    for row, rec in records:
        prompt = parse_prompt(path, row, rec)
        completion = rec.get("completion")
        rows.append((prompt, None if completion is None else parse_text(path, row, "completion", maybe_json(completion))))
    return rows


def teacher_completions(teacher, tokenizer, prompts, settings, seed: int, batch_size: int = 16) -> list[str]:
    from rlhfkit.models.generation import generate_completions

    return [c[0] for c in generate_completions(teacher, tokenizer, prompts, n=1, settings=settings,
                                               batch_size=batch_size, seed=seed)]


# ---------------------------------------------------------------- the student


def build_student(config: DistillConfig, teacher, teacher_tokenizer):
    """(student model, description): the given model, or the teacher with `student_layers` blocks."""
    from rlhfkit.compression.layers import block_stacks, evenly_spaced, keep_layers
    from rlhfkit.models.loading import load_policy

    if (config.student is None) == (config.student_layers is None):
        raise UserError("give the student: --student NAME|DIR (a smaller model) or --student-layers N "
                        "(the teacher with N blocks)")
    if config.student_layers is not None:
        stacks = block_stacks(teacher)
        plan = {}
        for path, blocks in stacks:
            if config.student_layers >= len(blocks):
                raise UserError(f"--student-layers {config.student_layers}: the teacher has {len(blocks)} blocks "
                                f"in {path}; a student needs fewer")
            plan[path] = evenly_spaced(len(blocks), config.student_layers)
        student = keep_layers(teacher, plan)
        return student, {"student": f"teacher with blocks {list(plan.values())[0]}", "kept_layers": plan}
    policy = load_policy(config.student, verbose=False)
    teacher_seq2seq = bool(getattr(teacher.config, "is_encoder_decoder", False))
    if policy.seq2seq != teacher_seq2seq:
        kinds = {True: "seq2seq", False: "causal"}
        raise UserError(f"--student {config.student} is a {kinds[policy.seq2seq]} model and the teacher a "
                        f"{kinds[teacher_seq2seq]} one; distil into a student of the teacher's kind")
    if policy.tokenizer.get_vocab() != teacher_tokenizer.get_vocab() or \
            policy.model.get_output_embeddings().weight.shape[0] != teacher.get_output_embeddings().weight.shape[0]:
        raise UserError(f"--student {config.student} has another vocabulary ({len(policy.tokenizer)} tokens) than the "
                        f"teacher ({len(teacher_tokenizer)}); token-level distillation needs the same tokenizer")
    return policy.model, {"student": config.student}


# ---------------------------------------------------------------- the task


def _logits(model, batch, seq2seq: bool):
    """(logits [B, T, V] at the positions that predict each target, targets [B, T], mask [B, T])."""
    labels = batch["labels"]
    if seq2seq:
        inner = getattr(model, "module", model)
        decoder_ids = inner.prepare_decoder_input_ids_from_labels(labels=labels.clamp(min=0))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       decoder_input_ids=decoder_ids).logits
        targets = labels
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        targets = labels[:, 1:]
    return logits, targets, targets != -100


class DistillTask:
    """The supervised loop's view of distillation: units are sequences; see the module docstring."""

    def __init__(self, teacher, encoded: list, queries: list, pad_id: int, seq2seq: bool, device,
                 config: DistillConfig, tokenizer, masks=None):
        from rlhfkit.objectives.distill import get_distill_loss

        self.teacher, self.encoded, self.queries = teacher, encoded, queries
        self.pad_id, self.seq2seq, self.device, self.config, self.tokenizer = pad_id, seq2seq, device, config, tokenizer
        self.divergence = get_distill_loss(config.loss)
        self.on_policy: dict[int, object] = {}  # this step's student samples, by example index
        self.masks = masks or []  # (parameter, keep-mask): zero weights that stay zero
        self.rng = random.Random(config.seed + 1)

    def units(self, indices) -> int:
        return len(indices)

    def before_step(self, model, indices, step: int) -> None:
        """With probability lambda, the student answers this step's prompts (GKD's on-policy data)."""
        from rlhfkit.methods.sft import Encoded
        from rlhfkit.models.generation import GenerationSettings, sample

        self.reapply_masks()
        self.on_policy = {}
        if self.config.on_policy_fraction <= 0 or self.rng.random() >= self.config.on_policy_fraction:
            return
        net = getattr(model, "module", model)
        was = net.training
        net.eval()
        settings = GenerationSettings(max_new_tokens=self.config.max_new_tokens,
                                      temperature=self.config.sample_temperature)
        responses = sample(net, self.tokenizer, [self.queries[i] for i in indices], settings)
        net.train(was)
        for i, r in zip(indices, responses):
            if not r:
                continue
            q = self.queries[i]
            self.on_policy[i] = Encoded(q, r) if self.seq2seq else Encoded(q + r, [-100] * len(q) + r)

    def reapply_masks(self) -> None:
        import torch

        with torch.no_grad():
            for p, keep in self.masks:
                p.mul_(keep)

    def loss(self, model, indices):
        import torch

        from rlhfkit.methods.sft import _collate

        rows = [self.on_policy.get(i, self.encoded[i]) for i in indices]
        hard = torch.tensor([i not in self.on_policy for i in indices], device=self.device)
        batch = _collate(rows, self.pad_id, self.seq2seq, self.device)
        logits, targets, mask = _logits(model, batch, self.seq2seq)
        with torch.no_grad():
            t_logits, _, _ = _logits(self.teacher, batch, self.seq2seq)
        m = mask.float()
        per_seq = m.sum(-1).clamp(min=1)
        div = self.divergence(logits, t_logits, temperature=self.config.temperature, beta=self.config.beta)
        kd = (div * m).sum(-1) / per_seq
        logp = torch.log_softmax(logits.float(), -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        ce = (-logp * m).sum(-1) / per_seq * hard
        total = self.config.kd_weight * kd + self.config.ce_weight * ce
        with torch.no_grad():
            top1 = ((logits.argmax(-1) == t_logits.argmax(-1)).float() * m).sum(-1) / per_seq
        return total.sum(), {"kd": float(kd.detach().sum()), "ce": float(ce.detach().sum()),
                             "top1_match": float(top1.sum()),
                             "on_policy": float((~hard).sum())}


# ---------------------------------------------------------------- training


def check_distill_config(config: DistillConfig) -> None:
    if not config.teacher:
        raise UserError("--teacher is required: the tuned model to distil (folder, adapter folder or name)")
    if not config.data:
        raise UserError("--data is required: prompts {prompt} or rows {prompt, completion}")
    if config.temperature <= 0:
        raise UserError("--temperature must be positive")
    if not 0 <= config.beta <= 1:
        raise UserError(f"--beta {config.beta}: must be in [0, 1] (0 = forward KL, 1 = reverse KL)")
    if not 0 <= config.on_policy_fraction <= 1:
        raise UserError(f"--on-policy-fraction {config.on_policy_fraction}: a probability in [0, 1]")
    if config.kd_weight < 0 or config.ce_weight < 0 or config.kd_weight + config.ce_weight == 0:
        raise UserError("--kd-weight and --ce-weight must be >= 0 and not both 0")
    for name in ("epochs", "batch_size", "max_length", "max_new_tokens"):
        if getattr(config, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if config.student_layers is not None and config.student_layers < 1:
        raise UserError("--student-layers must be at least 1")


def train_distill(config: DistillConfig, progress: bool = True, teacher_source=None) -> dict:
    """Distil and save the student; returns {"out", "steps", "epochs", "student"}."""
    import copy

    import torch

    from rlhfkit.compression.source import load_source, save_plain
    from rlhfkit.config import save_yaml
    from rlhfkit.datafiles import write_jsonl
    from rlhfkit.methods.sft import SFTExample, encode_examples
    from rlhfkit.models.generation import GenerationSettings, encode_prompts
    from rlhfkit.training.supervised import LoopSettings, SupervisedLoop, shuffled_plan

    check_distill_config(config)
    rows = load_distill_rows(config.data)[: config.limit or None]
    torch.manual_seed(config.seed)
    src = teacher_source or load_source(config.teacher, "--teacher")
    teacher, tokenizer, seq2seq = src.model, src.tokenizer, src.seq2seq
    student, about = build_student(config, teacher, tokenizer)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(config, out / "config.yaml")
    missing = [i for i, (_, c) in enumerate(rows) if c is None]
    completions = [c for _, c in rows]
    if missing:
        print(f"rlhfkit distill: the teacher answers {len(missing)} prompts (sequence-level targets)")
        settings = GenerationSettings(max_new_tokens=config.max_new_tokens, temperature=config.sample_temperature)
        answers = teacher_completions(teacher, tokenizer, [rows[i][0] for i in missing], settings, config.seed)
        for i, a in zip(missing, answers):
            completions[i] = a
        from rlhfkit.data import prompt_to_json

        write_jsonl(out / "teacher_samples.jsonl",
                    [{**prompt_to_json(rows[i][0]), "completion": completions[i]} for i in missing])
    examples = [SFTExample(p, c) for (p, _), c in zip(rows, completions)]
    encoded, cut = encode_examples(tokenizer, examples, seq2seq, config.max_length)
    if cut:
        print(f"rlhfkit distill: {cut} of {len(encoded)} rows truncated to {config.max_length} tokens")
    queries = encode_prompts(tokenizer, [p for p, _ in rows], max_length=config.max_length // 2)
    undistilled = copy.deepcopy(student) if config.measure and config.student_layers else None
    rng = random.Random(config.seed)
    plan = shuffled_plan(len(encoded), config.epochs, config.batch_size, rng)
    for p in student.parameters():
        p.requires_grad_(True)
    student.train()
    loop = SupervisedLoop(student, LoopSettings.of(config, save_every=0), plan, out, config)
    if (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()
    teacher.to(loop.runtime.device)
    masks = []
    if config.keep_sparsity:
        from rlhfkit.compression.prune import prunable_layers

        masks = [(m.weight, (m.weight != 0).to(m.weight.dtype)) for _, _, m in prunable_layers(loop.unwrapped)]
    task = DistillTask(teacher, encoded, queries, tokenizer.pad_token_id, seq2seq, loop.runtime.device, config,
                       tokenizer, masks)
    from rlhfkit.compression.layers import count_blocks

    print(f"rlhfkit distill: {len(encoded)} rows, {loop.total_steps} steps; teacher {count_blocks(teacher)} blocks -> "
          f"student {count_blocks(student)} blocks ({about['student']}); loss {config.kd_weight} x {config.loss} "
          f"(T={config.temperature}) + {config.ce_weight} x CE, on-policy fraction {config.on_policy_fraction}")
    history = loop.fit(task, progress=progress)
    task.reapply_masks()
    result = {"out": str(out), "steps": loop.steps, "epochs": history, "student": about}
    if loop.runtime.is_main_process:
        from rlhfkit.models.card import publish

        net = loop.unwrapped.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        save_plain(net, tokenizer, out)
        (out / "compression.json").write_text(json.dumps(
            {"method": "distill", "teacher": str(config.teacher), **{k: str(v) for k, v in about.items()},
             "loss": config.loss, "temperature": config.temperature, "beta": config.beta,
             "kd_weight": config.kd_weight, "ce_weight": config.ce_weight,
             "on_policy_fraction": config.on_policy_fraction, "steps": loop.step}, indent=1))
        publish(out, "distill", config, base_model=str(config.teacher), datasets=[config.data], history=history)
        print(f"rlhfkit distill: student saved to {out}")
        if undistilled is not None:
            base = out / "baselines" / "layer-dropped"
            save_plain(undistilled.eval(), tokenizer, base)
            result["undistilled"] = str(base)
    return result
