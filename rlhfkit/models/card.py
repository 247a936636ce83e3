"""Model cards: the README.md with Hub metadata that every saved model or adapter folder gets, and the upload.

The YAML front matter is what the Hugging Face Hub reads (`base_model`, `library_name`,
`pipeline_tag`, `tags`, `datasets`, `license`); the body says how the model was trained
(the command, the config), what was measured (evaluation table, or the last training
metrics where nothing was evaluated) and how to load it. What the card says about the
folder (adapter or full model, causal, seq2seq or classifier) is read from the folder itself.

The base model's Hub id and license are inherited where known: the embedded models
map to the Hub models they were built from, a local folder passes on its own card's
`base_model` and `license`, a Hub id is its own base (its license from a cached card).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import sys
from pathlib import Path

import yaml

from rlhfkit.errors import UserError

CARD = "README.md"
# embedded name -> (the Hub model it is built from, its license); the tiny test models have none
EMBEDDED_ORIGIN = {
    "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
    "minilm-l6": ("sentence-transformers/all-MiniLM-L6-v2", "apache-2.0"),
}
_PIPELINES = {"causal": "text-generation", "seq2seq": "text2text-generation", "classifier": "text-classification"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ---------------------------------------------------------------- what a folder holds


def card_metadata(folder) -> dict:
    """The YAML front matter of a folder's README.md ({} when there is none)."""
    path = Path(folder) / CARD
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8")
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    try:
        data = yaml.safe_load(text[3:end]) if end > 0 else None
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def folder_kind(folder) -> tuple[str, bool]:
    """(causal | seq2seq | classifier, is_adapter) of a saved model folder."""
    folder = Path(folder)
    adapter = folder / "adapter_config.json"
    if adapter.exists():
        task = json.loads(adapter.read_text()).get("task_type") or ""
        return ("seq2seq" if "SEQ_2_SEQ" in task else "classifier" if "SEQ_CLS" in task else "causal"), True
    config = folder / "config.json"
    if not config.exists():
        raise UserError(f"{folder}: not a model folder (no config.json or adapter_config.json)")
    data = json.loads(config.read_text())
    archs = " ".join(data.get("architectures") or [])
    if "SequenceClassification" in archs:
        return "classifier", False
    return ("seq2seq" if data.get("is_encoder_decoder") else "causal"), False


def base_model_origin(name: str | None) -> tuple[str | None, str | None]:
    """(Hub id, license) of the model a run started from, where known."""
    if not name:
        return None, None
    if name in EMBEDDED_ORIGIN:
        return EMBEDDED_ORIGIN[name]
    path = Path(os.path.expanduser(name))
    if path.is_dir():
        meta = card_metadata(path)
        base = meta.get("base_model")
        base = base[0] if isinstance(base, list) and base else base
        license_ = meta.get("license")
        if base is None and (path / "adapter_config.json").exists():
            inner = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
            base, inherited = base_model_origin(inner) if inner and inner != name else (None, None)
            license_ = license_ or inherited
        return (base if isinstance(base, str) else None), (license_ if isinstance(license_, str) else None)
    if _HUB_ID.match(name):
        return name, _cached_hub_license(name)
    return None, None


