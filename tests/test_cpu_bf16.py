import torch

from rlhfkit import cpu_bf16
from rlhfkit.models import load_policy


def _logits(model, ids, autocast):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return model(input_ids=ids).logits.float()


def test_float32_attention_runs_sdpa_in_float32_under_bf16_autocast(monkeypatch):
    model = load_policy("tiny-gpt2", verbose=False).model.eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    exact = _logits(model, ids, autocast=False)
    seen = []
    real = cpu_bf16._sdpa_float32

    def spy(module, query, *args, **kwargs):
        seen.append(query.dtype)
        out, weights = real(module, query, *args, **kwargs)
        assert out.dtype == query.dtype  # the rest of the autocast graph sees what it would have seen
        return out, weights

    monkeypatch.setattr(cpu_bf16, "_sdpa_float32", spy)
    assert cpu_bf16.float32_attention(model)
    assert model.config._attn_implementation == cpu_bf16.FLOAT32_SDPA
    assert not cpu_bf16.float32_attention(model)  # already switched
    mixed = _logits(model, ids, autocast=True)
    assert seen and set(seen) == {torch.bfloat16}
    assert torch.allclose(mixed, exact, atol=0.05)
    assert torch.equal(_logits(model, ids, autocast=False), exact)  # float32 runs are untouched


def test_store_frozen_in_bf16_halves_frozen_weights_and_keeps_outputs():
    model = load_policy("tiny-gpt2", verbose=False).model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    exact = _logits(model, ids, autocast=False)
    before = _logits(model, ids, autocast=True)
    saved = cpu_bf16.store_frozen_in_bf16(model)
    assert saved > 0 and any(p.dtype == torch.bfloat16 for p in model.parameters())
    # what autocast computed anyway, up to the bf16 rounding of the (float32) embedding lookups
    assert torch.allclose(_logits(model, ids, autocast=True), before, atol=0.02)
    assert torch.allclose(_logits(model, ids, autocast=False), exact, atol=0.05)  # still runs without autocast
