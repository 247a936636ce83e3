"""Model cards in every saved folder, `--push-to-hub` failing clearly without the Hub, and `rlhfkit export`:
a plain transformers folder that loads (and runs in `pipeline`) in a Python that cannot import rlhfkit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhfkit.errors import UserError
from rlhfkit.models.card import base_model_origin, card_metadata, check_push, push_folder

ROWS = [{"prompt": f"Say something kind number {i}", "completion": f"You are wonderful, friend {i}."} for i in range(8)]
RANKS = [{"prompt": f"Reply to message {i}", "completions": ["thank you so much", "you idiot", "that is great"],
          "ranks": [1, 3, 2]} for i in range(8)]
PROMPTS = ["Hello there", "The quick brown fox", "Good morning", "Thank you so much"]


def e_share(prompts, completions):
    return [c.count("e") / max(len(c), 1) for c in completions]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An SFT model (full), a reward model, a PPO LoRA run on tiny-gpt2 and a PPO full run on tiny-t5."""
    from rlhfkit.methods.ppo import PPOConfig, PPOTrainer
    from rlhfkit.methods.reward import RewardConfig, train_reward_model
    from rlhfkit.methods.sft import SFTConfig, train_sft

    root = tmp_path_factory.mktemp("trained")
    (root / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (root / "rank.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RANKS))
    train_sft(SFTConfig(model="tiny-gpt2", data=str(root / "sft.jsonl"), output_dir=str(root / "sft"), batch_size=4,
                        epochs=1, eval_fraction=0.25, learning_rate=1e-3), progress=False)
    train_reward_model(RewardConfig(model="tiny-bert", data=str(root / "rank.jsonl"), output_dir=str(root / "reward"),
                                    epochs=1, batch_size=4, eval_fraction=0.25), progress=False)
    online = dict(batch_size=4, mini_batch_size=4, max_new_tokens=4, steps=1, log_every=0, learning_rate=1e-2)
    PPOTrainer(PPOConfig(model="tiny-gpt2", lora=True, output_dir=str(root / "ppo"), **online),
               dataset=PROMPTS).train(e_share)
    PPOTrainer(PPOConfig(model="tiny-t5", lora=False, output_dir=str(root / "ppo-t5"), **online),
               dataset=PROMPTS).train(e_share)
    return root


def card(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text()
    return card_metadata(folder), text


# ---------------------------------------------------------------- cards


def test_every_saved_folder_has_a_hub_card(trained):
    meta, text = card(trained / "sft")
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert meta["tags"][:2] == ["rlhfkit", "sft"] and "base_model" not in meta  # tiny-gpt2 has no Hub origin
    assert "## Evaluation (held-out)" in text and "eval/loss" in text
    assert "```yaml" in text and "model: tiny-gpt2" in text and "pipeline(\"text-generation\"" in text
    assert "sft.jsonl` (local file, sha256" in text

    meta, text = card(trained / "reward")
    assert meta["pipeline_tag"] == "text-classification" and "reward-model" in meta["tags"]
    assert "eval/accuracy" in text and "AutoModelForSequenceClassification" in text

    meta, text = card(trained / "ppo" / "model")
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-generation"
    assert {"ppo", "rlhf", "lora"} <= set(meta["tags"])
    assert "Training metrics (last logged step" in text and "env/reward_mean" in text
    assert "AutoPeftModelForCausalLM" in text and "rlhfkit export --model" in text and "value_head" in text

    meta, _ = card(trained / "ppo-t5" / "model")
    assert meta["pipeline_tag"] == "text2text-generation" and meta["library_name"] == "transformers"


def test_base_model_and_license_are_inherited(tmp_path):
    assert base_model_origin("smollm2-135m") == ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")
    assert base_model_origin("minilm-l6") == ("sentence-transformers/all-MiniLM-L6-v2", "apache-2.0")
    assert base_model_origin("tiny-gpt2") == (None, None)
    folder = tmp_path / "tuned"
    folder.mkdir()
    (folder / "README.md").write_text("---\nbase_model: org/base\nlicense: mit\n---\n# x\n")
    assert base_model_origin(str(folder)) == ("org/base", "mit")  # e.g. PPO started from an SFT folder
    assert base_model_origin("org/some-model")[0] == "org/some-model"


def test_card_yaml_is_what_the_hub_library_reads(trained):
    from huggingface_hub import ModelCard

    data = ModelCard.load(str(trained / "ppo" / "model" / "README.md")).data
    assert data.library_name == "peft" and "ppo" in data.tags


def test_push_to_hub_fails_clearly_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set, so nothing can be uploaded"):
        check_push("me/model")
    with pytest.raises(UserError, match="not a Hub repo id"):
        check_push("no good/id!")
    with pytest.raises(UserError, match="give the full repo id"):
        check_push("model")


def test_push_to_hub_with_no_network_is_a_clear_error_and_keeps_the_folder(trained, monkeypatch):
    """No Hub reachable (a closed port on this machine): one line saying what failed and how to upload later."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    with pytest.raises(UserError, match=r"uploading .* to the Hub repo me/model failed .*upload it later with `hf upload"):
        push_folder(trained / "sft", "me/model")
    assert (trained / "sft" / "model.safetensors").exists()


def test_a_training_run_with_push_to_hub_offline_stops_before_training(tmp_path, monkeypatch):
    from rlhfkit.methods.sft import SFTConfig, train_sft

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set"):
        train_sft(SFTConfig(model="tiny-gpt2", data=str(tmp_path / "sft.jsonl"), output_dir=str(tmp_path / "out"),
                            push_to_hub="me/model"), progress=False)
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


# ---------------------------------------------------------------- export

NO_RLHFKIT = """
import json, sys
class NoRlhfkit:
    def find_spec(self, name, path=None, target=None):
        if name == "rlhfkit" or name.startswith("rlhfkit."):
            raise ImportError("rlhfkit is not installed here")
sys.meta_path.insert(0, NoRlhfkit())
try:
    import rlhfkit
    raise SystemExit("rlhfkit imported")
except ImportError:
    pass
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, pipeline
folder, kind, ids = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
cls = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
model = cls.from_pretrained(folder).eval()
tok = AutoTokenizer.from_pretrained(folder)
x = torch.tensor([ids])
with torch.no_grad():
    if kind == "seq2seq":
        logits = model(input_ids=x, decoder_input_ids=torch.tensor([[model.config.decoder_start_token_id]])).logits
    else:
        logits = model(input_ids=x).logits
out = {"logits": logits[0, -1].tolist(), "rlhfkit": any(m.startswith("rlhfkit") for m in sys.modules)}
if kind == "causal":
    text = pipeline("text-generation", model=folder)("Hello there", max_new_tokens=4, do_sample=False)
    out["pipeline"] = text[0]["generated_text"]
else:
    out["generated"] = tok.decode(model.generate(input_ids=x, max_new_tokens=4, do_sample=False)[0])
print("RESULT " + json.dumps(out))
"""


def without_rlhfkit(folder: Path, kind: str, ids: list[int]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run([sys.executable, "-c", NO_RLHFKIT, str(folder), kind, json.dumps(ids)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=folder.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])


def test_export_merges_lora_drops_the_value_head_and_loads_without_rlhfkit(trained, tmp_path):
    from rlhfkit.cli import main
    from rlhfkit.models import load_policy

    out = tmp_path / "plain"
    assert main(["export", "--model", str(trained / "ppo" / "model"), "--merge", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "README.md"} <= names
    assert not names & {"adapter_config.json", "adapter_model.safetensors", "value_head.safetensors"}
    meta, text = card(out)
    assert meta["library_name"] == "transformers" and "ppo" in meta["tags"] and "lora" not in meta["tags"]
    assert "LoRA adapter merged" in text and "value head left out" in text and "From the source model's card" in text

    tuned = load_policy(str(trained / "ppo" / "model"), verbose=False)  # the adapter on its base, in rlhfkit
    ids = tuned.tokenizer("Hello there")["input_ids"]
    with torch.no_grad():
        expected = tuned.model(input_ids=torch.tensor([ids])).logits[0, -1]
    got = without_rlhfkit(out, "causal", ids)
    assert not got["rlhfkit"]
    assert torch.allclose(torch.tensor(got["logits"]), expected, atol=1e-4)
    assert got["pipeline"].startswith("Hello there")
    base = load_policy("tiny-gpt2", verbose=False).model
    with torch.no_grad():
        untouched = base(input_ids=torch.tensor([ids])).logits[0, -1]
    assert not torch.allclose(untouched, expected, atol=1e-4)  # the adapter did change the model


def test_export_of_a_full_seq2seq_ppo_model(trained, tmp_path):
    from rlhfkit.models import load_policy
    from rlhfkit.models.export import export_model

    out = export_model(trained / "ppo-t5" / "model", tmp_path / "t5")
    assert not (out / "value_head.safetensors").exists()
    tuned = load_policy(str(trained / "ppo-t5" / "model"), verbose=False)
    ids = tuned.tokenizer("Hello there")["input_ids"]
    start = tuned.model.config.decoder_start_token_id
    with torch.no_grad():
        expected = tuned.model(input_ids=torch.tensor([ids]), decoder_input_ids=torch.tensor([[start]])).logits[0, -1]
    got = without_rlhfkit(out, "seq2seq", ids)
    assert torch.allclose(torch.tensor(got["logits"]), expected, atol=1e-5)


def test_export_errors(trained, tmp_path):
    from rlhfkit.models.export import export_model

    with pytest.raises(UserError, match="is a LoRA adapter; add --merge"):
        export_model(trained / "ppo" / "model", tmp_path / "x")
    with pytest.raises(UserError, match="is the model folder itself"):
        export_model(trained / "sft", trained / "sft")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a model folder"):
        export_model(tmp_path / "empty", tmp_path / "y")