def _cached_hub_license(repo_id: str) -> str | None:
    """The license of a Hub model from its card in the local cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(repo_id, CARD)
    except Exception:  # noqa: BLE001 - an odd cache is no reason to fail a save
        return None
    if isinstance(path, str) and os.path.exists(path):
        return card_metadata(Path(path).parent).get("license")
    return None


def _dataset_ids(datasets) -> list[str]:
    """The Hub dataset ids among the data a run read (local files are described in the body)."""
    return [d for d in datasets if d and _HUB_ID.match(str(d)) and not Path(str(d)).exists()]


def _describe_file(spec) -> str:
    path = Path(str(spec))
    if path.is_file():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        return f"`{path.name}` (local file, sha256 {digest}...)"
    if path.is_dir():
        return f"`{path.name}` (local folder)"
    return f"[{spec}](https://huggingface.co/datasets/{spec})" if _HUB_ID.match(str(spec)) else f"`{spec}`"


def training_command() -> str:
    """How this process was started: the rlhfkit command line (with its launcher), or the Python script."""
    argv = list(sys.argv)
    prog = Path(argv[0]).name if argv else ""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launcher = f"accelerate launch --num_processes {world} -m rlhfkit.cli " if world > 1 else "rlhfkit "
    if prog == "rlhfkit" or argv[0].endswith(os.path.join("rlhfkit", "cli", "__main__.py")):
        return launcher + shlex.join(argv[1:])
    return f"python {shlex.join(argv)}" + (f"  (one of {world} processes)" if world > 1 else "")


# ---------------------------------------------------------------- the card


def _table(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for r in rows for k in r))

    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def evaluation_rows(result: dict) -> list[dict]:
    """Rows of an `rlhfkit.evaluation.evaluate` result (eval.json): each scorer before -> after, with its CI."""
    rows = []
    for model, per_scorer in (result.get("changes") or {}).items():
        for scorer, c in per_scorer.items():
            ci = c.get("diff_ci") or (None, None)
            rows.append({"model": model, "metric": f"{scorer} mean", "baseline": c.get("before_mean"),
                         "this model": c.get("after_mean"), "difference": c.get("diff"),
                         f"{round(100 * c.get('level', result.get('level', 0.95)))}% CI":
                             f"[{_fmt(ci[0])}, {_fmt(ci[1])}]",
                         "better": "higher" if c.get("higher_is_better", True) else "lower"})
    for model, kl in (result.get("kl") or {}).items():
        if isinstance(kl, dict) and "mean" in kl:
            rows.append({"model": model, "metric": "KL to baseline (nats)", "this model": kl["mean"]})
    return rows


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _how_to_load(kind: str, adapter: bool, where: str, base: str | None) -> str:
    if kind == "classifier":
        return (f"```python\nfrom transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
                f"model = AutoModelForSequenceClassification.from_pretrained(\"{where}\")\n"
                f"tokenizer = AutoTokenizer.from_pretrained(\"{where}\")\n"
                "# the reward of a completion: the single logit of tokenizer(prompt, completion)\n"
                "reward = model(**tokenizer(\"How are you?\", \"Very well, thank you.\", return_tensors=\"pt\"))"
                ".logits[0, 0]\n```\n\nAs an rlhfkit reward: `rlhfkit ppo --reward " + where + "`.")
    if adapter:
        cls = "AutoPeftModelForSeq2SeqLM" if kind == "seq2seq" else "AutoPeftModelForCausalLM"
        note = ("" if base else "\nThe base model is an rlhfkit embedded model: load it through rlhfkit, or export "
                "a plain merged folder first.")
        return (f"A LoRA adapter (peft) on `{base or 'its base model'}`.\n\n```python\nfrom peft import {cls}\n\n"
                f"model = {cls}.from_pretrained(\"{where}\")\n```\n{note}\nA plain transformers folder with the "
                f"adapter merged in: `rlhfkit export --model {where} --merge --out merged`.")
    if kind == "seq2seq":
        return (f"```python\nfrom transformers import AutoModelForSeq2SeqLM, AutoTokenizer\n\n"
                f"model = AutoModelForSeq2SeqLM.from_pretrained(\"{where}\")\n"
                f"tokenizer = AutoTokenizer.from_pretrained(\"{where}\")\n"
                "ids = model.generate(**tokenizer(\"Say something kind\", return_tensors=\"pt\"), max_new_tokens=32)\n"
                "print(tokenizer.decode(ids[0], skip_special_tokens=True))\n```")
    return (f"```python\nfrom transformers import pipeline\n\ngenerator = pipeline(\"text-generation\", model=\"{where}\")\n"
            "print(generator(\"Say something kind\", max_new_tokens=32)[0][\"generated_text\"])\n```")


def write_model_card(folder, *, method: str, base_model: str | None = None, config=None, datasets=(),
                     evaluation: list[dict] | None = None, evaluation_title: str = "Evaluation",
                     metrics: dict | None = None, command: str | None = None, notes: str = "",
                     repo_id: str | None = None) -> Path:
    """Write `folder/README.md`: Hub metadata, the training command and config, the measured numbers, how to load.

    `base_model`: the name the run started from (embedded name, Hub id or folder);
    `evaluation`: table rows of held-out numbers; `metrics`: last training numbers, shown
    when there is no evaluation; `repo_id`: where it is pushed (the load examples use it).
    """
    import dataclasses

    folder = Path(folder)
    kind, adapter = folder_kind(folder)
    hub_base, license_ = base_model_origin(base_model)
    meta: dict = {}
    if hub_base:
        meta["base_model"] = hub_base
    meta["library_name"] = "peft" if adapter else "transformers"
    meta["pipeline_tag"] = _PIPELINES[kind]
    tags = ["rlhfkit", method]
    tags += {"ppo": ["rlhf", "reinforcement-learning"], "grpo": ["rlhf", "reinforcement-learning"],
             "rloo": ["rlhf", "reinforcement-learning"], "reward": ["reward-model", "rlhf"], "dpo": ["rlhf"],
             "sft": ["supervised-fine-tuning"]}.get(method, [])
    if adapter:
        tags += ["lora", f"base_model:adapter:{hub_base}"] if hub_base else ["lora"]
    meta["tags"] = list(dict.fromkeys(tags))
    hub_data = _dataset_ids(datasets)
    if hub_data:
        meta["datasets"] = hub_data
    if license_:
        meta["license"] = license_

    where = repo_id or str(folder)
    what = {"causal": "causal language model", "seq2seq": "sequence-to-sequence language model",
            "classifier": "reward model (a one-output sequence classifier)"}[kind]
    title = repo_id.split("/")[-1] if repo_id else (folder.parent.name if folder.name == "model" else folder.name)
    lines = [f"# {title}", "",
             f"A {'LoRA adapter for a ' if adapter else ''}{what} trained with rlhfkit's `{method}` "
             f"from `{base_model or 'unknown'}`" + (f" (Hub: [{hub_base}](https://huggingface.co/{hub_base}))"
                                                    if hub_base and hub_base != base_model else "") + "."]
    if not license_:
        lines += ["", "License: inherited from the base model (not known here)."]
    if notes:
        lines += ["", notes]
    if datasets:
        lines += ["", "## Data", ""] + [f"- {_describe_file(d)}" for d in datasets if d]
    lines += ["", "## Training", "", "Command:", "", "```bash", command or training_command(), "```"]
    if config is not None:
        values = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
        lines += ["", "Config (every field is also a flag of the command):", "", "```yaml",
                  yaml.safe_dump(values, sort_keys=False).rstrip(), "```"]
    if evaluation:
        lines += ["", f"## {evaluation_title}", "", _table(evaluation)]
    elif metrics:
        lines += ["", "## Training metrics (last logged step; no held-out evaluation was run)", "",
                  _table([{"metric": k, "value": v} for k, v in metrics.items()])]
    lines += ["", "## How to load", "", _how_to_load(kind, adapter, where, hub_base), ""]
    front = yaml.safe_dump(meta, sort_keys=False).rstrip()
    path = folder / CARD
    path.write_text(f"---\n{front}\n---\n\n" + "\n".join(lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------- the Hub


def check_push(repo_id: str | None) -> None:
    """Fail before training when a push could not work: a bad repo id, offline mode, no token."""
    if not repo_id:
        return
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(repo_id)
    except Exception as e:  # noqa: BLE001 - HFValidationError and friends
        raise UserError(f"--push-to-hub {repo_id!r} is not a Hub repo id ({str(e).splitlines()[0]}); "
                        "use user/name or org/name") from None
    if "/" not in repo_id:
        raise UserError(f"--push-to-hub {repo_id!r}: give the full repo id, user/name or org/name")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise UserError(f"--push-to-hub {repo_id}: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it "
                        "(with network access) or drop --push-to-hub and upload the folder later")
    from huggingface_hub import get_token

    if not get_token():
        raise UserError(f"--push-to-hub {repo_id}: no Hugging Face token; run `hf auth login` or set HF_TOKEN")


def push_folder(folder, repo_id: str, message: str = "Upload model trained with rlhfkit") -> str:
    """Upload a saved folder (model or adapter, tokenizer, README.md) to a Hub model repo; returns its URL."""
    check_push(repo_id)
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=message,
                          ignore_patterns=["checkpoints/*", "*.partial/*"])
    except Exception as e:  # noqa: BLE001 - connection, auth and HTTP errors all mean the same to the user
        raise UserError(f"uploading {folder} to the Hub repo {repo_id} failed ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'no detail'}); the folder is saved, upload it later "
                        f"with `hf upload {repo_id} {folder}`") from None
    return f"https://huggingface.co/{repo_id}"


# ---------------------------------------------------------------- what the trainers call


def epoch_rows(history: list[dict]) -> tuple[list[dict], dict]:
    """(held-out table rows per epoch, or [] when nothing was held out; the last epoch's train numbers)."""
    rows, last = [], {}
    for record in history or []:
        held = {k: v for k, v in record.items() if k.startswith("eval/")}
        train = {k: v for k, v in record.items() if k.startswith("train/")}
        last = {k: v for k, v in {**train, "epoch": record.get("epoch"), "step": record.get("step")}.items()
                if v is not None}
        if held:
            rows.append({"epoch": record.get("epoch"), **train, **held})
    return rows, last


def publish(folder, method: str, config, *, base_model: str | None = None, datasets=(), history=None,
            evaluation: list[dict] | None = None, metrics: dict | None = None) -> Path:
    """The model card of a freshly saved folder, then the upload when the config asks (`push_to_hub`).
    Call on the main process only. `history`: the supervised loop's epoch records."""
    if history is not None and evaluation is None:
        evaluation, last = epoch_rows(history)
        metrics = metrics or last
    repo_id = getattr(config, "push_to_hub", None)
    path = write_model_card(folder, method=method, base_model=base_model or getattr(config, "model", None),
                            config=config, datasets=[d for d in datasets if d], evaluation=evaluation,
                            evaluation_title="Evaluation (held-out)", metrics=metrics, repo_id=repo_id)
    if repo_id:
        url = push_folder(folder, repo_id)
        print(f"rlhfkit {method}: pushed {folder} to {url}")
    return path
