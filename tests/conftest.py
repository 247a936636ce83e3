import os

import pytest

# Quiet library progress bars in test logs; embedded models build once into the user cache.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def write_jsonl(tmp_path):
    """Write rows (dicts or raw strings) to a JSONL file in tmp_path and return its path."""
    import json

    def _write(rows, name="data.jsonl"):
        path = tmp_path / name
        with path.open("w", encoding="utf-8") as f:
            for r in rows:
                f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
        return path

    return _write


@pytest.fixture
def tiny_llama():
    """Factory of a seeded two-layer Llama (grouped-query attention unless kv_heads=4), in eval mode."""

    def _make(kv_heads=2):
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=kv_heads, attn_implementation="sdpa")
        return LlamaForCausalLM(config).eval()

    return _make


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A saved four-layer Llama (nn.Linear projections, grouped-query attention) with tiny-gpt2's
    tokenizer: the smallest folder every compression method supports."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from rlhfkit.models import resolve

    tok = AutoTokenizer.from_pretrained(resolve("tiny-gpt2"))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger weights than the default init, so the layers differ measurably
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
