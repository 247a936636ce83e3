from types import SimpleNamespace

import pytest
import torch

from rlhfkit import cpu
from rlhfkit.models import generation
from rlhfkit.models.generation import GenerationSettings, sample

TOKENIZER = SimpleNamespace(pad_token_id=0, eos_token_id=1)


def _cache_of(out):
    return getattr(out, "cache", None) or getattr(out, "past_key_values", None)  # renamed within transformers 5


@pytest.mark.parametrize("static", [False, True])
def test_autocast_kv_cache_stores_bf16_keys_and_samples_the_same_tokens(tiny_llama, monkeypatch, static):
    model = tiny_llama()
    cpu.eager_attention(model)
    queries = [[5, 9, 17, 33], [40, 41], [7, 8, 9, 10, 11, 12]]
    settings = GenerationSettings(max_new_tokens=6, min_new_tokens=6, temperature=0.7)
    extra = {"cache_implementation": "static", "disable_compile": True} if static else {}
    ids = torch.tensor([[0, 0] + queries[0]])

    with torch.autocast("cpu", dtype=torch.bfloat16):
        # the premise: transformers' own cache holds the rotary-promoted keys in float32
        default = _cache_of(model.generate(input_ids=ids, max_new_tokens=2, do_sample=False, pad_token_id=0,
                                           return_dict_in_generate=True, **extra))
        assert default.layers[0].keys.dtype == torch.float32 and default.layers[0].values.dtype == torch.bfloat16

        made = []
        build = generation._autocast_kv_cache
        monkeypatch.setattr(generation, "_autocast_kv_cache", lambda *a: made.append(build(*a)) or made[-1])
        torch.manual_seed(1)
        ours = sample(model, TOKENIZER, queries, settings, use_generate=True, **extra)

        monkeypatch.setattr(generation, "_autocast_kv_cache", lambda model, extra, n: extra)
        torch.manual_seed(1)
        plain = sample(model, TOKENIZER, queries, settings, use_generate=True, **extra)

    cache = next(v for k, v in made[0].items() if k in ("cache", "past_key_values"))
    assert "cache_implementation" not in made[0] and isinstance(cache, generation._KeysAsValues)
    assert all(layer.keys.dtype == layer.values.dtype == torch.bfloat16 for layer in cache.layers)
    assert ours == plain and all(len(r) == 6 for r in ours)  # rounded once on write = rounded at every read


def test_autocast_kv_cache_leaves_other_setups_alone(tiny_llama):
    from transformers import DynamicCache, T5Config, T5ForConditionalGeneration

    llama = tiny_llama()
    assert generation._autocast_kv_cache(llama, {"a": 1}, 10) == {"a": 1}  # no autocast: keys stay float32 anyway
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=96, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2))
    user_cache = {"past_key_values": DynamicCache()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert generation._autocast_kv_cache(t5, {}, 10) == {}  # no rotary embedding promotes T5's keys
        assert generation._autocast_kv_cache(llama, user_cache, 10) is user_cache
        offloaded = {"cache_implementation": "offloaded"}
        assert generation._autocast_kv_cache(llama, offloaded, 10) is offloaded
        static = generation._autocast_kv_cache(llama, {"cache_implementation": "static", "x": 2}, 10)
    assert static["x"] == 2 and "cache_implementation" not in static



def _prefill_rows(model):
    """Record the batch size of every forward call whose input is longer than one token (a prefill)."""
    seen = []
    model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["input_ids"].shape[0]) if kwargs["input_ids"].shape[1] > 1 else None,
        with_kwargs=True)
    return seen


