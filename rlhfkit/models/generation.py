"""Batched sampling: prompts to token ids (chat template when the model has one),
padded batches (left for causal models), and completions.

Shared by `rlhfkit generate`, the PPO rollout and evaluation.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass

import torch

from rlhfkit.data import Prompt
from rlhfkit.errors import UserError
from rlhfkit.models.loading import unwrap_peft


@dataclass
class GenerationSettings:
    """How completions are sampled."""

    max_new_tokens: int = 48
    temperature: float = 1.0
    top_k: int = 0  # 0 = off: sample from the whole distribution, as PPO's log-probs assume
    top_p: float = 1.0
    min_new_tokens: int = 0

    @classmethod
    def of(cls, config) -> "GenerationSettings":
        """The settings of a config's sampling fields (`config.SamplingFields`)."""
        return cls(config.max_new_tokens, config.temperature, int(config.top_k), config.top_p, config.min_new_tokens)

    def kwargs(self) -> dict:
        kw = dict(
            do_sample=True, max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
            top_p=self.top_p,
        )
        if self.min_new_tokens:
            kw["min_new_tokens"] = self.min_new_tokens
        return kw


def uses_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer, prompt: Prompt, chat: bool | None = None) -> str:
    """The text the model sees: the chat template with a generation prompt when the model has one."""
    chat = uses_chat_template(tokenizer) if chat is None else chat
    if chat:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt) + "\nassistant:"


def encode_prompts(tokenizer, prompts: list[Prompt], chat: bool | None = None, max_length: int | None = None) -> list[list[int]]:
    """Token ids of each prompt, unpadded. A chat template already holds its special tokens.

    Prompts longer than `max_length` keep their last `max_length` tokens (the
    end of a prompt is what the reply follows).
    """
    chat = uses_chat_template(tokenizer) if chat is None else chat
    texts = [format_prompt(tokenizer, p, chat) for p in prompts]
    ids = tokenizer(texts, add_special_tokens=not chat)["input_ids"]
    if max_length:
        ids = [x[-max_length:] for x in ids]
    return ids


def pad(seqs: list[list[int]] | list[torch.Tensor], pad_id: int, side: str = "right", device=None):
    """Pad to a batch: (ids [B, T], attention_mask [B, T])."""
    seqs = [s.tolist() if isinstance(s, torch.Tensor) else list(s) for s in seqs]
    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if not s:
            continue
        if side == "left":
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
        else:
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
    if device is not None:
        ids, mask = ids.to(device), mask.to(device)
    return ids, mask


def strip_response(tokens: list[int], eos_id: int | None, pad_id: int | None) -> list[int]:
    """A sampled response up to and including its first EOS; trailing padding removed."""
    out = []
    for t in tokens:
        if t == eos_id:
            out.append(t)
            break
        out.append(t)
    if eos_id is None or not out or out[-1] != eos_id:
        while out and out[-1] == pad_id:
            out.pop()
    return out


def static_cache_kwargs(model) -> dict:
    """`generate()` keywords for a KV cache allocated once at its final length.

    The default cache grows by concatenation at every token, and on CPU the
    freed blocks of each length fragment the heap: about 0.06 GB of a PPO
    step's peak memory for SmolLM2-135M at batch 16 (docs/ppo.md). A static
    cache writes in place. `disable_compile` keeps transformers from compiling
    the decoder on GPU, where it would do so for any static cache.
    """
    base = unwrap_peft(model)
    if not getattr(base, "_can_compile_fullgraph", False):
        raise UserError(f"{type(base).__name__} has no static KV cache in transformers; turn static_cache off")
    return {"cache_implementation": "static", "disable_compile": True}


class _KeysAsValues:
    """Mixin for transformers' KV caches: store the keys in the values' dtype.

    Under bf16 autocast, Llama-style rotary embeddings multiply the bf16 keys by
    float32 cos/sin tables, so the cache would hold float32 keys beside bf16 values:
    a third more cache memory, and attention casts every cached key back to bf16 at
    every generated token. Rounding each key once when it is written gives the bits
    that rounding it at every read gave (tested: the same tokens).
    """

    def update(self, key_states, value_states, *args, **kwargs):
        return super().update(key_states.to(value_states.dtype), value_states, *args, **kwargs)


