"""Speed settings are applied after device placement, per role: a model that sits on a GPU keeps SDPA /
flash attention (policy and reference alike, so the step-0 KL stays 0), one on the CPU gets eager attention."""

import torch

from rlhfkit.methods.ppo import PPOConfig, PPOTrainer
from rlhfkit.models import load_policy, speed
from rlhfkit.training.runtime import Runtime

PROMPTS = ["Hello there", "Good morning", "Thank you so much", "What a terrible"]


def make(**kw):
    config = PPOConfig(model="tiny-gpt2", output_dir=None, batch_size=4, mini_batch_size=2, max_new_tokens=4,
                       learning_rate=1e-3, seed=0, **kw)
    return PPOTrainer(config, dataset=PROMPTS)


def test_attention_is_chosen_after_prepare_has_placed_the_model(monkeypatch):
    events = []
    prepare, switch = Runtime.prepare_model_and_optimizer, speed.eager_attention
    monkeypatch.setattr(Runtime, "prepare_model_and_optimizer",
                        lambda self, m, o: events.append("prepare") or prepare(self, m, o))
    monkeypatch.setattr(speed, "eager_attention", lambda model: events.append("attention") or switch(model))
    trainer = make(lora=False)
    assert events == ["prepare", "attention", "attention"]  # policy, then the reference copy
    assert trainer.unwrapped.pretrained_model.config._attn_implementation == "eager"


def test_a_model_off_the_cpu_keeps_its_attention_for_policy_and_reference(monkeypatch):
    monkeypatch.setattr(speed, "device_type", lambda model: "cuda")  # as if prepare had moved it to a GPU
    given = load_policy("tiny-gpt2", verbose=False).model
    for lora, ref in ((False, None), (True, given)):
        trainer = PPOTrainer(PPOConfig(model="tiny-gpt2", lora=lora, output_dir=None, batch_size=4, mini_batch_size=2,
                                       max_new_tokens=4, seed=0), ref_model=ref, dataset=PROMPTS)
        assert trainer.unwrapped.pretrained_model.config._attn_implementation == "sdpa"
        assert trainer.ref_model.config._attn_implementation == "sdpa"
        queries = trainer.queries
        stats = trainer.step(queries, trainer.generate(queries), [0.0] * 4)
        assert abs(stats["objective/kl"]) < 1e-6  # the same kernels on both sides


def test_an_explicit_attention_implementation_is_used_on_every_role():
    trainer = make(lora=False, attn_implementation="sdpa")
    assert trainer.unwrapped.pretrained_model.config._attn_implementation == "sdpa"
    assert trainer.ref_model.config._attn_implementation == "sdpa"


def test_grouped_attention_for_every_allow_listed_model_type_is_eager_bit_for_bit():
    """`grouped_attention` reproduces Llama's eager attention; each model type it is used for copies that function."""
    import transformers

    configs = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
               "qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config}
    assert set(configs) == set(speed.GROUPED_MODEL_TYPES)
    ids = torch.randint(3, 96, (2, 9), generator=torch.Generator().manual_seed(0))
    for name, cls in configs.items():
        torch.manual_seed(0)
        config = cls(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=8, attn_implementation="sdpa")
        model = transformers.AutoModelForCausalLM.from_config(config).eval()
        assert speed.eager_attention(model) and model.config._attn_implementation == speed.GROUPED, name
        with torch.no_grad():
            grouped = model(input_ids=ids).logits
            model.set_attn_implementation("eager")
            assert torch.equal(grouped, model(input_ids=ids).logits), name
