"""PPOTrainer invariants on tiny models: first ratio exactly 1, zero advantages, accumulation,
reference handling, guards, stats, response_logprobs, and the `rlhfkit ppo` command."""

import functools
import math

import pytest
import torch

from rlhfkit.errors import UserError
from rlhfkit.models import load_policy
from rlhfkit.ppo import PPOConfig, PPOTrainer
from rlhfkit.rollout import response_logprobs
from rlhfkit.runtime import cpu_has_native_bf16

PROMPTS = ["Hello there", "The quick brown fox", "Good morning", "Thank you so much", "I think you are",
           "What a terrible", "My neighbour plays", "Please be kind"]


def e_share(prompts, completions):
    return [c.count("e") / max(len(c), 1) for c in completions]


def make(model="tiny-gpt2", lora=False, **overrides):
    fields = dict(model=model, lora=lora, output_dir=None, batch_size=8, mini_batch_size=4, max_new_tokens=6,
                  learning_rate=1e-3, seed=0)
    fields.update(overrides)
    return PPOTrainer(PPOConfig(**fields), dataset=PROMPTS)


def rollout(trainer):
    queries = trainer.queries[:8]
    responses = trainer.generate(queries)
    texts = trainer.tokenizer.batch_decode(responses, skip_special_tokens=True)
    return queries, responses, e_share(None, texts)


@pytest.mark.parametrize("model,lora,accumulation,precision", [
    ("tiny-gpt2", False, 1, "no"), ("tiny-t5", False, 2, "no"), ("tiny-gpt2", True, 2, "no"), ("tiny-t5", True, 1, "no"),
    ("tiny-gpt2", True, 1, "bf16"), ("tiny-gpt2", False, 2, "bf16")])
def test_first_minibatch_ratio_is_exactly_one(model, lora, accumulation, precision):
    trainer = make(model, lora, gradient_accumulation_steps=accumulation, mixed_precision=precision)
    stats = trainer.step(*rollout(trainer))
    assert trainer.minibatch_stats[0]["ratio_max_dev"] == 0.0
    assert trainer.minibatch_stats[0]["policy/approxkl"] == 0.0
    # later mini-batches have moved
    assert any(s["ratio_max_dev"] > 0 for s in trainer.minibatch_stats[1:])
    assert stats["ppo/val/mean"] == 0.0  # the value head starts at zero
    assert math.isfinite(stats["objective/kl"])


def test_bf16_on_cpu_uses_eager_attention_and_keeps_a_zero_first_kl():
    for lora in (True, False):
        trainer = make(lora=lora, mixed_precision="bf16")
        assert trainer.unwrapped.pretrained_model.config._attn_implementation == "eager"
        if not lora:
            assert trainer.ref_model.config._attn_implementation == "eager"
        stats = trainer.step(*rollout(trainer))
        assert abs(stats["objective/kl"]) < 1e-6  # policy == reference before the first update


@pytest.mark.slow
@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU emulates bf16 (no AVX512-BF16/AMX): SmolLM2 in bf16 "
                                                      "takes many minutes here, and the rounding checked is the hardware's")
def test_bf16_first_kl_is_exactly_zero_on_smollm2():
    """SmolLM2's bf16 kernels round differently by batch shape (a first KL of -0.06 nats when the
    reference read the whole batch at once); the reference reads the policy's micro-batches."""
    trainer = PPOTrainer(PPOConfig(model="smollm2-135m", lora=False, output_dir=None, batch_size=8, mini_batch_size=4,
                                   ppo_epochs=1, max_new_tokens=16, learning_rate=1e-6, mixed_precision="bf16",
                                   temperature=0.7, seed=0), dataset=PROMPTS)
    queries = trainer.queries[:8]
    stats = trainer.step(queries, trainer.generate(queries), [0.0] * 8)
    assert stats["objective/kl"] == 0.0


