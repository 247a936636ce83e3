"""Shared pieces of the PPO benchmark: the FLOP model, matmul peak, memory, shared assets.

Imported by `run.py` and `ours.py` (project venv) and by `peer_trl.py` (the peer's
venv), so it imports nothing from rlhfkit and only imports torch/transformers
inside the functions that need them (the FLOP model is plain arithmetic).

FLOP model (see bench/README.md): a causal LM's matmul parameters split into the
transformer body `P_body` (every Linear/Conv1D weight in the blocks) and the LM
head `P_head` = vocab x hidden (real work even when tied to the embedding, which
is a lookup and costs nothing). For B sequences of Q prompt and R response tokens:

- a forward pass that scores the response costs 2*B*(P_body*(Q+R-1) + P_head*R):
  the body reads every input position (the last response token is never an input),
  the LM head only the R positions whose logits are used;
- generation costs the same 2*B*(P_body*(Q+R-1) + P_head*R) (KV-cached: prefill Q,
  then R-1 one-token steps, one head row per new token);
- forward+backward costs 3x the forward (6 per parameter per token) with full
  fine-tuning, 2x (4) with LoRA, whose frozen weights need activation gradients
  but no weight gradients, plus 6*P_lora per token for the adapters;
- the reward model reads the Q+R tokens: 2*B*(Q+R)*P_rm.

Attention scores (QK^T, AV: 2*layers*context*hidden per token) are left out: under
2% at these lengths. The count is the work the PPO algorithm needs, a property of
the settings; an implementation doing more (no KV cache, logits for every
position, a separate value network) gets no credit for the extra.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

RESULT_PREFIX = "BENCH_RESULT "


# ---------------------------------------------------------------- FLOP model


@dataclass(frozen=True)
class Dims:
    """Matmul parameter counts of one network."""

    body: int  # Linear/Conv1D weights of the transformer blocks
    head: int  # the output matmul: LM head (vocab x hidden) or a score head (labels x hidden)
    lora: int = 0  # trainable adapter weights (LoRA A and B), 0 without LoRA

    @property
    def total(self) -> int:
        return self.body + self.head + self.lora


def forward_flops(dims: Dims, batch: int, body_tokens: int, head_tokens: int) -> float:
    """FLOPs of one forward pass: 2 per matmul weight per token it reads."""
    return 2.0 * batch * ((dims.body + dims.lora) * body_tokens + dims.head * head_tokens)


def train_flops(dims: Dims, batch: int, body_tokens: int, head_tokens: int, lora: bool) -> float:
    """FLOPs of one forward+backward pass.

    Full fine-tuning: 6 per weight per token (forward 2, activation gradient 2,
    weight gradient 2). LoRA: the frozen base weights skip the weight gradient
    (4 per weight per token); the adapters keep all 6.
    """
    base = Dims(dims.body, dims.head)
    factor = 2.0 if lora else 3.0
    adapters = 6.0 * batch * dims.lora * body_tokens
    return factor * forward_flops(base, batch, body_tokens, head_tokens) + adapters


def ppo_step_flops(policy: Dims, reward: Dims, batch: int, query_len: float, response_len: float, epochs: int,
                   lora: bool) -> dict[str, float]:
    """FLOPs of one PPO step, by phase, with a value head sharing the policy's body.

    Phases: generation, rollout (one policy forward giving log-probs and values),
    reference (one forward of the frozen reference), reward (the reward model on
    query+response), training (`epochs` forward+backward passes over the batch).
    """
    body_tokens = query_len + response_len - 1
    head_tokens = response_len
    one = forward_flops(policy, batch, body_tokens, head_tokens)
    out = {
        "generation": one,
        "rollout": one,
        "reference": forward_flops(Dims(policy.body, policy.head), batch, body_tokens, head_tokens),
        "reward": forward_flops(Dims(reward.body + reward.head, 0), batch, query_len + response_len, 0),
        "training": epochs * train_flops(policy, batch, body_tokens, head_tokens, lora),
    }
    out["total"] = sum(out.values())
    return out


def peer_step_flops(policy: Dims, reward: Dims, batch: int, query_len: float, response_len: float, epochs: int,
                    lora: bool) -> dict[str, float]:
    """FLOPs of one step as trl's PPOTrainer spends them (for information).

    trl keeps a separate value network (a copy of the reward model, always fully
    trained), takes the rollout log-probs from the generation logits (no policy
    rollout forward) and runs the policy and value networks over every position
    (logits for the whole sequence).
    """
    tokens = query_len + response_len
    policy_all = Dims(policy.body, policy.head, policy.lora)
    value = Dims(reward.body, reward.head)
    gen = forward_flops(policy, batch, query_len + response_len - 1, response_len)
    out = {
        "generation": gen,
        "rollout": forward_flops(value, batch, tokens, tokens),
        "reference": forward_flops(Dims(policy.body, policy.head), batch, tokens, tokens),
        "reward": forward_flops(value, batch, tokens, tokens),
        "training": epochs * (train_flops(policy_all, batch, tokens, tokens, lora)
                              + train_flops(value, batch, tokens, tokens, False)),
    }
    out["total"] = sum(out.values())
    return out


def count_dims(model) -> Dims:
    """Matmul weights of a HF model (peft-wrapped or not): body, output head, trainable LoRA.

    Counts 2-D weights of `nn.Linear` and GPT-2's `Conv1D`; the output head is the
    model's output embedding (LM head) or its `score`/`classifier` Linear. LoRA A/B
    matrices count as `lora`, their frozen base layers as body.
    """
    import torch.nn as nn

    base = model
    if hasattr(base, "get_base_model"):  # peft
        base = base.get_base_model()
    head_module = None
    getter = getattr(base, "get_output_embeddings", None)
    if getter is not None:
        head_module = getter()
    if head_module is None:
        head_module = getattr(base, "score", None) or getattr(base, "classifier", None)
    head = 0
    if head_module is not None:
        head_base = getattr(head_module, "base_layer", head_module)
        head = int(head_base.weight.numel())
    body = lora = 0
    for name, module in base.named_modules():
        if module is head_module or getattr(head_module, "base_layer", None) is module:
            continue
        weight = getattr(module, "weight", None)
        is_matmul = isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"
        if not is_matmul or weight is None or weight.dim() != 2:
            continue
        if ".lora_" in f".{name}":
            lora += int(weight.numel())
        else:
            body += int(weight.numel())
    return Dims(body=body, head=head, lora=lora)


def weights_bytes(model) -> int:
    """Bytes of a model's parameters and buffers as loaded (tied weights once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = t.data_ptr()
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


