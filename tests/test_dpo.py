"""DPO: sequence log-probs against a plain per-example loop (causal and seq2seq), the adapters-off reference
against a frozen copy, the data formats and their bad rows, training end to end (causal, seq2seq, KTO,
precomputed reference), the command and its YAML config."""

import json

import pytest
import torch

from rlhfkit.cli import main
from rlhfkit.data import load_preferences, load_unpaired, pairs_to_unpaired
from rlhfkit.errors import DataError, UserError

PAIRS = [
    {"prompt": "Good morning, how are you?", "chosen": "I am fine, thanks.", "rejected": "Go away, idiot."},
    {"prompt": "Could you write a reply?", "chosen": "Sure, here is a polite answer.", "rejected": "No. Do it yourself."},
    {"prompt": "My neighbour plays loud music.", "chosen": "Talk to them calmly.", "rejected": "Smash their windows."},
    {"prompt": "I think you are wrong.", "chosen": "Sorry, let me explain.", "rejected": "You are stupid."},
]


def _plain_logps(model, prompt, completion, seq2seq):
    """One example at a time, no padding: sum of log p(completion token | everything before)."""
    if seq2seq:
        logits = model(input_ids=torch.tensor([prompt]), labels=torch.tensor([completion])).logits[0]
        return torch.log_softmax(logits.float(), -1)[torch.arange(len(completion)), torch.tensor(completion)]
    ids = torch.tensor([prompt + completion])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1]
    return torch.log_softmax(logits.float(), -1)[torch.arange(len(completion)), torch.tensor(completion)]


def _model_name(name, request):
    return str(request.getfixturevalue("tiny_llama_dir")) if name == "tiny-llama" else name


PROMPTS = [[5, 17, 33, 8, 9], [9, 3], [44, 21, 6], [9, 3]]  # the last repeats the second, as rankings' pairs do
CHOSEN = [[41, 7, 2], [14, 88, 23, 51, 3], [3], [8, 8, 30]]
REJECTED = [[60, 12], [70, 2, 19], [90, 15, 27, 4, 8, 1], [5]]


@pytest.mark.parametrize("share_prompt", [False, True], ids=["concatenated", "shared-prompt"])
@pytest.mark.parametrize("head", ["chunked", "logits"])
@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-t5"])
def test_pair_logps_match_a_plain_per_example_loop(name, head, share_prompt, monkeypatch, request):
    """Every way through `pair_logps`, each prompt read once or with each completion, the LM head's logits
    held or computed in chunks, gives the numbers of one unpadded example at a time."""
    from rlhfkit.models import load_policy
    from rlhfkit.models import sequences
    from rlhfkit.models.sequences import pair_logps

    policy = load_policy(_model_name(name, request), verbose=False)
    model = policy.model.eval()
    if head == "logits":
        monkeypatch.setattr(sequences, "plain_head", lambda model, inputs: None)
    else:
        assert sequences.plain_head(model, {"input_ids": torch.tensor([[5, 6]])} if not policy.seq2seq else
                                    {"input_ids": torch.tensor([[5, 6]]), "decoder_input_ids": torch.tensor([[0]])})
    with torch.no_grad():
        c, r = pair_logps(model, PROMPTS, CHOSEN, REJECTED, policy.tokenizer.pad_token_id, share_prompt=share_prompt)
        for out, completions in ((c, CHOSEN), (r, REJECTED)):
            assert out.tokens.tolist() == [len(x) for x in completions]
            for i, (p, x) in enumerate(zip(PROMPTS, completions)):
                plain = _plain_logps(model, p, x, policy.seq2seq)
                torch.testing.assert_close(out.per_token[i, :len(x)], plain, rtol=1e-5, atol=1e-5)
                assert out.sums[i].item() == pytest.approx(plain.sum().item(), abs=1e-4)
                assert (out.per_token[i, len(x):] == 0).all()
                logits = (model(input_ids=torch.tensor([p]), labels=torch.tensor([x])).logits[0] if policy.seq2seq
                          else model(input_ids=torch.tensor([p + x])).logits[0, len(p) - 1:-1])
                assert out.logit_sums[i].item() == pytest.approx(logits.mean(-1).sum().item(), abs=1e-4)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-t5"])
