from types import SimpleNamespace

import pytest
import torch

from rlhfkit import cpu, generation
from rlhfkit.generation import GenerationSettings, sample

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
        ours = sample(model, TOKENIZER, queries, settings, **extra)

        monkeypatch.setattr(generation, "_autocast_kv_cache", lambda model, extra, n: extra)
        torch.manual_seed(1)
        plain = sample(model, TOKENIZER, queries, settings, **extra)

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
