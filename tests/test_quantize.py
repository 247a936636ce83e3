"""`rlhfkit quantize`: torchao schemes through TorchAoConfig; the saved folder reloads with plain
transformers and generates the same tokens."""

import json

import pytest
import torch

from rlhfkit.errors import UserError


@pytest.mark.parametrize("scheme", ["int8-weight", "int8-dynamic", "int4-weight"])
def test_quantized_folder_reloads_and_generates_the_same_tokens(tiny_llama_dir, tmp_path, scheme):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhfkit.compression.quantize import probe_tokens, quantize_model

    result = quantize_model(str(tiny_llama_dir), tmp_path / "q", scheme)
    assert result.quantized_layers == 4 * 7  # q, k, v, o, gate, up, down per block; not the head
    # plain transformers, no rlhfkit loading code: torchao rebuilds the tensors from the config
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "q")).eval()
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "q"))
    weight = model.model.layers[0].mlp.up_proj.weight
    assert type(weight).__name__ != "Parameter" or weight.dtype != torch.float32  # a torchao tensor
    assert "Int8" in type(weight).__name__ or "Intx" in type(weight).__name__
    assert probe_tokens(model, tok) == result.tokens
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "torchao"
    # the quantized model is close to the float one, not identical (it was really quantized)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir)).eval()
    ids = torch.tensor([[5, 9, 17, 33, 60]])
    with torch.no_grad():
        a, b = base(ids).logits, model(ids).logits
    assert not torch.equal(a, b)
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.95


def test_quantized_folder_works_in_a_pipeline(tiny_llama_dir, tmp_path):
    from transformers import pipeline

    from rlhfkit.compression.quantize import quantize_model

    quantize_model(str(tiny_llama_dir), tmp_path / "q", "int8-weight")
    pipe = pipeline("text-generation", model=str(tmp_path / "q"))
    assert isinstance(pipe("Hello", max_new_tokens=4, do_sample=False)[0]["generated_text"], str)


def test_gpt2_conv1d_is_an_unsupported_architecture(tmp_path):
    from rlhfkit.compression.quantize import quantize_model

    with pytest.raises(UserError, match="Conv1D"):
        quantize_model("tiny-gpt2", tmp_path / "q", "int8-weight")


def test_int4_group_size_must_divide_the_layers(tiny_llama_dir, tmp_path):
    from rlhfkit.compression.quantize import quantize_model

    with pytest.raises(UserError, match="--group-size 64"):
        quantize_model(str(tiny_llama_dir), tmp_path / "q", "int4-weight", group_size=48)


def test_folder_without_weights_and_unknown_scheme(tiny_llama_dir, tmp_path):
    import shutil

    from rlhfkit.compression.quantize import quantize_model

    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(tiny_llama_dir / "config.json", empty / "config.json")
    with pytest.raises(UserError, match="no weights"):
        quantize_model(str(empty), tmp_path / "q", "int8-weight")
    with pytest.raises(UserError, match="choose one of"):
        quantize_model(str(tiny_llama_dir), tmp_path / "q", "fp3")