def test_a_shared_prompt_pass_gives_the_concatenated_pass_gradients(name, request):
    """The gradient flows back through the copied KV cache (encoder output) into the one prompt pass:
    every parameter's gradient equals the concatenated pass's, LoRA or not."""
    from rlhfkit.models import load_policy
    from rlhfkit.models.loading import add_lora
    from rlhfkit.models.sequences import pair_logps

    policy = load_policy(_model_name(name, request), verbose=False)
    grads = {}
    for lora in (False, True):
        model = policy.model if not lora else add_lora(policy.model, {"r": 4, "alpha": 8}, policy.seq2seq)
        model.eval()
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        for share in (False, True):
            model.zero_grad()
            c, r = pair_logps(model, PROMPTS, CHOSEN, REJECTED, policy.tokenizer.pad_token_id, share_prompt=share)
            ((c.sums - 0.5 * r.sums) * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum().backward()
            grads[lora, share] = {n: p.grad.clone() for n, p in params if p.grad is not None}
        assert grads[lora, True].keys() == grads[lora, False].keys() and grads[lora, False]
        for n, g in grads[lora, False].items():
            torch.testing.assert_close(grads[lora, True][n], g, rtol=1e-4, atol=1e-5 * g.abs().max().item(), msg=n)  # fp32 rounding


def test_adapters_off_reference_equals_a_frozen_copy_of_the_base():
    from rlhfkit.models import load_policy
    from rlhfkit.models.loading import add_lora
    from rlhfkit.models.reference import Reference
    from rlhfkit.models.sequences import completion_logps

    base = load_policy("tiny-gpt2", verbose=False).model.eval()
    copy = Reference.copy_of(base)
    peft = add_lora(base, {"r": 4}, seq2seq=False)
    with torch.no_grad():  # a trained-looking adapter: B away from its zero init
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    prompts, completions = [[5, 17, 33], [9, 3, 4, 2]], [[41, 7], [14, 88, 23]]
    off = Reference.adapters_off(peft)
    assert off.kind == "adapters_off" and not off.separate  # no second copy of the weights
    with torch.no_grad():
        with off.active():
            ref = completion_logps(off.network, prompts, completions, 0).sums
        frozen = completion_logps(copy.network, prompts, completions, 0).sums
        tuned = completion_logps(peft, prompts, completions, 0).sums
    torch.testing.assert_close(ref, frozen, rtol=1e-6, atol=1e-6)
    assert (tuned - frozen).abs().max() > 1e-3  # the adapter is really on outside `active()`
    assert all(p.requires_grad for n, p in peft.named_parameters() if "lora_" in n)


# ---------------------------------------------------------------- data


def test_conversational_pairs_with_an_implicit_prompt(write_jsonl):
    user = {"role": "user", "content": "What colour is the sky?"}
    path = write_jsonl([
        {"chosen": [user, {"role": "assistant", "content": "Blue."}],
         "rejected": [user, {"role": "assistant", "content": "Green, obviously, you fool."}]},
        {"prompt": [user], "chosen": [{"role": "assistant", "content": "Blue."}],
         "rejected": [{"role": "assistant", "content": "Purple."}]},
    ])
    pairs = load_preferences(path)
    assert pairs[0].prompt == [user] and pairs[0].chosen == "Blue." and pairs[0].row == 1
    assert pairs[1].prompt == [user] and pairs[1].rejected == "Purple."


def test_hh_rlhf_style_text_prompt_is_the_common_prefix(write_jsonl):
    path = write_jsonl([{"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello, how can I help?",
                         "rejected": "\n\nHuman: Hi there\n\nAssistant: What do you want?"}])
    (pair,) = load_preferences(path)
    assert pair.prompt == "\n\nHuman: Hi there\n\nAssistant:"
    assert pair.chosen == " Hello, how can I help?" and pair.rejected == " What do you want?"


def test_rankings_expand_to_pairs_without_ties_and_convert_to_kto(write_jsonl):
    path = write_jsonl([{"prompt": "p", "completions": ["a", "b", "c"], "ranks": [2, 1, 2]}])
    pairs = load_preferences(path)
    assert [(p.chosen, p.rejected) for p in pairs] == [("b", "a"), ("b", "c")]  # a and c tie: no pair
    kto = pairs_to_unpaired(pairs)
    assert [(e.completion, e.label) for e in kto] == [("b", True), ("a", False), ("c", False)]  # b kept once
    assert load_unpaired(path) == kto


@pytest.mark.parametrize("rows, match", [
    ([{"prompt": "p", "chosen": "same", "rejected": "same "}], "row 1.*identical"),
    ([{"prompt": "p", "chosen": "ok", "rejected": " "}], "row 1.*rejected.*empty"),
    ([{"prompt": "p", "completions": ["x", "x"], "ranks": [1, 2]}], "row 1.*same completion"),
    ([{"prompt": "p", "completion": "c", "label": "maybe"}], "row 1.*label"),
])
def test_bad_rows_name_the_row(write_jsonl, rows, match):
    path = write_jsonl(rows)
    with pytest.raises(DataError, match=match):
        (load_unpaired if "label" in rows[0] else load_preferences)(path)


def test_kto_with_one_class_is_an_error(write_jsonl):
    from rlhfkit.methods.dpo import DPOConfig, load_training_data

    path = write_jsonl([{"prompt": "p", "completion": "c", "label": True},
                        {"prompt": "q", "completion": "d", "label": True}])
    with pytest.raises(UserError, match="all 2 KTO examples are desirable.*both classes"):
        load_training_data(DPOConfig(data=str(path), loss_type=["kto"]))


def test_long_pairs_are_counted_reported_and_truncated_skipped_or_stopped(capsys):
    from rlhfkit.data import Preference
    from rlhfkit.methods.dpo import encode_pairs
    from rlhfkit.models import load_tokenizer

    tok = load_tokenizer("tiny-gpt2")
    pairs = [Preference("short", "yes", "no", 1), Preference("a much longer prompt " * 6, "a long answer " * 5,
                                                              "another long answer " * 4, 2)]
    cut = encode_pairs(tok, pairs, False, 24, "truncate")
    assert "1 of 2 pairs are longer than --max-length 24 tokens (rows 2): truncated" in capsys.readouterr().out
    assert len(cut[1].prompt) + max(len(cut[1].chosen), len(cut[1].rejected)) <= 24
    assert cut[1].chosen[:3] != [] and cut[1].chosen != cut[1].rejected
    kept = encode_pairs(tok, pairs, False, 24, "skip")
    assert [x.row for x in kept] == [1] and "left out" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"rows 2\); raise --max-length"):
        encode_pairs(tok, pairs, False, 24, "error")