@functools.cache
def _keys_as_values_caches():
    from transformers import DynamicCache, StaticCache

    class DynamicCacheKeysAsValues(_KeysAsValues, DynamicCache):
        pass

    class StaticCacheKeysAsValues(_KeysAsValues, StaticCache):
        pass

    return DynamicCacheKeysAsValues, StaticCacheKeysAsValues


def _autocast_kv_cache(model, extra: dict, max_cache_len: int) -> dict:
    """`generate()` keywords with a cache that keeps keys in the autocast dtype (`_KeysAsValues`).

    Only for causal models sampling under autocast with transformers' default or
    static cache; otherwise `extra` comes back as given.
    """
    base = unwrap_peft(model)
    if (not torch.is_autocast_enabled(next(base.parameters()).device.type) or _is_seq2seq(base)
            or "cache" in extra or "past_key_values" in extra):
        return extra
    implementation = extra.get("cache_implementation",
                               getattr(getattr(base, "generation_config", None), "cache_implementation", None))
    params = inspect.signature(base.forward).parameters
    name = next((n for n in ("cache", "past_key_values") if n in params), None)  # renamed within transformers 5
    if name is None or implementation not in (None, "dynamic", "static"):
        return extra
    dynamic, static = _keys_as_values_caches()
    config = base.config.get_text_config(decoder=True)
    extra = {k: v for k, v in extra.items() if k != "cache_implementation"}
    extra[name] = static(config=config, max_cache_len=max_cache_len) if implementation == "static" else dynamic(config=config)
    return extra


def _is_seq2seq(model) -> bool:
    config = getattr(model, "config", None)
    return bool(getattr(config, "is_encoder_decoder", False))


# generation_config fields that add logits processors this module's decode loop does not apply
_PROCESSOR_FIELDS = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0,
                     "bad_words_ids": None, "suppress_tokens": None, "begin_suppress_tokens": None,
                     "forced_bos_token_id": None, "forced_eos_token_id": None, "sequence_bias": None,
                     "exponential_decay_length_penalty": None, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
                     "typical_p": 1.0, "min_p": None, "renormalize_logits": False}


def decode_cache_name(model, extra: dict) -> str | None:
    """The name of the cache keyword when `_decode` can sample for this causal model, else None
    (then `generate()` does): transformers' default dynamic cache, no extra `generate()` keywords,
    no logits processor configured in the model's generation_config."""
    name = cache_keyword(model)
    config = getattr(unwrap_peft(model), "generation_config", None)
    if name is None or extra or getattr(config, "cache_implementation", None):
        return None
    if any(getattr(config, k, None) not in (default, None, []) for k, default in _PROCESSOR_FIELDS.items()):
        return None
    return name


