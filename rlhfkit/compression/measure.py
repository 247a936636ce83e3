"""The deployment table: the teacher and its compressed versions, measured on the same held-out prompts.

For every model folder:

- size on disk of the weight files, and of the linear layers' weights alone (from the safetensors
  headers: quantized layers store int8 data plus scales);
- peak RAM: each model is loaded and sampled in a fresh Python process, whose peak resident set
  (ru_maxrss) is the number; the process's RAM before loading the model is reported beside it;
- sampling tokens/s on this CPU: batch 1, a fixed number of new tokens per prompt (the same work for
  every model), after one warm-up prompt;
- held-out toxicity: completions sampled with the same seed on the same held-out prompts, scored with
  the `toxicity` reward (lower is better), and its change relative to the teacher;
- perplexity on held-out text (the shipped documents by default), per token;
- agreement with the teacher on that text: mean per-token KL(teacher || model) and the share of
  positions where both rank the same next token first.

`deployment_table(teacher, {name: folder}, out)` writes out/metrics.json and out/report.html and
returns the rows; the demo adds them to its report.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rlhfkit.errors import UserError

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@dataclass
class MeasureSettings:
    heldout_prompts: str | None = None   # default: the shipped held-out prompts
    heldout_text: str | None = None      # default: the shipped documents (assets/rag/docs)
    n_prompts: int = 32                  # prompts sampled for toxicity
    max_new_tokens: int = 32
    n_speed_prompts: int = 6             # prompts timed at batch 1 (fewer when speed_seconds runs out)
    speed_seconds: float = 60.0          # time budget of the batch-1 timing (at least one prompt is timed)
    sample_seconds: float = 600.0        # a model slower than this to sample the held-out prompts gets no toxicity
    text_chunks: int = 24                # held-out text chunks for perplexity and agreement
    chunk_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 0.9
    batch_size: int = 32                 # the held-out prompts sampled together (the cost of torchao's CPU
    seed: int = 0                        # int8 paths is per call, not per row)

    @classmethod
    def of(cls, config) -> "MeasureSettings":
        fields = {k: getattr(config, k) for k in ("heldout_prompts", "heldout_text", "n_prompts", "max_new_tokens",
                                                  "seed") if getattr(config, k, None) is not None}
        return cls(**fields)


# ---------------------------------------------------------------- on disk


def _safetensors_headers(folder: Path) -> dict:
    """{tensor name: bytes} over every safetensors file of a folder."""
    sizes = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for key, v in header.items():
            if key != "__metadata__":
                sizes[key] = v["data_offsets"][1] - v["data_offsets"][0]
    return sizes


def disk_sizes(folder, linear_modules: list[str]) -> dict:
    """Bytes of the weight files, and of the linear layers' weights (plain `weight`, or torchao's
    flattened `_weight_qdata`, `_weight_scale`, ... of a quantized layer)."""
    folder = Path(folder)
    files = sum(p.stat().st_size for pattern in ("*.safetensors", "pytorch_model*.bin") for p in folder.glob(pattern))
    sizes = _safetensors_headers(folder)
    modules = set(linear_modules)
    linear = 0
    for key, nbytes in sizes.items():
        module, _, name = key.rpartition(".")
        if module in modules and (name == "weight" or name.startswith("_weight_")):
            linear += nbytes
    return {"weights_bytes": files, "linear_weights_bytes": linear}


# ---------------------------------------------------------------- one model, in its own process


def _rss_mb() -> float:
    """This process's peak resident set (VmHWM: reset by exec, unlike ru_maxrss, which a child
    started by subprocess inherits from its parent's peak at fork on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load(folder: str):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    config = AutoConfig.from_pretrained(folder)
    if getattr(config, "quantization_config", None):
        from rlhfkit.compression.quantize import import_torchao

        import_torchao()
    cls = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    return cls.from_pretrained(folder).eval()


