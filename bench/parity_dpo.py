"""TRL 1.16's values for the DPO family on a fixed batch: loss and gradients per case, for tests/test_dpo_parity.py.

    bench/.venv-trl116/bin/python bench/parity_dpo.py SPEC.json

Runs in the TRL venv (bench/peers.py builds it) and imports nothing of rlhfkit. SPEC names
a causal policy folder, a reference folder (another model: the log-ratios are not 0), a
tokenizer folder (only for the trainers' constructors), token-id pairs and KTO examples,
and the cases: {"name", "trainer": dpo | cpo | orpo | kto, "args": {...the trainer
config's fields}}. For each case the trainer's own loss function runs on the batch built
by TRL's own collator (DPO, KTO) or in CPO/ORPO's padded layout, the model in train mode
(the tiny models have no dropout), then backward. Writes OUT/trl.json ({case: {"loss"}})
and OUT/<case>.pt (the policy's gradients by parameter name); CPO and ORPO cases also give their
`nll_loss` metric (ORPO's NLL covers prompt and completion tokens, ours only the completion).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch


def _dataset():
    from datasets import Dataset

    return Dataset.from_dict({"prompt": ["a b", "c d"], "chosen": [" e", " f"], "rejected": [" g", " h"]})


def _kto_dataset():
    from datasets import Dataset

    return Dataset.from_dict({"prompt": ["a b", "c d"], "completion": [" e", " f"], "label": [True, False]})


def _padded(rows, pad):
    width = max(len(r) for r in rows)
    return torch.tensor([r + [pad] * (width - len(r)) for r in rows])


def cpo_batch(pairs, pad_id):
    """CPO/ORPO's tokenized layout: prompt + completion, labels -100 on the prompt, right-padded."""
    out = {}
    for key, k in (("chosen", 1), ("rejected", 2)):
        ids = [p[0] + p[k] for p in pairs]
        out[f"{key}_input_ids"] = _padded(ids, pad_id)
        out[f"{key}_attention_mask"] = _padded([[1] * len(x) for x in ids], 0)
        out[f"{key}_labels"] = _padded([[-100] * len(p[0]) + p[k] for p in pairs], -100)
    return out


def run_case(case, spec, work: Path, extra: dict) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    pad_id = spec["pad_id"]
    common = dict(output_dir=str(work / case["name"]), report_to="none", use_cpu=True, per_device_train_batch_size=2,
                  gradient_checkpointing=False, bf16=False, fp16=False)
    kind, args = case["trainer"], case["args"]
    ref = AutoModelForCausalLM.from_pretrained(spec["ref"], dtype=torch.float32) if kind in ("dpo", "kto") else None
    if kind == "dpo":
        from trl import DPOConfig, DPOTrainer
        from trl.trainer.dpo_trainer import DataCollatorForPreference

        trainer = DPOTrainer(model=policy, ref_model=ref, args=DPOConfig(**common, **args), train_dataset=_dataset(),
                             processing_class=tokenizer)
        batch = DataCollatorForPreference(pad_token_id=pad_id)(
            [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in spec["pairs"]])
        trainer.model.train()
        loss = trainer._compute_loss(trainer.model, batch, False)
    elif kind in ("cpo", "orpo"):
        if kind == "cpo":
            from trl.experimental.cpo import CPOConfig as Config, CPOTrainer as Trainer
        else:
            from trl.experimental.orpo import ORPOConfig as Config, ORPOTrainer as Trainer
        trainer = Trainer(model=policy, args=Config(**common, **args), train_dataset=_dataset(),
                          processing_class=tokenizer)
        trainer.model.train()
        loss, metrics = trainer.get_batch_loss_metrics(trainer.model, cpo_batch(spec["pairs"], pad_id), "train")
        extra["nll_loss"] = float(metrics["nll_loss"])
    elif kind == "kto":
        from trl import KTOConfig, KTOTrainer
        from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

        trainer = KTOTrainer(model=policy, ref_model=ref, args=KTOConfig(**common, **args),
                             train_dataset=_kto_dataset(), processing_class=tokenizer)
        kto = spec["kto"]
        batch = DataCollatorForUnpairedPreference(pad_token_id=pad_id)(
            [{"prompt_ids": p, "completion_ids": c, "KL_completion_ids": k, "label": bool(lab)}
             for p, c, k, lab in zip(kto["prompts"], kto["completions"], kto["kl_completions"], kto["labels"])])
        trainer.model.train()
        loss = trainer._compute_loss(trainer.model, batch, False)
    else:
        raise SystemExit(f"unknown trainer {kind!r}")
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    torch.save(grads, Path(spec["out"]) / f"{case['name']}.pt")
    return float(loss.item())


def main(path: str) -> None:
    import trl

    spec = json.loads(Path(path).read_text())
    torch.set_num_threads(spec.get("threads", 2))
    results = {"trl_version": trl.__version__, "cases": {}}
    with tempfile.TemporaryDirectory() as work:
        for case in spec["cases"]:
            extra = {}
            results["cases"][case["name"]] = {"loss": run_case(case, spec, Path(work), extra), **extra}
    (Path(spec["out"]) / "trl.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
