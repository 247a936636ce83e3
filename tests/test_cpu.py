import torch

from rlhfkit import cpu
from rlhfkit.models import load_policy


def _logits(model, ids, autocast):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return model(input_ids=ids).logits.float()


def test_eager_attention_switches_cpu_models_and_keeps_their_outputs():
    for name in ("tiny-gpt2", "tiny-t5"):
        model = load_policy(name, verbose=False).model.eval()
        assert model.config._attn_implementation == "sdpa"
        ids = torch.randint(5, model.config.vocab_size, (2, 12))
        mask = torch.ones_like(ids)
        mask[0, :4] = 0  # padding must mean the same under both kernels
        kwargs = {"input_ids": ids, "attention_mask": mask}
        if model.config.is_encoder_decoder:
            kwargs["decoder_input_ids"] = ids[:, :6]
        with torch.no_grad():
            before = model(**kwargs).logits
            assert cpu.eager_attention(model)
            assert model.config._attn_implementation == "eager"
            assert not cpu.eager_attention(model)  # already switched
            assert torch.allclose(model(**kwargs).logits[0, 4:], before[0, 4:], atol=1e-5)
            assert torch.allclose(model(**kwargs).logits[1], before[1], atol=1e-5)


def test_store_frozen_in_bf16_halves_frozen_weights_and_keeps_outputs():
    model = load_policy("tiny-gpt2", verbose=False).model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    exact = _logits(model, ids, autocast=False)
    before = _logits(model, ids, autocast=True)
    saved = cpu.store_frozen_in_bf16(model)
    assert saved > 0 and any(p.dtype == torch.bfloat16 for p in model.parameters())
    # what autocast computed anyway, up to the bf16 rounding of the (float32) embedding lookups
    assert torch.allclose(_logits(model, ids, autocast=True), before, atol=0.02)
    assert torch.allclose(_logits(model, ids, autocast=False), exact, atol=0.05)  # still runs without autocast


def test_grouped_attention_is_eager_attention_bit_for_bit(tiny_llama):
    """Logits and sampled tokens (growing and static KV cache) equal transformers' eager attention bit for bit."""
    model = tiny_llama()
    assert cpu.eager_attention(model) and model.config._attn_implementation == cpu.GROUPED
    ids = torch.randint(3, 96, (3, 10))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    results = {}
    for impl in (cpu.GROUPED, "eager"):
        model.set_attn_implementation(impl)
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        model.zero_grad()
        fp32 = model(input_ids=ids, attention_mask=mask).logits
        fp32.square().mean().backward()
        tokens = []
        for cache in ("dynamic", "static"):
            torch.manual_seed(1)
            tokens.append(model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=True,
                                         pad_token_id=0, cache_implementation=cache, disable_compile=True))
        results[impl] = (logits, fp32, [p.grad.clone() for p in model.parameters()], tokens)
    grouped, eager = results[cpu.GROUPED], results["eager"]
    assert torch.equal(grouped[0], eager[0]) and torch.equal(grouped[1], eager[1])
    # key/value gradients sum over a group inside one matmul instead of after it: equal up to rounding
    assert all(torch.allclose(g, e, rtol=1e-5, atol=1e-8) for g, e in zip(grouped[2], eager[2]))
    assert all(torch.equal(g, e) for g, e in zip(grouped[3], eager[3]))


def test_grouped_attention_only_for_grouped_llama_style_attention(tiny_llama):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    full_heads = tiny_llama(kv_heads=4)  # no groups: nothing to save
    assert cpu.eager_attention(full_heads) and full_heads.config._attn_implementation == "eager"
    gemma2 = Gemma2ForCausalLM(Gemma2Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=4, num_key_value_heads=2, head_dim=8))
    assert not cpu._groups_like_llama(gemma2)  # its eager attention soft-caps the scores