def test_zero_advantages_leave_the_policy_unchanged(monkeypatch):
    from rlhfkit.objectives.advantages import ADVANTAGE_ESTIMATORS, gae_advantages

    def zero_advantages(inputs):
        advantages, returns = gae_advantages(inputs)
        return torch.zeros_like(advantages), returns

    zero_advantages.critic = True
    monkeypatch.setitem(ADVANTAGE_ESTIMATORS, "zero", zero_advantages)
    trainer = make(vf_coef=0.0, advantage_estimator="zero")
    before = {n: p.detach().clone() for n, p in trainer.unwrapped.pretrained_model.named_parameters()}
    trainer.step(*rollout(trainer))
    after = dict(trainer.unwrapped.pretrained_model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_gradient_accumulation_matches_one_minibatch():
    # one mini-batch of 8 in one pass vs in 4 micro-batches of 2: the same gradient
    a, b = make(ppo_epochs=1, mini_batch_size=8), make(ppo_epochs=1, mini_batch_size=8, gradient_accumulation_steps=4)
    batch = rollout(a)
    a.step(*batch)
    b.step(*batch)
    for (n, p), (_, q) in zip(a.unwrapped.named_parameters(), b.unwrapped.named_parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), n


@pytest.mark.parametrize("model,lora", [("tiny-gpt2", True), ("tiny-gpt2", False), ("tiny-t5", False)])
def test_activation_checkpointing_recomputes_layers_and_gives_the_same_update(model, lora):
    """Also the LM head: log-probs from the hidden state (`linear_logprobs`), the tied embedding's gradient included."""
    plain, ckpt = make(model, lora, ppo_epochs=1), make(model, lora, ppo_epochs=1, gradient_checkpointing=True)
    assert ckpt.unwrapped.chunked_head and not plain.unwrapped.chunked_head
    layers = ckpt._checkpointed
    assert layers and all(layer.training for layer in layers)
    assert not any(m.training for layer in layers for m in layer.modules() if m is not layer)  # dropout stays off
    calls = []
    inner = next(m for m in layers[0].modules() if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D")
    inner.register_forward_hook(lambda *a: calls.append(1))
    batch = rollout(plain)
    stats_plain, stats_ckpt = plain.step(*batch), ckpt.step(*batch)
    # rollout: 2 policy micro-batches (+ 1 reference pass with adapters off); training: 2 micro-batches,
    # each run again in its backward pass
    assert len(calls) == 2 + lora + 2 + 2
    assert stats_ckpt["objective/kl"] == stats_plain["objective/kl"]
    for (n, p), (_, q) in zip(plain.unwrapped.named_parameters(), ckpt.unwrapped.named_parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-6), n


@pytest.mark.parametrize("lora", [True, False])
def test_chunked_head_keeps_the_first_ratio_exactly_one_in_bf16(lora):
    trainer = make(lora=lora, mixed_precision="bf16", gradient_checkpointing=True)
    assert trainer.unwrapped.chunked_head
    trainer.step(*rollout(trainer))
    assert trainer.minibatch_stats[0]["ratio_max_dev"] == 0.0


def test_chunked_head_only_where_the_logits_are_the_heads_own_output():
    """A model that rescales its logits after the head (as Gemma 2's softcapping does) keeps the logits path."""
    from rlhfkit.rollout import make_batch
    from rlhfkit.value_head import ModelWithValueHead

    model = ModelWithValueHead(load_policy("tiny-gpt2", verbose=False).model)
    probe = make_batch([[0, 1, 2]], [[1, 0]], 0, seq2seq=False)
    assert model.head_is_last_op(**probe.inputs, logits_to_keep=probe.width)
    model.pretrained_model.register_forward_hook(lambda module, args, out: out.__setitem__("logits", out.logits * 0.5))
    assert not model.head_is_last_op(**probe.inputs, logits_to_keep=probe.width)
    hidden, _ = model(**probe.inputs, logits_to_keep=probe.width, with_logits=False)  # the head's input, not logits
    assert hidden.shape == (1, 2, model.config.n_embd)
    assert "forward" not in model.lm_head().__dict__  # the head's own forward is back


@pytest.mark.slow
@pytest.mark.parametrize("lora,precision,tolerance", [(True, "bf16", 5e-2), (False, "no", 1e-4)])
def test_compiled_layers_run_only_the_training_passes_and_give_the_same_update(lora, precision, tolerance):
    eager, compiled = (make("tiny-gpt2", lora, ppo_epochs=1, mixed_precision=precision, compile=c) for c in (False, True))
    if not lora:  # the reference copy stays eager
        assert not any(isinstance(m.forward, functools.partial) for m in compiled.ref_model.modules())
    traced = []  # a hook runs at trace time inside torch.compile, every time in eager code
    inner = next(m for m in compiled.unwrapped.pretrained_model.modules() if type(m).__name__ == "Conv1D")
    inner.register_forward_hook(lambda *a: traced.append(torch.compiler.is_compiling()))
    grads = {}  # the first mini-batch's gradients, before either side's parameters move

    def capture(trainer, name):
        step = trainer.optimizer.step

        def wrapped(*a, **k):
            grads.setdefault(name, [p.grad.clone() for p in trainer.unwrapped.parameters() if p.requires_grad])
            return step(*a, **k)
        trainer.optimizer.step = wrapped
    capture(eager, "eager")
    capture(compiled, "compiled")
    batch = rollout(eager)
    assert not any(traced)  # nothing ran yet
    generated = compiled.generate(batch[0])
    assert len(generated) == len(batch[0]) and traced and not any(traced)  # sampling runs eager
    del traced[:]
    stats_eager, stats_compiled = eager.step(*batch), compiled.step(*batch)
    assert any(traced)  # the training passes were traced by torch.compile
    assert stats_compiled["objective/kl"] == stats_eager["objective/kl"]  # rollout forwards: the same eager code
    assert stats_compiled["time/ppo/train_passes"] > 0
    first_eager, first_compiled = eager.minibatch_stats[0], compiled.minibatch_stats[0]
    assert first_compiled["loss/total"] == pytest.approx(first_eager["loss/total"], rel=tolerance / 10, abs=1e-6)
    assert first_compiled["ratio_max_dev"] < tolerance  # the compiled forward reproduces the eager log-probs
    # bf16: fused kernels round once where eager rounds after every op; both are ~2% (median) off a
    # float32 pass on SmolLM2, so the two agree to a few percent, not to float32's 1e-4
    checked = 0
    for g, h in zip(grads["eager"], grads["compiled"]):
        if g.norm() > 0:
            assert (g - h).norm() <= tolerance * g.norm()
            checked += 1
    assert checked >= len(grads["eager"]) // 2


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-t5"])
def test_static_cache_samples_the_same_tokens_from_one_allocation(model, monkeypatch):
    from transformers.cache_utils import StaticCache

    made = []
    init = StaticCache.__init__
    monkeypatch.setattr(StaticCache, "__init__", lambda self, *a, **k: made.append(1) or init(self, *a, **k))
    responses = {}
    for static in (False, True):
        trainer = make(model, static_cache=static)
        torch.manual_seed(0)
        responses[static] = [r.tolist() for r in trainer.generate(trainer.queries[:8])]
    assert made  # the second trainer sampled through a static cache
    assert responses[True] == responses[False]  # float32: the in-place cache changes no logit


def test_static_cache_refuses_a_model_without_one(monkeypatch):
    from transformers import GPT2LMHeadModel

    monkeypatch.setattr(GPT2LMHeadModel, "_can_compile_fullgraph", False)
    with pytest.raises(UserError, match="GPT2LMHeadModel has no static KV cache.*turn static_cache off"):
        make(static_cache=True)


def test_compile_refuses_seq2seq_models():
    with pytest.raises(UserError, match="causal models only"):
        make("tiny-t5", compile=True)


def _saved_activation_bytes(model, ids):
    """Bytes the autograd graph of one forward keeps for its backward, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, use_cache=False).logits.sum().backward()
    return sum(saved.values())


@pytest.mark.slow
def test_compile_with_a_zero_memory_budget_keeps_fewer_activations_and_the_same_gradients():
    from rlhfkit.models import compile_layers

    ids = torch.randint(5, 500, (4, 48), generator=torch.Generator().manual_seed(0))
    results = {}
    for budget in ("eager", None, 0.0):
        model = load_policy("tiny-gpt2", verbose=False).model
        if budget != "eager":
            compile_layers(model, memory_budget=budget)
        results[budget] = _saved_activation_bytes(model, ids), [p.grad.clone() for p in model.parameters()]
    assert results[0.0][0] < 0.6 * results[None][0]  # the compiler recomputes instead of keeping
    for budget in (None, 0.0):
        for g, h in zip(results["eager"][1], results[budget][1]):
            assert (g - h).norm() <= 1e-4 * g.norm() + 1e-7


@pytest.mark.slow
def test_gradient_checkpointing_with_compile_uses_the_compilers_recomputation():
    trainer = make(lora=True, ppo_epochs=1, gradient_checkpointing=True, compile=True)
    assert trainer._checkpointed == []  # transformers' checkpointing stays off: compile would skip those layers
    assert any(isinstance(m.forward, functools.partial) for m in trainer.unwrapped.pretrained_model.modules())
    stats = trainer.step(*rollout(trainer))
    assert math.isfinite(stats["ppo/loss/total"])


def test_lora_reference_is_the_policy_with_adapters_disabled():
    trainer = make(lora=True)
    assert trainer.ref_model is None
    base_ids = {id(p) for p in trainer.unwrapped.pretrained_model.parameters()}
    assert len(base_ids) == sum(1 for _ in trainer.unwrapped.pretrained_model.parameters())  # one copy only
    queries, responses, scores = rollout(trainer)
    trainer.step(queries, responses, scores)  # adapters now differ from zero
    plain = load_policy("tiny-gpt2", verbose=False).model
    expected = response_logprobs(plain, queries, responses, trainer.tokenizer.pad_token_id)
    with trainer.unwrapped.pretrained_model.disable_adapter():
        got = response_logprobs(trainer.unwrapped.pretrained_model, queries, responses, trainer.tokenizer.pad_token_id)
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(expected, got))
    trained = response_logprobs(trainer.unwrapped, queries, responses, trainer.tokenizer.pad_token_id)
    assert any(not torch.allclose(x, y, atol=1e-5) for x, y in zip(expected, trained))


def test_full_finetuning_keeps_a_frozen_reference():
    trainer = make()
    assert trainer.ref_model is not None and not any(p.requires_grad for p in trainer.ref_model.parameters())
    before = [p.detach().clone() for p in trainer.ref_model.parameters()]
    trainer.step(*rollout(trainer))
    assert all(torch.equal(x, y) for x, y in zip(before, trainer.ref_model.parameters()))


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-t5"])
def test_response_logprobs_match_the_sampling_distribution(model):
    policy = load_policy(model, verbose=False)
    tok = policy.tokenizer
    from rlhfkit.generation import encode_prompts, pad

    queries = encode_prompts(tok, PROMPTS[:3])
    ids, mask = pad(queries, tok.pad_token_id, side="right" if policy.seq2seq else "left")
    torch.manual_seed(0)
    out = policy.model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, max_new_tokens=5,
                                min_new_tokens=5, output_logits=True, return_dict_in_generate=True,
                                pad_token_id=tok.pad_token_id, temperature=0.7)
    new = out.sequences[:, 1:] if policy.seq2seq else out.sequences[:, ids.shape[1]:]
    expected = torch.log_softmax(torch.stack(out.logits, 1).float() / 0.7, -1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
    lengths = [5, 3, 1]  # different response lengths in one batch
    responses = [new[i, :n].tolist() for i, n in enumerate(lengths)]
    got = response_logprobs(policy.model, queries, responses, tok.pad_token_id, temperature=0.7, batch_size=2)
    assert [len(g) for g in got] == lengths
    for i, n in enumerate(lengths):
        assert torch.allclose(got[i], expected[i, :n], atol=1e-4)


def test_stats_names_and_k3():
    trainer = make(kl_estimator="k3", init_kl_coef=0.1)
    trainer.step(*rollout(trainer))
    stats = trainer.step(*rollout(trainer))
    for key in ("objective/kl", "objective/entropy", "objective/kl_coef", "ppo/returns/mean",
                "ppo/policy/advantages_mean", "ppo/policy/clipfrac", "ppo/policy/approxkl", "ppo/loss/value",
                "ppo/loss/policy", "env/reward_mean", "env/reward_std", "tokens/responses_len_mean",
                "time/ppo/total", "ppo/policy/entropy", "ppo/val/error"):
        assert key in stats and math.isfinite(stats[key]), key
    assert stats["objective/kl"] >= 0  # k3 never goes negative
    assert abs(stats["ppo/policy/advantages_mean"]) < 1e-5  # whitened


def test_scores_cap_eos_penalty_clip_and_normalisation():
    from rlhfkit.training.experience import process_scores

    def processed(trainer, scores, responses):
        return process_scores(scores, responses, trainer.config, trainer.tokenizer.eos_token_id, trainer.score_stats,
                              trainer.runtime)

    trainer = make(missing_eos_penalty=1.0, score_clip=0.5)
    eos = trainer.tokenizer.eos_token_id
    scores = processed(trainer, torch.tensor([0.2, 0.2, 3.0]), [[5, eos], [5, 6], [eos]])
    assert torch.allclose(scores, torch.tensor([0.2, -0.5, 0.5]))
    trainer = make(normalize_scores=True)
    scores = processed(trainer, torch.tensor([1.0, 2.0, 3.0]), [[1]] * 3)
    assert torch.allclose(scores, torch.tensor([-1.0, 0.0, 1.0]) / math.sqrt(2 / 3), atol=1e-5)
    # the cap comes first: 3.0 and 5.0 count as 2.0, then the EOS penalty: [1.0, 2.0 - 1, 2.0]
    trainer = make(score_cap=2.0, missing_eos_penalty=1.0)
    scores = processed(trainer, torch.tensor([1.0, 3.0, 5.0]), [[5, eos], [5, 6], [eos]])
    assert torch.allclose(scores, torch.tensor([1.0, 1.0, 2.0]))


def test_non_finite_rewards_are_skipped_then_stop_the_run():
    trainer = make(max_bad_steps=2)
    queries, responses, _ = rollout(trainer)
    before = [p.detach().clone() for p in trainer.unwrapped.parameters()]
    with pytest.warns(UserWarning, match="non-finite reward"):
        stats = trainer.step(queries, responses, [float("nan")] * 8)
    assert stats["ppo/skipped"] == 1.0 and trainer.skipped_steps == 1
    assert all(torch.equal(x, y) for x, y in zip(before, trainer.unwrapped.parameters()))
    with pytest.raises(UserError, match="2 steps in a row skipped.*prompt"):
        trainer.step(queries, responses, [float("inf")] * 8)


def test_bad_inputs_are_user_errors():
    with pytest.raises(UserError, match="mini_batch_size must be a multiple"):
        make(mini_batch_size=4, gradient_accumulation_steps=3)
    trainer = make()
    with pytest.raises(UserError, match="as many queries"):
        trainer.step([[1, 2]], [[3], [4]], [1.0])
    with pytest.raises(UserError, match="empty response"):
        trainer.step([[1, 2]], [[]], [1.0])


def test_train_writes_the_run_folder(tmp_path):
    import json

    trainer = make(output_dir=str(tmp_path / "run"), steps=2, samples_per_step=2)
    history = trainer.train(e_share)
    run = tmp_path / "run"
    assert len(history) == 2 and (run / "config.yaml").exists()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and "objective/kl" in rows[0]
    assert len((run / "samples.jsonl").read_text().splitlines()) == 4
    assert (run / "checkpoints" / "step-2" / "trainer_state.json").exists()
    assert (run / "model" / "value_head.safetensors").exists() and (run / "model" / "config.json").exists()


def test_cli_yaml_with_flag_overrides(tmp_path, monkeypatch):
    import json
    import sys
    import types

    from rlhfkit.cli import main

    module = types.ModuleType("ppo_test_rewards")
    module.e_share = e_share
    monkeypatch.setitem(sys.modules, "ppo_test_rewards", module)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    config = tmp_path / "ppo.yaml"
    config.write_text(f"model: tiny-t5\nprompts: {prompts}\nreward: ppo_test_rewards:e_share\nlora: false\n"
                      f"batch_size: 4\nmini_batch_size: 2\nmax_new_tokens: 4\nsteps: 5\noutput_dir: {tmp_path / 'run'}\n")
    assert main(["ppo", "--config", str(config), "--steps", "1", "--lora"]) == 0
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "steps: 1" in saved and "lora: true" in saved
    assert main(["ppo", "--resume", str(tmp_path / "run"), "--steps", "2"]) == 0
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2]
    assert main(["ppo", "--model", "tiny-gpt2", "--steps", "1"]) == 2  # no prompts: a one-line error