def _nucleus(logits: torch.Tensor, settings: GenerationSettings, step: int, eos_id: int | None,
             window: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampling distribution of next-token logits [B, V] as (weights [B, W], token ids [B, W]):
    temperature, then top-k, then top-p, then min_new_tokens, as transformers' warpers apply them.

    `generate()` sorts the whole vocabulary for top-p and draws from all of it:
    for SmolLM2's 49k tokens at batch 64 that is ~200 ms a token on 2 cores, as
    much as the model's forward. Here the nucleus is found among the `window`
    most likely tokens (rows whose window holds less than top_p of the mass sort
    the whole vocabulary instead) and the draw is made inside it: the same
    distribution (tested against TopPLogitsWarper), a fraction of the work.
    """
    scores = logits.float() / settings.temperature
    if step < settings.min_new_tokens and eos_id is not None:
        scores[:, eos_id] = -math.inf
    vocab = scores.shape[-1]
    if settings.top_k and settings.top_k < vocab:
        scores = scores.masked_fill(scores < scores.topk(settings.top_k, dim=-1).values[:, -1:], -math.inf)
    probs = scores.softmax(-1)
    if settings.top_p >= 1.0:
        return probs, torch.arange(vocab, device=probs.device).expand_as(probs)
    top, idx = probs.topk(min(window, vocab), dim=-1)  # sorted, most likely first
    short = top.sum(-1) < settings.top_p
    if short.any():  # the nucleus is wider than the window: sort the whole vocabulary
        top, idx = probs.sort(dim=-1, descending=True)
    # a token stays while the mass before it is below top_p (the first always): TopPLogitsWarper's rule
    return top.masked_fill(top.cumsum(-1) - top >= settings.top_p, 0.0), idx


def _last_logits_only(model) -> dict:
    """`logits_to_keep=1` where the model takes it: no LM head over positions whose logits go unused."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(unwrap_peft(model).forward).parameters else {}


def cache_keyword(model) -> str | None:
    """The keyword a causal model takes its KV cache by ("past_key_values", or "cache" in newer
    transformers), or None when it takes none or no `position_ids`."""
    params = inspect.signature(unwrap_peft(model).forward).parameters
    name = next((k for k in ("cache", "past_key_values") if k in params), None)
    return name if name is not None and "position_ids" in params else None


def new_cache(model, device):
    """An empty dynamic KV cache for `model`; under autocast one that keeps keys in the autocast dtype
    (`_KeysAsValues`, as `_autocast_kv_cache`)."""
    from transformers import DynamicCache

    cache_class = _keys_as_values_caches()[0] if torch.is_autocast_enabled(torch.device(device).type) else DynamicCache
    return cache_class(config=unwrap_peft(model).config.get_text_config(decoder=True))


def prefill_once(model, ids, mask, n: int, cache_name: str, read=None):
    """Read each distinct row of a left-padded causal batch once, for `n` samples per row.

    Returns the logits of each row's last position (they predict its first
    response token) [B*n, V], the KV cache with one row per sample, and the
    attention mask [B*n, T], rows in the order of `ids` repeated `n` times each.
    `read(output)` picks something else of the model's output in place of its logits
    (e.g. the LM head's input, `models.head.head_inputs`).
    """
    rows = [tuple(r) for r in torch.cat([ids, mask], dim=1).tolist()]
    distinct = list(dict.fromkeys(rows))
    keep = torch.tensor([rows.index(row) for row in distinct], device=ids.device)  # each one's first row
    which = {row: j for j, row in enumerate(distinct)}
    expand = torch.tensor([which[row] for row in rows], device=ids.device).repeat_interleave(n)
    head_mask = mask[keep]
    positions = (head_mask.cumsum(-1) - 1).masked_fill(head_mask == 0, 0)  # as generate() numbers left-padded rows
    cache = new_cache(model, ids.device)
    output = model(input_ids=ids[keep], attention_mask=head_mask, position_ids=positions, use_cache=True,
                   **_last_logits_only(model), **{cache_name: cache})
    logits = (read(output) if read is not None else output.logits)[:, -1]
    cache.batch_select_indices(expand)
    return logits[expand], cache, head_mask[expand]


def _decode(model, ids, mask, settings: GenerationSettings, n: int, eos_id: int | None, pad_id: int,
            cache_name: str, with_logprobs: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sampled responses [B*n, <=max_new_tokens] of a left-padded causal batch, KV-cached, and their
    log-probs (or None without `with_logprobs`).

    Each distinct prompt is read once and its cache copied to all its samples:
    `generate()` repeats a prompt `num_return_sequences` times before reading it,
    and the group methods pass each prompt `num_generations` times in a row, so
    prompt tokens (most of a short reply's compute) were read up to n times over.
    Rows after their EOS continue as padding; the loop ends when every row is done.
    The log-probs [B*n, T] are each sampled token's under the model at the
    temperature (padding positions hold garbage: cut at EOS).
    """
    logits, cache, mask = prefill_once(model, ids, mask, n, cache_name)
    keep_logits = _last_logits_only(model)
    position = mask.sum(-1, keepdim=True)  # the next token's position in each row
    done = torch.zeros(len(mask), dtype=torch.bool, device=ids.device)
    out = []
    logprobs = []
    for step in range(settings.max_new_tokens):
        weights, ids_ = _nucleus(logits, settings, step, eos_id)
        token = ids_.gather(1, torch.multinomial(weights, 1)).squeeze(1).masked_fill(done, pad_id)
        out.append(token)
        if with_logprobs:  # of the model at the temperature, before top-k/top-p: what response_logprobs gives
            logprobs.append((logits.float() / settings.temperature).log_softmax(-1).gather(1, token[:, None])[:, 0])
        if eos_id is not None:
            done |= token == eos_id
        if bool(done.all()) or step + 1 == settings.max_new_tokens:
            break
        mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1)
        logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=position, use_cache=True,
                       **keep_logits, **{cache_name: cache}).logits[:, -1]
        position = position + 1
    tokens = torch.stack(out, dim=1) if out else ids.new_zeros(len(mask), 0)
    if not with_logprobs:
        return tokens, None
    return tokens, torch.stack(logprobs, dim=1) if logprobs else torch.zeros(len(mask), 0, device=ids.device)


@torch.no_grad()  # not inference_mode: under it autocast re-casts float32 weights on every call, every token
def sample(model, tokenizer, queries: list[list[int]], settings: GenerationSettings, num_return_sequences: int = 1,
           use_generate: bool = False, with_logprobs: bool = False, **extra):
    """Sample responses for a batch of query token ids; returns response ids per sequence.

    Causal prompts are padded on the left so every continuation starts at the
    same position. With `num_return_sequences=n` the responses of query i are
    rows i*n .. i*n+n-1. Causal models with transformers' default cache sample
    in `_decode` (each distinct prompt read once, the nucleus drawn from the
    likeliest tokens); others, or `use_generate=True`, in `generate()`.
    `with_logprobs=True` returns (responses, log-probs): each response's
    per-token log-probs at the temperature, from `_decode`, or None where
    `generate()` sampled (compute them with `forward.response_logprobs`).
    """
    device = next(model.parameters()).device
    seq2seq = _is_seq2seq(model)
    ids, mask = pad(queries, tokenizer.pad_token_id, side="right" if seq2seq else "left", device=device)
    eos_id = tokenizer.eos_token_id
    cache_name = None if use_generate or seq2seq else decode_cache_name(model, extra)
    if cache_name is not None:
        new, logprobs = _decode(model, ids, mask, settings, num_return_sequences, eos_id, tokenizer.pad_token_id,
                                cache_name, with_logprobs=with_logprobs)
        responses = [strip_response(row.tolist(), eos_id, tokenizer.pad_token_id) for row in new]
        if not with_logprobs:
            return responses
        return responses, [lp[:len(r)].float().cpu() for lp, r in zip(logprobs, responses)]
    kwargs = settings.kwargs()
    kwargs.update(_autocast_kv_cache(model, extra, ids.shape[1] + settings.max_new_tokens))
    out = model.generate(
        input_ids=ids, attention_mask=mask, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_id,
        num_return_sequences=num_return_sequences, **kwargs,
    )
    new = out[:, 1:] if seq2seq else out[:, ids.shape[1]:]  # seq2seq output starts with the decoder start token
    responses = [strip_response(row.tolist(), eos_id, tokenizer.pad_token_id) for row in new]
    return (responses, None) if with_logprobs else responses


def clean_completion(text: str) -> str:
    """A decoded completion as text a file can carry: NUL characters (which byte-level tokenizers of
    small or random models can decode to) removed, surrounding whitespace stripped."""
    return text.replace("\x00", "").strip()


def generate_completions(model, tokenizer, prompts: list[Prompt], n: int = 1, settings: GenerationSettings | None = None,
                         batch_size: int = 16, seed: int | None = 0, progress: bool = True,
                         max_prompt_tokens: int | None = None) -> list[list[str]]:
    """K sampled completions per prompt, as text, with a progress bar."""
    from tqdm.auto import tqdm

    settings = settings or GenerationSettings()
    if seed is not None:
        torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    queries = encode_prompts(tokenizer, prompts, max_length=max_prompt_tokens)
    per_batch = max(1, batch_size // max(n, 1))
    results: list[list[str]] = []
    with tqdm(total=len(prompts), desc="generating", unit="prompt", disable=not progress) as bar:
        for start in range(0, len(queries), per_batch):
            chunk = queries[start:start + per_batch]
            responses = sample(model, tokenizer, chunk, settings, num_return_sequences=n)
            texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
            for i in range(len(chunk)):
                results.append([clean_completion(t) for t in texts[i * n:(i + 1) * n]])
            bar.update(len(chunk))
    model.train(was_training)
    return results