@pytest.mark.parametrize("lora", [False, True])
def test_decode_loop_reads_each_prompt_once_and_its_log_probs_match_a_full_forward(tiny_llama, lora):
    """The KV-cached loop (shared prefill, left padding, positions, cache copies, EOS padding) scores
    every sampled token as a plain forward over the whole prompt + response does."""
    from rlhfkit.models.forward import response_logprobs

    model = tiny_llama()
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    seen = _prefill_rows(model.get_base_model() if lora else model)
    # left padding of different lengths; a prompt repeated in a row, as the group methods pass them
    queries = [[5, 9, 17, 33], [5, 9, 17, 33], [40, 41], [7, 8, 9, 10, 11, 12]]
    settings = GenerationSettings(max_new_tokens=7, temperature=0.8, top_p=0.95)
    ids, mask = generation.pad(queries, 0, side="left")
    torch.manual_seed(3)
    tokens, logprobs = generation._decode(model, ids, mask, settings, 3, eos_id=1, pad_id=0,
                                          cache_name=generation.decode_cache_name(model, {}), with_logprobs=True)
    assert seen == [3] and tokens.shape[0] == 12  # 3 distinct prompts read once, for 4 x 3 samples
    responses = [generation.strip_response(row.tolist(), 1, 0) for row in tokens]
    full = response_logprobs(model, [q for q in queries for _ in range(3)], responses, 0, temperature=0.8)
    for row, (got, want) in enumerate(zip(logprobs, full)):
        torch.testing.assert_close(got[:len(want)], want, atol=1e-5, rtol=1e-5, msg=f"row {row}")
    torch.manual_seed(3)  # sample() is this loop
    assert sample(model, TOKENIZER, queries, settings, num_return_sequences=3) == responses


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 0, 0.9), (1.3, 50, 0.8), (1.0, 0, 1.0), (0.5, 7, 1.0)])
def test_nucleus_is_the_distribution_of_transformers_warpers(temperature, top_k, top_p):
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(0)
    sharpness = torch.tensor([0.3, 1.0, 3.0, 8.0, 0.05, 5.0])[:, None]  # flat rows need more than the window
    logits = torch.randn(6, 300) * sharpness
    settings = GenerationSettings(temperature=temperature, top_k=top_k, top_p=top_p)
    weights, ids = generation._nucleus(logits, settings, step=5, eos_id=None, window=16)
    ours = torch.zeros_like(logits).scatter_(1, ids, weights)
    scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    torch.testing.assert_close(ours / ours.sum(-1, keepdim=True), scores.softmax(-1), atol=1e-6, rtol=1e-5)


def test_nucleus_keeps_eos_out_until_min_new_tokens():
    logits = torch.zeros(2, 10)
    logits[:, 3] = 5.0  # EOS is the likeliest token
    settings = GenerationSettings(temperature=1.0, top_p=0.9, min_new_tokens=2)
    weights, ids = generation._nucleus(logits, settings, step=1, eos_id=3)
    assert float(weights[ids == 3].sum()) == 0.0
    weights, ids = generation._nucleus(logits, settings, step=2, eos_id=3)
    assert float(weights[ids == 3].min()) > 0.5


def test_generate_samples_where_the_loop_cannot(tiny_llama):
    """A static cache (transformers' own), extra generate() keywords, a configured repetition
    penalty or a seq2seq model: transformers' generate() samples, reading every row's prompt."""
    model = tiny_llama()
    seen = _prefill_rows(model)
    queries = [[5, 9, 17, 33], [40, 41]]
    settings = GenerationSettings(max_new_tokens=4, min_new_tokens=4)
    static = {"cache_implementation": "static", "disable_compile": True}
    out = sample(model, TOKENIZER, queries, settings, num_return_sequences=2, **static)
    assert seen == [4] and all(len(r) == 4 for r in out)
    assert generation.decode_cache_name(model, {}) is not None
    assert generation.decode_cache_name(model, {"output_scores": True}) is None
    model.generation_config.repetition_penalty = 1.2
    assert generation.decode_cache_name(model, {}) is None


@pytest.mark.parametrize("lora", [False, True])
def test_shared_prompt_scoring_equals_the_plain_forward(tiny_llama, lora):
    """response_logprobs reads a repeated query once (evaluation's k samples per prompt): the same
    log-probs as the plain padded pass, empty and one-token responses included."""
    from rlhfkit.models import forward

    model = tiny_llama()
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    queries = [[5, 9, 17, 33]] * 3 + [[40, 41]] * 3 + [[7, 8, 9, 10, 11, 12]]
    responses = [[3, 4, 5, 1], [6], [], [7, 8, 9, 10, 11], [12, 13], [14, 1], [15, 16, 17]]
    seen = _prefill_rows(model.get_base_model() if lora else model)
    shared = forward.response_logprobs(model, queries, responses, 0, temperature=0.7, batch_size=4)
    assert seen[:2] == [2, 4]  # a batch of 4 rows: its 2 distinct queries read once, then the 4 responses
    plain = [forward.response_logprobs(model, [q], [r], 0, temperature=0.7)[0] for q, r in zip(queries, responses)]
    for got, want in zip(shared, plain):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert [len(x) for x in shared] == [len(r) for r in responses]
