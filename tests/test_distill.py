"""`rlhfkit distill`: the layer-dropped or given student gets closer to the teacher, the on-policy
path samples from the student, seq2seq works, the saved folder reloads and generates the same tokens."""

import json

import pytest
import torch

from rlhfkit.errors import UserError

PROMPTS = ["Write a kind reply to my neighbour.", "Tell me about the weather today.", "Why is the referee wrong?",
           "Say something nice about dogs.", "My landlord is angry, what do I say?", "Thank you for the help!",
           "How are you this morning?", "Please be calm and talk."]


@pytest.fixture
def prompts(write_jsonl):
    return write_jsonl([{"prompt": p} for p in PROMPTS], "prompts.jsonl")


def _kl_to_teacher(student, teacher, tokenizer, text, seq2seq=False):
    """Mean per-token forward KL(teacher || student) on the given texts."""
    from rlhfkit.objectives.distill import forward_kl

    ids = tokenizer(text, return_tensors="pt", padding=True)["input_ids"]
    kw = {"decoder_input_ids": ids} if seq2seq else {}
    with torch.no_grad():
        return forward_kl(student(input_ids=ids, **kw).logits, teacher(input_ids=ids, **kw).logits).mean().item()


def _config(teacher, data, out, **kw):
    from rlhfkit.methods.distill import DistillConfig

    base = dict(teacher=str(teacher), data=str(data), output_dir=str(out), student_layers=2, epochs=6,
                batch_size=4, learning_rate=3e-3, max_new_tokens=8, measure=False, log_every=1)
    return DistillConfig(**{**base, **kw})


def test_layer_dropped_student_moves_towards_the_teacher_and_reloads(tiny_llama_dir, prompts, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhfkit.compression.layers import evenly_spaced, keep_layers
    from rlhfkit.compression.quantize import probe_tokens
    from rlhfkit.methods.distill import train_distill

    # a random teacher's samples are noise as hard labels: the soft targets alone show the pull
    result = train_distill(_config(tiny_llama_dir, prompts, tmp_path / "s", ce_weight=0.0), progress=False)
    teacher = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "s"))
    student = AutoModelForCausalLM.from_pretrained(str(tmp_path / "s")).eval()
    assert student.config.num_hidden_layers == 2 and len(student.model.layers) == 2
    before = keep_layers(teacher, evenly_spaced(4, 2)).eval()  # the initialisation: teacher blocks 0 and 3
    assert torch.equal(before.model.layers[1].mlp.up_proj.weight, teacher.model.layers[3].mlp.up_proj.weight)
    rows = [json.loads(x) for x in (tmp_path / "s" / "teacher_samples.jsonl").read_text().splitlines()]
    text = [r["prompt"] + " " + r["completion"] for r in rows]  # what it was distilled on
    assert _kl_to_teacher(student, teacher, tok, text) < 0.7 * _kl_to_teacher(before, teacher, tok, text)
    steps = result["steps"]
    assert steps[-1]["kd"] < steps[0]["kd"]
    assert (tmp_path / "s" / "teacher_samples.jsonl").exists()
    info = json.loads((tmp_path / "s" / "compression.json").read_text())
    assert info["method"] == "distill"
    # the in-memory student and its saved folder generate the same tokens
    assert probe_tokens(student, tok) == probe_tokens(AutoModelForCausalLM.from_pretrained(str(tmp_path / "s")).eval(), tok)


def test_on_policy_steps_use_the_students_samples(tiny_llama_dir, prompts, tmp_path):
    from rlhfkit.methods.distill import train_distill

    result = train_distill(_config(tiny_llama_dir, prompts, tmp_path / "s", loss="jsd", beta=0.5,
                                   on_policy_fraction=1.0, epochs=2), progress=False)
    assert all(s["on_policy"] > 0 for s in result["steps"])
    assert all(s["ce"] == 0 for s in result["steps"])  # no hard labels on the student's own tokens
    off = train_distill(_config(tiny_llama_dir, prompts, tmp_path / "o", epochs=1), progress=False)
    assert all(s["ce"] > 0 and s["on_policy"] == 0 for s in off["steps"])


def test_seq2seq_student(prompts, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    from rlhfkit.methods.distill import train_distill

    train_distill(_config("tiny-t5", prompts, tmp_path / "t", student_layers=1, epochs=2, loss="reverse_kl",
                          on_policy_fraction=0.5), progress=False)
    student = AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path / "t"))
    assert len(student.encoder.block) == 1 and len(student.decoder.block) == 1


def test_keep_sparsity_keeps_a_pruned_students_zeros(tiny_llama_dir, prompts, tmp_path):
    from rlhfkit.compression.prune import layer_sparsity, prune_model
    from rlhfkit.methods.distill import train_distill
    from transformers import AutoModelForCausalLM

    prune_model(str(tiny_llama_dir), tmp_path / "p", "magnitude", sparsity=0.5)
    train_distill(_config(tiny_llama_dir, prompts, tmp_path / "r", student=str(tmp_path / "p"), student_layers=None,
                          keep_sparsity=True, epochs=1), progress=False)
    reached, _ = layer_sparsity(AutoModelForCausalLM.from_pretrained(str(tmp_path / "r")))
    assert reached == pytest.approx(0.5, abs=1e-3)


def test_bad_students(tiny_llama_dir, prompts, tmp_path):
    from rlhfkit.methods.distill import train_distill

    with pytest.raises(UserError, match="--student-layers N"):
        train_distill(_config(tiny_llama_dir, prompts, tmp_path / "s", student_layers=None), progress=False)
    with pytest.raises(UserError, match="needs fewer"):
        train_distill(_config(tiny_llama_dir, prompts, tmp_path / "s", student_layers=4), progress=False)
    with pytest.raises(UserError, match="seq2seq model and the teacher a causal"):
        train_distill(_config(tiny_llama_dir, prompts, tmp_path / "s", student="tiny-t5", student_layers=None),
                      progress=False)
    with pytest.raises(UserError, match="another vocabulary"):
        train_distill(_config(tiny_llama_dir, prompts, tmp_path / "s", student="smollm2-135m", student_layers=None),
                      progress=False)
