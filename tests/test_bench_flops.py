"""The benchmark's FLOP model (bench/common.py) against numbers worked out by hand. No timing here."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import common  # noqa: E402
from common import Dims, forward_flops, peer_step_flops, ppo_step_flops, train_flops  # noqa: E402


def test_forward_counts_two_flops_per_weight_per_token():
    # body 100 weights over 6 tokens, head 10 weights over 4 tokens, batch 2:
    # 2 * 2 * (100*6 + 10*4) = 4 * 640 = 2560
    assert forward_flops(Dims(body=100, head=10), batch=2, body_tokens=6, head_tokens=4) == 2560


def test_full_training_is_three_forwards():
    # forward 2560 (above); forward + backward = 6 per weight per token = 3 * 2560
    assert train_flops(Dims(100, 10), 2, 6, 4, lora=False) == 7680


def test_lora_training_skips_frozen_weight_gradients():
    # base: 4 per weight per token = 2 * 2560 = 5120
    # adapters (8 weights over the 6 body tokens): 6 * batch 2 * 8 * 6 = 576
    assert train_flops(Dims(100, 10, lora=8), 2, 6, 4, lora=True) == 5120 + 576


def test_ppo_step_by_phase():
    # B=2, Q=3, R=4: body reads Q+R-1 = 6 positions, the head R = 4.
    # one policy forward = 2560 (generation, rollout and reference alike)
    # reward model: 50 body + 1 score weights over Q+R = 7 tokens: 2 * 2 * 51 * 7 = 1428
    # training: 2 epochs * 7680 = 15360
    flops = ppo_step_flops(Dims(100, 10), Dims(50, 1), batch=2, query_len=3, response_len=4, epochs=2, lora=False)
    assert flops == {
        "generation": 2560, "rollout": 2560, "reference": 2560, "reward": 1428, "training": 15360,
        "total": 2560 * 3 + 1428 + 15360,
    }


def test_ppo_step_with_lora():
    # policy forward with adapters (lora 8 on the body): 2 * 2 * ((100+8)*6 + 10*4) = 4 * 688 = 2752
    # reference has no adapters: 2560; training: 1 epoch * (5120 + 576) = 5696
    flops = ppo_step_flops(Dims(100, 10, lora=8), Dims(50, 1), 2, 3, 4, epochs=1, lora=True)
    assert flops["generation"] == flops["rollout"] == 2752
    assert flops["reference"] == 2560
    assert flops["training"] == 5696
    assert flops["total"] == 2752 * 2 + 2560 + 1428 + 5696


def test_peer_counts_its_value_network_and_full_width_logits():
    # trl: every one of the Q+R = 7 positions goes through body and head.
    # generation as ours: 2560. value forward (value net = reward net, 50 + 1): 2*2*(50*7 + 1*7) = 1428
    # reference: 2*2*(100*7 + 10*7) = 3080; reward: 1428
    # training per epoch: policy 3*3080 = 9240, value 3*1428 = 4284 -> 13524
    flops = peer_step_flops(Dims(100, 10), Dims(50, 1), 2, 3, 4, epochs=1, lora=False)
    assert flops == {"generation": 2560, "rollout": 1428, "reference": 3080, "reward": 1428, "training": 13524,
                     "total": 2560 + 1428 + 3080 + 1428 + 13524}


def test_smollm2_step_is_about_six_tflop():
    # SmolLM2-135M: 30 layers of q,o 576x576, k,v 576x192, gate/up/down 576x1536 -> 3,538,944 weights a layer,
    # 106,168,320 in the body; LM head 49152 x 576 = 28,311,552. Reward model: same body + 576 score weights.
    per_layer = 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536
    assert per_layer == 3_538_944
    policy, reward = Dims(30 * per_layer, 49152 * 576), Dims(30 * per_layer, 576)
    flops = ppo_step_flops(policy, reward, batch=16, query_len=50, response_len=48, epochs=4, lora=False)
    # one forward: 2 * 16 * (106,168,320 * 97 + 28,311,552 * 48) = 32 * (10,298,327,040 + 1,358,954,496)
    one = 2 * 16 * (106_168_320 * 97 + 28_311_552 * 48)
    assert flops["generation"] == one == 373_033_009_152
    assert flops["training"] == 4 * 3 * one
    assert flops["total"] / 1e12 == pytest.approx(5.93, abs=0.01)


def test_count_dims_gpt2_by_hand():
    torch = pytest.importorskip("torch")
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=10, n_positions=16, n_embd=8, n_layer=2, n_head=2))
    # a layer: c_attn 8x24 = 192, attn c_proj 8x8 = 64, c_fc 8x32 = 256, mlp c_proj 32x8 = 256 -> 768
    dims = common.count_dims(model)
    assert dims == Dims(body=2 * 768, head=10 * 8, lora=0)


def test_count_dims_llama_classifier_and_lora_by_hand():
    pytest.importorskip("torch")
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=20, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=4, tie_word_embeddings=True, num_labels=1, pad_token_id=0)
    # q 8x8 = 64, k 8x4 = 32, v 32, o 64, gate 8x16 = 128, up 128, down 128 -> 576
    assert common.count_dims(LlamaForCausalLM(config)) == Dims(body=576, head=20 * 8)
    assert common.count_dims(LlamaForSequenceClassification(config)) == Dims(body=576, head=8)
    lora = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    # q: A 2x8 + B 8x2 = 32; v: A 2x8 + B 4x2 = 24
    assert common.count_dims(lora) == Dims(body=576, head=160, lora=56)


def test_weights_bytes_counts_tied_weights_once():
    torch = pytest.importorskip("torch")
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    assert common.weights_bytes(model) == 10 * 4 * 4


def test_median():
    assert common.median([3.0, 1.0, 2.0]) == 2.0
    assert common.median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert common.median([]) is None


def test_case_suffixes_switch_our_side_options_and_keep_the_base_case():
    import cases

    assert cases.case_options("smollm2-lora-bf16") == ("smollm2-lora-bf16", {})
    assert cases.case_options("smollm2-lora-bf16-ckpt-compile") == (
        "smollm2-lora-bf16", {"compile": True, "gradient_checkpointing": True})
    assert cases.case_options("smollm2-lora-bf16-ckpt-compile-static") == (
        "smollm2-lora-bf16", {"compile": True, "gradient_checkpointing": True, "static_cache": True})
    assert cases.split_case("smollm2-full-fp32-compile") == ("smollm2-135m", "full", "fp32")
    assert cases.expand_cases(["tiny-gpt2,smollm2-lora-bf16-compile"]) == ["tiny-gpt2-full-fp32", "smollm2-lora-bf16-compile"]
    with pytest.raises(SystemExit, match="unknown case"):
        cases.expand_cases(["smollm2-lora-bf16-fast"])