def test_kto_mismatched_pairs_rotate_within_batches():
    from rlhfkit.methods.dpo import mismatched

    assert mismatched(5, 2) == [1, 0, 3, 2, 4]
    assert mismatched(4, 4) == [3, 0, 1, 2]


# ---------------------------------------------------------------- training


def _train(tmp_path, write_jsonl, rows, **fields):
    from rlhfkit.methods.dpo import DPOConfig, train_dpo

    path = write_jsonl(rows)
    fields = {"batch_size": 2, **fields}
    config = DPOConfig(data=str(path), output_dir=str(tmp_path / "out"), log_every=1, **fields)
    return train_dpo(config, progress=False)


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-t5"])
def test_dpo_with_lora_learns_the_preferences_and_saves_an_adapter(tmp_path, write_jsonl, model):
    from rlhfkit.models import load_policy

    result = _train(tmp_path, write_jsonl, PAIRS, model=model, lora=True, learning_rate=3e-3, epochs=6)
    assert result["reference"] == "adapters_off"
    epochs = result["epochs"]
    assert epochs[-1]["train/epoch_loss"] < epochs[0]["train/epoch_loss"] - 0.02
    assert epochs[-1]["train/epoch_rewards/margins"] > epochs[0]["train/epoch_rewards/margins"]
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected", "logits/chosen", "logits/rejected"):
        assert f"train/{key}" in rows[0], key
    reloaded = load_policy(str(tmp_path / "out"), verbose=False)
    assert reloaded.seq2seq == (model == "tiny-t5")
    assert (tmp_path / "out" / "README.md").exists()


def test_precomputed_reference_gives_the_same_training(tmp_path, write_jsonl):
    fields = dict(model="tiny-gpt2", learning_rate=1e-3, epochs=2, loss_type=["sigmoid", "sft"],
                  loss_weights=[1.0, 0.2])
    live = _train(tmp_path / "a", write_jsonl, PAIRS, **fields)
    pre = _train(tmp_path / "b", write_jsonl, PAIRS, precompute_ref=True, **fields)
    assert live["reference"] == "copy" and pre["reference"] == "copy, precomputed"
    assert pre["steps"] == pytest.approx(live["steps"], rel=1e-5, abs=1e-6)