def _linear_modules(model) -> list[str]:
    import torch

    head = model.get_output_embeddings()
    return [n for n, m in model.named_modules()
            if (isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D") and m is not head]


def worker(job: dict) -> dict:
    """Load one folder, time batch-1 sampling, sample the held-out prompts; report peak RSS."""
    import torch

    from rlhfkit.models.generation import GenerationSettings, encode_prompts, sample
    from rlhfkit.models.loading import load_tokenizer

    base_rss = _rss_mb()
    start = time.perf_counter()
    model = _load(job["folder"])
    tokenizer = load_tokenizer(job["folder"])
    load_seconds = time.perf_counter() - start
    prompts = job["prompts"]
    queries = encode_prompts(tokenizer, prompts)
    def fixed(n):
        return GenerationSettings(max_new_tokens=n, min_new_tokens=n, temperature=job["temperature"], top_p=job["top_p"])

    torch.manual_seed(job["seed"])
    t0 = time.perf_counter()
    sample(model, tokenizer, queries[:1], fixed(4))  # warm-up: first-call allocations and kernel choices
    per_token = (time.perf_counter() - t0) / 4
    budget_speed = job.get("speed_seconds", 60.0)
    # a scheme this CPU runs slowly is timed on fewer tokens (at least 4), not for minutes
    n_new = max(4, min(job["max_new_tokens"], int(budget_speed / max(per_token, 1e-9))))
    tokens, seconds = 0, 0.0
    for q in queries[:job["n_speed_prompts"]]:
        if tokens and seconds > budget_speed:
            break
        t0 = time.perf_counter()
        tokens += len(sample(model, tokenizer, [q], fixed(n_new))[0])
        seconds += time.perf_counter() - t0
    budget = job.get("sample_seconds", 600.0)
    # one batch of held-out prompts costs at least its steps at batch 1; skip what cannot finish in time
    estimate = (seconds / max(tokens, 1)) * job["max_new_tokens"] * math.ceil(len(queries) / job["batch_size"])
    texts, sample_seconds = None, None
    if estimate <= budget:
        settings = GenerationSettings(max_new_tokens=job["max_new_tokens"], temperature=job["temperature"],
                                      top_p=job["top_p"])
        torch.manual_seed(job["seed"])
        texts, t0 = [], time.perf_counter()
        for i in range(0, len(queries), job["batch_size"]):
            responses = sample(model, tokenizer, queries[i:i + job["batch_size"]], settings)
            texts += [t.replace("\x00", "").strip() for t in tokenizer.batch_decode(responses, skip_special_tokens=True)]
        sample_seconds = time.perf_counter() - t0
    return {"load_seconds": load_seconds, "tokens_per_second": tokens / seconds if seconds else math.nan,
            "timed_tokens": tokens, "peak_rss_mb": _rss_mb(), "base_rss_mb": base_rss, "texts": texts,
            "sample_seconds": sample_seconds, "sample_estimate_seconds": estimate,
            "linear_modules": _linear_modules(model), "threads": torch.get_num_threads()}


def run_worker(folder: str, prompts: list, settings: MeasureSettings) -> dict:
    """`worker` in a fresh interpreter (so its peak RAM is this model's alone); same code as this one."""
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    job = {"folder": str(folder), "prompts": prompts, **asdict(settings)}
    with tempfile.TemporaryDirectory() as tmp:
        job_file, out_file = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job_file.write_text(json.dumps(job))
        proc = subprocess.run([sys.executable, "-m", "rlhfkit.compression.measure", str(job_file), str(out_file)],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out_file.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise UserError(f"measuring {folder} failed: {' | '.join(tail)}")
        return json.loads(out_file.read_text())


# ---------------------------------------------------------------- against the teacher


def heldout_text_ids(tokenizer, path: str | None, chunks: int, chunk_tokens: int) -> list[list[int]]:
    """Held-out text cut into chunks of `chunk_tokens` tokens (plain text, no chat template)."""
    if path:
        p = Path(path)
        if p.suffix in (".jsonl", ".json", ".csv", ".tsv") or p.is_dir():
            from rlhfkit.datafiles import read_records

            text = "\n\n".join(str(r.get("text") or r.get("completion") or r.get("prompt") or "")
                               for _, r in read_records(p))
        else:
            text = p.read_text(encoding="utf-8")
    else:
        text = "\n\n".join(f.read_text(encoding="utf-8") for f in sorted((ASSETS / "rag" / "docs").glob("*.md")))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    out = [ids[i:i + chunk_tokens] for i in range(0, len(ids) - 1, chunk_tokens)][:chunks]
    out = [c for c in out if len(c) > 1]
    if not out:
        raise UserError(f"held-out text {path or 'assets/rag/docs'} is empty")
    return out


def _next_token_logits(model, ids):
    import torch

    x = torch.tensor([ids])
    with torch.no_grad():
        if getattr(model.config, "is_encoder_decoder", False):
            start = model.config.decoder_start_token_id
            dec = torch.tensor([[start] + ids[:-1]])
            return model(input_ids=x, decoder_input_ids=dec).logits[0].float(), x[0]
        return model(input_ids=x).logits[0, :-1].float(), x[0, 1:]


def text_metrics(model, chunks, teacher=None) -> dict:
    """Perplexity per token on the chunks, and against the teacher: mean KL(teacher || model), top-1 match."""
    import torch

    nll = kl = match = 0.0
    n = 0
    for ids in chunks:
        logits, targets = _next_token_logits(model, ids)
        logp = torch.log_softmax(logits, -1)
        nll += float(-logp.gather(-1, targets.unsqueeze(-1)).sum())
        if teacher is not None:
            t_logits, _ = _next_token_logits(teacher, ids)
            t_logp = torch.log_softmax(t_logits, -1)
            kl += float((t_logp.exp() * (t_logp - logp)).sum())
            match += float((t_logits.argmax(-1) == logits.argmax(-1)).sum())
        n += len(targets)
    out = {"perplexity": math.exp(nll / n), "text_tokens": n}
    if teacher is not None:
        out.update({"kl_to_teacher": kl / n, "top1_match": match / n})
    return out


# ---------------------------------------------------------------- the table


def deployment_table(teacher: str, models: dict, out, settings: MeasureSettings | None = None,
                     title: str = "Deployment table", write: bool = True, progress: bool = True) -> list[dict]:
    """Measure the teacher and each {name: folder}; write out/metrics.json and out/report.html."""
    from tqdm.auto import tqdm

    from rlhfkit.compression.source import check_model_folder, plain_folder
    from rlhfkit.data import load_prompts
    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.rewards import get_reward

    settings = settings or MeasureSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = load_prompts(settings.heldout_prompts or ASSETS / "prompts_heldout.jsonl")[:settings.n_prompts]
    with tempfile.TemporaryDirectory(prefix="rlhfkit-measure-") as tmp:
        check_model_folder(teacher, "--teacher")
        teacher_folder = plain_folder(teacher, Path(tmp) / "teacher")  # an adapter: merged once, measured as shipped
        folders = {"teacher": str(teacher_folder), **{k: str(v) for k, v in models.items()}}
        tokenizer = load_tokenizer(str(teacher_folder))
        chunks = heldout_text_ids(tokenizer, settings.heldout_text, settings.text_chunks, settings.chunk_tokens)
        toxicity = get_reward("toxicity")
        runs = {}
        for name, folder in tqdm(folders.items(), desc="measuring", unit="model", disable=not progress):
            runs[name] = run_worker(folder, prompts, settings)
        teacher_model = _load(str(teacher_folder))
        rows = []
        for name, folder in folders.items():
            r = runs[name]
            model = teacher_model if name == "teacher" else _load(folder)
            text = text_metrics(model, chunks, None if name == "teacher" else teacher_model)
            if name == "teacher":
                text.update({"kl_to_teacher": 0.0, "top1_match": 1.0})
            scores = toxicity(prompts, r["texts"]) if r["texts"] is not None else None
            info = {}
            meta = Path(folder) / "compression.json"
            if meta.exists():
                info = json.loads(meta.read_text())
            rows.append({"model": name, "folder": folder if name != "teacher" else str(teacher),
                         "method": info.get("scheme") or info.get("prune_method") or info.get("method") or "",
                         **disk_sizes(folder, r["linear_modules"]),
                         "peak_rss_mb": r["peak_rss_mb"], "base_rss_mb": r["base_rss_mb"],
                         "tokens_per_second": r["tokens_per_second"], "load_seconds": r["load_seconds"],
                         "toxicity": sum(scores) / len(scores) if scores else math.nan, **text,
                         "timed_tokens": r["timed_tokens"], "sample_seconds": r["sample_seconds"],
                         "sample_estimate_seconds": r["sample_estimate_seconds"],
                         "sparsity": info.get("sparsity_reached"), "samples": r["texts"], "scores": scores})
            del model
    base = rows[0]
    for row in rows:
        row["size_ratio"] = row["weights_bytes"] / base["weights_bytes"]
        row["linear_size_ratio"] = row["linear_weights_bytes"] / max(base["linear_weights_bytes"], 1)
        row["speedup"] = row["tokens_per_second"] / base["tokens_per_second"]
        row["perplexity_change"] = row["perplexity"] / base["perplexity"] - 1
        row["toxicity_change"] = row["toxicity"] / base["toxicity"] - 1 if base["toxicity"] else math.nan
        if row["samples"] is None:
            print(f"rlhfkit measure: {row['model']}: {row['tokens_per_second']:.2f} tokens/s on this CPU; sampling "
                  f"{len(prompts)} held-out prompts would take ~{row['sample_estimate_seconds']:.0f}s, over the "
                  f"{settings.sample_seconds:.0f}s budget: no toxicity measured")
    result = {"teacher": str(teacher), "settings": asdict(settings), "n_prompts": len(prompts),
              "threads": runs["teacher"]["threads"], "rows": [{k: v for k, v in r.items() if k not in ("samples", "scores")}
                                                             for r in rows]}
    if write:
        from rlhfkit.evaluation import save_json

        save_json(result, out / "metrics.json")
        write_table_report(out, title, result, rows, prompts)
    print(format_table(result["rows"]))
    return result["rows"]


# ---------------------------------------------------------------- showing it


def table_rows(rows: list[dict]) -> list[dict]:
    """The table as the report and docs show it: one dict per model, readable units."""
    out = []
    for r in rows:
        out.append({"model": r["model"], "method": r.get("method", ""),
                    "weights (MB)": round(r["weights_bytes"] / 1e6, 1),
                    "linear weights (MB)": round(r["linear_weights_bytes"] / 1e6, 1),
                    "linear size x teacher": round(r["linear_size_ratio"], 3),
                    "peak RAM (MB)": round(r["peak_rss_mb"]), "tokens/s": round(r["tokens_per_second"], 1),
                    "speed x teacher": round(r["speedup"], 2),
                    "toxicity": round(r["toxicity"], 4) if _finite(r["toxicity"]) else "not sampled (too slow here)",
                    "toxicity change": f"{100 * r['toxicity_change']:+.1f}%" if _finite(r["toxicity_change"]) else "n/a",
                    "perplexity": round(r["perplexity"], 2), "perplexity change": f"{100 * r['perplexity_change']:+.1f}%",
                    "KL to teacher": round(r["kl_to_teacher"], 4), "top-1 match": round(r["top1_match"], 3),
                    **({"sparsity": round(r["sparsity"], 3)} if r.get("sparsity") is not None else {})})
    return out


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def format_table(rows: list[dict]) -> str:
    shown = table_rows(rows)
    keys = list(dict.fromkeys(k for r in shown for k in r))
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in shown)) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys)]
    lines += ["  ".join(str(r.get(k, "")).ljust(widths[k]) for k in keys) for r in shown]
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> str:
    shown = table_rows(rows)
    keys = list(dict.fromkeys(k for r in shown for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in shown]
    return "\n".join(lines)


def plot_tradeoff(rows: list[dict], out: Path) -> Path:
    """Speed against size (marker) and toxicity (label), relative to the teacher."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for r in rows:
        ax.scatter(r["size_ratio"], r["speedup"], s=60)
        tox = f"tox {r['toxicity']:.3f}" if _finite(r["toxicity"]) else "tox n/a"
        ax.annotate(f"{r['model']}\n{tox}, ppl {r['perplexity']:.1f}", (r["size_ratio"], r["speedup"]),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("weights on disk (x teacher)")
    ax.set_ylabel("sampling tokens/s (x teacher)")
    ax.axhline(1, color="#ccc", lw=0.8)
    ax.axvline(1, color="#ccc", lw=0.8)
    ax.set_title("size and speed of the compressed models")
    fig.tight_layout()
    path = Path(out) / "deployment_tradeoff.png"
    fig.savefig(path, dpi=110)
    return path


def write_table_report(out: Path, title: str, result: dict, rows: list[dict], prompts) -> Path:
    from rlhfkit.data import prompt_text
    from rlhfkit.evaluation.report import write_report

    sampled = [r for r in rows if r["samples"] is not None]
    samples = [{"prompt": prompt_text(p), "completions": {r["model"]: [r["samples"][i]] for r in sampled},
                "scores": {r["model"]: {"toxicity": [r["scores"][i]]} for r in sampled}} for i, p in enumerate(prompts)]
    return write_report(out, title=title, samples=samples, images=[plot_tradeoff(rows, out)],
                        extra_sections=[("Deployment table", table_rows(rows)), ("How it was measured", NOTE.format(
                            n=result["n_prompts"], threads=result["threads"], **result["settings"]))])


NOTE = ("{n} held-out prompts, the same seed for every model; toxicity: the `toxicity` reward on one completion per "
        "prompt (temperature {temperature}, top-p {top_p}, up to {max_new_tokens} new tokens), lower is better. "
        "tokens/s: batch 1, {max_new_tokens} new tokens on each of up to {n_speed_prompts} prompts after a warm-up "
        "(fewer when {speed_seconds:.0f}s run out), "
        "{threads} CPU threads. Peak RAM: the peak resident set of a fresh process that loads and samples the model "
        "(Python, torch and transformers included). A model that would need over {sample_seconds:.0f}s to sample the "
        "held-out prompts is not sampled (no toxicity). Perplexity and agreement (KL(teacher || model) per token, top-1 "
        "match): {text_chunks} chunks of {chunk_tokens} tokens of held-out text.")


if __name__ == "__main__":  # the worker process of `run_worker` (`-m` imported rlhfkit first: torchao is quiet)
    _job = json.loads(Path(sys.argv[1]).read_text())
    Path(sys.argv[2]).write_text(json.dumps(worker(_job)))
