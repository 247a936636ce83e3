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