# ---------------------------------------------------------------- hardware limit


def matmul_peak(dtype: str = "float32", sizes=(2048, 4096), seconds: float = 3.0) -> dict:
    """Best GFLOP/s of square matmuls (2*n^3 FLOPs each) in the current thread setting."""
    import torch

    dt = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[dtype]
    best, by_size = 0.0, {}
    gen = torch.Generator().manual_seed(0)
    for n in sizes:
        a = torch.randn(n, n, generator=gen).to(dt)
        b = torch.randn(n, n, generator=gen).to(dt)
        out = torch.empty(n, n, dtype=dt)
        torch.matmul(a, b, out=out)  # warm-up (packing, thread pool)
        rates, deadline = [], time.perf_counter() + seconds / len(sizes)
        while len(rates) < 3 or (time.perf_counter() < deadline and len(rates) < 50):
            t = time.perf_counter()
            torch.matmul(a, b, out=out)
            rates.append(2.0 * n**3 / (time.perf_counter() - t) / 1e9)
        by_size[n] = round(max(rates), 1)
        best = max(best, max(rates))
    return {"dtype": dtype, "gflops": round(best, 1), "by_size": by_size, "threads": torch.get_num_threads()}


# ---------------------------------------------------------------- memory


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int | None:
    """Current resident set size (VmRSS)."""
    kb = _status_kb("VmRSS")
    return None if kb is None else kb * 1024