def test_kto_trains_on_pairs_converted_to_unpaired_examples(tmp_path, write_jsonl):
    result = _train(tmp_path, write_jsonl, PAIRS, model="tiny-gpt2", lora=True, learning_rate=3e-3, epochs=4,
                    loss_type=["kto"], batch_size=4, undesirable_weight=1.5)
    epochs = result["epochs"]
    assert epochs[-1]["train/epoch_loss"] < epochs[0]["train/epoch_loss"]
    assert "train/epoch_kl" in epochs[0] and "train/epoch_rewards/margins" in epochs[0]


def test_reference_free_simpo_builds_no_reference(tmp_path, write_jsonl):
    result = _train(tmp_path, write_jsonl, PAIRS, model="tiny-gpt2", loss_type=["simpo"], beta=2.0,
                    learning_rate=1e-3, epochs=2)
    assert result["reference"] == "none"


def test_cli_with_a_yaml_config_and_its_errors(tmp_path, write_jsonl, capsys):
    path = write_jsonl(PAIRS)
    yaml_path = tmp_path / "dpo.yaml"
    yaml_path.write_text(f"model: tiny-gpt2\ndata: {path}\nloss_type: ipo\nbeta: 0.5\nepochs: 1\nbatch_size: 4\n"
                         f"output_dir: {tmp_path / 'out'}\n")
    assert main(["dpo", "--config", str(yaml_path), "--lora", "--eval-fraction", "0.25"]) == 0
    assert "held-out loss" in capsys.readouterr().out
    saved = (tmp_path / "out" / "config.yaml").read_text()
    assert "- ipo" in saved and "lora: true" in saved
    assert main(["dpo", "--config", str(yaml_path), "--loss-type", "kto", "sigmoid"]) == 2
    assert "does not combine" in capsys.readouterr().err
    assert main(["dpo", "--config", str(yaml_path), "--loss-type", "dop"]) == 2
    assert "choose from sigmoid" in capsys.readouterr().err


def test_gradient_accumulation_gives_the_same_training_with_a_token_mean_term(tmp_path, write_jsonl):
    """sigmoid + sft: the sft term is a token mean over the whole batch, so micro-batches must scale by the
    batch's tokens, not their own; the same run in one piece and in two micro-batches."""
    fields = dict(model="tiny-gpt2", lora=True, learning_rate=3e-3, epochs=2, batch_size=4,
                  loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5])
    whole = _train(tmp_path / "a", write_jsonl, PAIRS, **fields)
    split = _train(tmp_path / "b", write_jsonl, PAIRS, gradient_accumulation_steps=2, **fields)
    assert split["steps"] == pytest.approx(whole["steps"], rel=1e-5, abs=1e-6)
    assert whole["epochs"][0]["train/epoch_nll_loss"] == pytest.approx(split["epochs"][0]["train/epoch_nll_loss"],
                                                                       rel=1e-5)


def test_gradient_checkpointing_changes_memory_not_the_maths(tmp_path, write_jsonl):
    fields = dict(model="tiny-gpt2", lora=True, learning_rate=3e-3, epochs=1, batch_size=2)
    plain = _train(tmp_path / "a", write_jsonl, PAIRS, **fields)
    ckpt = _train(tmp_path / "b", write_jsonl, PAIRS, gradient_checkpointing=True, **fields)
    assert ckpt["steps"] == pytest.approx(plain["steps"], rel=1e-5, abs=1e-6)


def test_kto_with_a_precomputed_reference_gives_the_same_training(tmp_path, write_jsonl):
    fields = dict(model="tiny-gpt2", learning_rate=1e-3, epochs=2, loss_type=["kto"], batch_size=4)
    live = _train(tmp_path / "a", write_jsonl, PAIRS, **fields)
    pre = _train(tmp_path / "b", write_jsonl, PAIRS, precompute_ref=True, **fields)
    assert pre["reference"] == "copy, precomputed"
    assert pre["steps"] == pytest.approx(live["steps"], rel=1e-5, abs=1e-6)


def test_kto_batches_with_one_class_still_log_every_metric(tmp_path, write_jsonl):
    rows = [{"prompt": f"prompt {i}", "completion": f"reply number {i}", "label": i < 2} for i in range(4)]
    result = _train(tmp_path, write_jsonl, rows, model="tiny-gpt2", loss_type=["kto"], batch_size=1,
                    learning_rate=1e-3)
    assert {"train/epoch_rewards/chosen", "train/epoch_rewards/rejected"} <= set(result["epochs"][0])
