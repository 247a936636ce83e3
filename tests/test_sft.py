"""SFT: row loading and validation, completion-only labels, loss going down for both families, LoRA saving."""

import json

import pytest

from rlhfkit.cli import main
from rlhfkit.errors import DataError
from rlhfkit.sft import SFTConfig, SFTExample, encode_examples, load_sft_rows, train_sft

ROWS = [
    {"prompt": "Good morning, how are you?", "completion": "I am fine, thanks. Have a wonderful day."},
    {"prompt": "Could you write a short reply to my landlord?", "completion": "Sure, here is a polite answer."},
    {"prompt": "My neighbour plays loud music every night.", "completion": "We should talk about it calmly."},
    {"prompt": "I think you are wrong about this.", "completion": "Sorry, I did not mean to upset you."},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_load_rows_all_formats(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [
        ROWS[0],
        {"messages": [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello!"}]},
        {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hey."}]},
    ])
    rows = load_sft_rows(path)
    assert rows[0] == SFTExample(ROWS[0]["prompt"], ROWS[0]["completion"])
    assert rows[1].prompt == [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hi"}]
    assert rows[1].completion == "Hello!" and rows[2].completion == "Hey."


@pytest.mark.parametrize("row, column, problem", [
    ({"prompt": "p"}, "completion", "missing column"),
    ({"prompt": "p", "completion": "   "}, "completion", "empty text"),
    ({"text": "p"}, "prompt", "missing column"),
    ({"messages": [{"role": "user", "content": "Hi"}]}, "messages", "last message must be the assistant"),
    ({"messages": [{"role": "assistant", "content": "Hi"}]}, "messages", "no prompt messages"),
])
def test_bad_rows_are_named(tmp_path, row, column, problem):
    path = write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], row])
    with pytest.raises(DataError, match=problem) as info:
        load_sft_rows(path)
    assert info.value.row == 2 and info.value.column == column


def test_bad_data_stops_before_the_model_loads(tmp_path, monkeypatch, capsys):
    import rlhfkit.models

    def no_model(*a, **k):
        raise AssertionError("the model must not be loaded before the data is validated")

    monkeypatch.setattr(rlhfkit.models, "load_policy", no_model)
    path = write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], {"prompt": "p", "completion": ""}])
    assert main(["sft", "--model", "tiny-gpt2", "--data", path, "--out", str(tmp_path / "out")]) == 2
    assert "row 2: column 'completion': empty text" in capsys.readouterr().err


def test_causal_labels_cover_completion_and_eos_only():
    from rlhfkit.models import load_tokenizer

    tok = load_tokenizer("tiny-gpt2")
    (enc,), cut = encode_examples(tok, [SFTExample("Good morning", "how are you?")], seq2seq=False, max_length=64)
    prompt_len = len(tok("Good morning")["input_ids"])
    assert cut == 0 and enc.labels[:prompt_len] == [-100] * prompt_len
    assert enc.labels[prompt_len:] == enc.input_ids[prompt_len:] and enc.input_ids[-1] == tok.eos_token_id
    assert tok.decode(enc.input_ids[prompt_len:-1]) == " how are you?"  # a space joins plain-text prompt and reply
    long = SFTExample("word " * 50, "reply " * 50)
    encoded, cut = encode_examples(tok, [long, SFTExample("a", "b")], seq2seq=False, max_length=40)
    assert cut == 1 and len(encoded[0].input_ids) == 40
    assert sum(x != -100 for x in encoded[0].labels) == 20  # the completion keeps half the room


def test_chat_prompt_uses_the_generation_format():
    from rlhfkit.generation import format_prompt
    from rlhfkit.models import load_tokenizer

    tok = load_tokenizer("tiny-gpt2")
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    (enc,), _ = encode_examples(tok, [SFTExample([{"role": "user", "content": "Hi"}], "Hello")], False, 64)
    prompt_ids = tok(format_prompt(tok, [{"role": "user", "content": "Hi"}]), add_special_tokens=False)["input_ids"]
    assert enc.input_ids[: len(prompt_ids)] == prompt_ids
    assert tok.decode([t for t in enc.labels if t != -100]) == "Hello" + tok.eos_token


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-t5"])
def test_sft_lowers_loss(tmp_path, model):
    from rlhfkit.models import load_policy

    data = write_jsonl(tmp_path / "sft.jsonl", ROWS * 4)
    config = SFTConfig(model=model, data=data, out=str(tmp_path / "out"), epochs=4, batch_size=4, lr=3e-3,
                       warmup_ratio=0.0)
    history = train_sft(config, progress=False)
    losses = [e["train/epoch_loss"] for e in history["epochs"]]
    assert losses[-1] < 0.8 * losses[0], losses
    assert (tmp_path / "out" / "config.json").exists() and (tmp_path / "out" / "config.yaml").exists()
    assert len((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()) >= 4
    reloaded = load_policy(str(tmp_path / "out"), verbose=False)
    assert reloaded.seq2seq == (model == "tiny-t5")


def test_lora_saves_adapter_or_merged_model(tmp_path, capsys):
    from rlhfkit.models import load_policy

    data = write_jsonl(tmp_path / "sft.jsonl", ROWS * 2)
    code = main(["sft", "--model", "tiny-gpt2", "--data", data, "--out", str(tmp_path / "adapter"), "--lora",
                 "--lora-r", "4", "--epochs", "2", "--lr", "1e-2", "--eval-fraction", "0.25"])
    printed = capsys.readouterr().out
    assert code == 0 and "LoRA adapter saved" in printed and "held-out loss" in printed
    adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "tiny-gpt2"  # portable: the embedded name, not a cache path
    policy = load_policy(str(tmp_path / "adapter"), verbose=False)
    assert policy.trainable_params < policy.total_params
    assert main(["sft", "--model", "tiny-gpt2", "--data", data, "--out", str(tmp_path / "merged"), "--lora",
                 "--merge", "--epochs", "1"]) == 0
    assert (tmp_path / "merged" / "config.json").exists() and not (tmp_path / "merged" / "adapter_config.json").exists()
    assert main(["sft", "--model", "tiny-gpt2", "--data", data, "--merge"]) == 2
    assert "--merge only applies with --lora" in capsys.readouterr().err


@pytest.mark.slow
def test_smollm2_lora_sft_steps(tmp_path):
    """A few LoRA steps on the real SmolLM2 chat model: loss goes down on the training rows."""
    data = write_jsonl(tmp_path / "sft.jsonl", ROWS * 2)
    config = SFTConfig(model="smollm2-135m", data=data, out=str(tmp_path / "out"), epochs=3, batch_size=4, lr=5e-4,
                       lora=True, lora_r=8, warmup_ratio=0.0)
    history = train_sft(config, progress=False)
    losses = [e["train/epoch_loss"] for e in history["epochs"]]
    assert losses[-1] < losses[0], losses