def import_model_code(spec: dict) -> None:
    """Import the library code a run will execute, before its memory baseline is taken.

    transformers imports a model family's modelling code (and peft its tuners, torch
    its compiler) at first use: about 0.13 GB of resident code for SmolLM2 + LoRA,
    0.17 GB with the compiler. Loaded before the baseline, it counts as the process
    (like the libraries imported at start-up), so `mem / weights` measures data:
    weights, tokenizer, KV cache, activations, optimiser state, allocator slack.
    """
    from transformers import AutoConfig
    from transformers.models.auto import modeling_auto

    for path, mapping in ((spec["policy"], modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING),
                          (spec["reward_model"], modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING)):
        mapping[type(AutoConfig.from_pretrained(path))]  # the lookup imports modeling_<family>
    if spec.get("lora"):
        import peft.tuners.lora  # noqa: F401
    if spec.get("compile"):
        import torch._inductor.compile_fx  # noqa: F401


def peak_rss_bytes() -> int | None:
    """Peak resident set size of this process so far (VmHWM; falls back to getrusage)."""
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb * 1024


# ---------------------------------------------------------------- shared assets


def build_reward_model(policy_path: str, out: Path, seed: int = 0, pad_token: str | None = None) -> Path:
    """A one-output sequence classifier on the policy's config and tokenizer, saved to `out`.

    Its body is the policy's body (same weights); its score head is seeded
    random. trl's PPO also builds its value network from it. When the tokenizer
    pads with its EOS token, `pad_token` (an existing token, e.g. "<|endoftext|>")
    becomes the pad token, so trl's `input_ids != pad_token_id` masks do not hide
    real EOS tokens of a chat template.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    out = Path(out)
    if (out / "config.json").exists():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    if pad_token is not None and (tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id):
        tokenizer.pad_token = pad_token
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    config = AutoConfig.from_pretrained(policy_path, num_labels=1)
    config.pad_token_id = tokenizer.pad_token_id
    policy = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    reward.base_model.load_state_dict(policy.base_model.state_dict(), strict=True)
    gen = torch.Generator().manual_seed(seed)
    score = reward.score if hasattr(reward, "score") else reward.get_output_embeddings()
    with torch.no_grad():
        hidden = score.weight.shape[1]
        score.weight.copy_(torch.randn(score.weight.shape, generator=gen) / hidden**0.5)
        if getattr(score, "bias", None) is not None:
            score.bias.zero_()
    tmp.mkdir(parents=True, exist_ok=True)
    reward.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


def build_prompts(tokenizer, texts: list[str], n: int, length: int) -> list[list[int]]:
    """`n` queries of exactly `length` tokens each.

    Each query joins consecutive prompts into one user turn (the chat template
    when the tokenizer has one) and keeps its last `length` tokens, so every
    query ends where the reply starts and no side pays for padding.
    """
    chat = bool(getattr(tokenizer, "chat_template", None))
    out, i = [], 0
    while len(out) < n:
        parts, ids = [], []
        while len(ids) < length:
            parts.append(texts[i % len(texts)])
            i += 1
            content = " ".join(parts)
            if chat:
                text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                     add_generation_prompt=True)
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            else:
                ids = tokenizer(content)["input_ids"]
        out.append(list(ids[-length:]))
    return out


def emit(result: dict) -> None:
    """Print the one JSON line that run.py reads."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def markdown_table(head: list[str], rows: list[dict], digits: int = 2) -> str:
    """Rows (dicts) as a markdown table with the columns `head`; floats to `digits` places, None blank."""
    fmt = lambda v: "" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(fmt(r.get(h)) for h in head) + " |" for r in rows])


def median(xs: list[float]) -> float | None:
    xs = sorted(xs)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else 0.5 * (xs[mid - 1] + xs[mid])


def dims_dict(d: Dims) -> dict:
    return asdict(d)
