"""Reward-model training: the pairwise loss by hand, learning a clear preference,
chance accuracy on random labels, the CLI printout, and bad data stopping early."""

import json
import random

import pytest
import torch

from rlhfkit.cli import main
from rlhfkit.errors import DataError
from rlhfkit.losses import bradley_terry_loss
from rlhfkit.reward_model import RewardConfig, split_by_prompt, train_reward_model

KIND = ["Thank you so much for your help today!", "Please be kind to each other.", "Have a wonderful day.",
        "That is great, I love it.", "Sorry, I did not mean to upset you.", "We should talk about it calmly."]
RUDE = ["You idiot, that is awful and I hate it.", "What a terrible, stupid idea.", "That is stupid and awful, you idiot.",
        "I hate it, what a terrible idea.", "You are wrong, idiot.", "Stupid, awful, terrible."]
TOPICS = ["my neighbour", "the referee", "my landlord", "the weather", "the game", "my friend", "the music", "the dog"]
WORDS = ("the quick brown fox jumps over lazy dog thank you so much for help today think are wrong about this "
         "here why please be kind each other what terrible stupid idea great love neighbour plays loud music "
         "every night referee made bad call game could write short reply landlord sure polite answer").split()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def clear_pairs(n, seed=0):
    rng = random.Random(seed)
    return [{"prompt": f"Reply to {rng.choice(TOPICS)} number {i}", "chosen": rng.choice(KIND), "rejected": rng.choice(RUDE)}
            for i in range(n)]


def test_pairwise_loss_hand_worked():
    # -log sigmoid(1) = log(1 + e^-1) = 0.3132617; -log sigmoid(0) = log 2 = 0.6931472
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0])
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx((0.3132617 + 0.6931472) / 2, abs=1e-6)
    # margin 1: -log sigmoid(0) = 0.6931472; -log sigmoid(-1) = 1.3132617
    assert bradley_terry_loss(chosen, rejected, 1.0).item() == pytest.approx((0.6931472 + 1.3132617) / 2, abs=1e-6)
    # per-pair margins, and a huge gap stays finite: -log sigmoid(-1000) = 1000
    assert bradley_terry_loss(torch.tensor([0.0]), torch.tensor([1000.0])).item() == pytest.approx(1000.0)
    per_pair = bradley_terry_loss(chosen, rejected, torch.tensor([1.0, 0.0])).item()
    assert per_pair == pytest.approx(0.6931472, abs=1e-6)


def test_tie_loss_hand_worked():
    # a draw is half a win each way: 0.5 * (softplus(-d) + softplus(d)); d = 0 -> log 2, d = +-2 ->
    # 0.5 * (log(1 + e^-2) + log(1 + e^2)) = 0.5 * (0.1269280 + 2.1269280) = 1.1269280
    from rlhfkit.objectives.preference import bradley_terry_tie_loss

    a, b = torch.tensor([0.5, 3.0, 0.0]), torch.tensor([0.5, 1.0, 2.0])
    assert bradley_terry_tie_loss(a, b).item() == pytest.approx((0.6931472 + 2 * 1.1269280) / 3, abs=1e-6)
    assert bradley_terry_tie_loss(a, b, reduction="sum").item() == pytest.approx(0.6931472 + 2 * 1.1269280, abs=1e-6)
    d = torch.tensor([1.5], requires_grad=True)
    bradley_terry_tie_loss(d, torch.zeros(1)).backward()
    assert d.grad.item() == pytest.approx(0.5 * (torch.sigmoid(torch.tensor(1.5)) - torch.sigmoid(torch.tensor(-1.5))).item())


def test_ties_come_as_tied_pairs_only_when_asked(tmp_path):
    from rlhfkit.data import load_preferences

    rows = [{"prompt": "p", "completions": ["a", "b", "c", "b "], "ranks": [1, 1, 2, 1]}]
    data = write_jsonl(tmp_path / "rankings.jsonl", rows)
    assert [(x.chosen, x.rejected, x.tie) for x in load_preferences(data)] == [
        ("a", "c", False), ("b", "c", False), ("b ", "c", False)]
    with_ties = load_preferences(data, ties=True)
    # "b" and "b " are the same text: tied with itself is no pair
    assert [(x.chosen, x.rejected) for x in with_ties if x.tie] == [("a", "b"), ("a", "b ")]
    full_tie = write_jsonl(tmp_path / "tie.jsonl", [{"prompt": "p", "completions": ["a", "b"], "ranks": [1, 1]}])
    with pytest.raises(Exception, match="full tie"):
        load_preferences(full_tie, ties=True)


def test_training_on_ties_pulls_tied_rewards_together(tmp_path):
    """Half the rankings tie a kind reply with an apology (both above a rude one); the other half rank
    the apology above the kind reply. Dropping the ties leaves only "apology > kind", which a reward
    model can push without bound; counting each tie as half a win each way makes the best gap
    ln 3 (P(apology wins) = 3/4), so the gap stays smaller on prompts it never saw. Both learn kind > rude."""
    from rlhfkit.rewards import get_reward

    sorry = ["I'm sorry, I can't help with that.", "Sorry, I would rather not say.", "I apologise, I cannot do that."]
    rows, rng = [], random.Random(0)
    for i, t in enumerate(TOPICS * 6):
        if rng.random() < 0.5:  # at random, so nothing in the prompt says which kind of row it is
            rows.append({"prompt": f"Reply to {t} {i}", "completions": [sorry[i % 3], KIND[i % 6]], "ranks": [1, 2]})
        else:
            rows.append({"prompt": f"Reply to {t} {i}", "completions": [sorry[i % 3], KIND[i % 6], RUDE[i % 6]],
                         "ranks": [1, 1, 2]})
    data = write_jsonl(tmp_path / "rankings.jsonl", rows)
    fresh = [f"Reply to {t} {100 + i}" for i, t in enumerate(TOPICS * 2)]
    gaps, rude_gaps, results = {}, {}, {}
    for ties in ("drop", "half"):
        config = RewardConfig(model="tiny-bert", data=data, output_dir=str(tmp_path / ties), epochs=10,
                              learning_rate=3e-3, batch_size=8, eval_fraction=0.25, ties=ties)
        results[ties] = train_reward_model(config, progress=False)["eval"][-1]
        reward = get_reward(str(tmp_path / ties))
        r_sorry = reward(fresh, [sorry[i % 3] for i in range(len(fresh))])
        r_kind = reward(fresh, [KIND[i % 6] for i in range(len(fresh))])
        r_rude = reward(fresh, [RUDE[i % 6] for i in range(len(fresh))])
        gaps[ties] = sum(a - b for a, b in zip(r_sorry, r_kind)) / len(fresh)
        rude_gaps[ties] = sum(a - b for a, b in zip(r_kind, r_rude)) / len(fresh)
    assert "tie_gap" in results["half"] and "tie_gap" not in results["drop"]
    assert results["half"]["pairs"] == results["drop"]["pairs"]  # held-out accuracy: decisive pairs only
    assert gaps["drop"] > 0 and gaps["half"] < 0.6 * gaps["drop"]
    assert rude_gaps["half"] > 0 and rude_gaps["drop"] > 0


def test_split_holds_out_whole_prompts():
    from rlhfkit.data import Preference

    pairs = [Preference(f"p{i % 10}", f"a{i}", f"b{i}") for i in range(50)]
    train, held = split_by_prompt(pairs, 0.2, seed=0)
    assert len(train) + len(held) == 50 and len(held) == 10
    assert not {p.prompt for p in train} & {p.prompt for p in held}


def test_grouped_batches_keep_each_prompt_whole_and_cover_every_pair_once():
    from rlhfkit.data import Preference
    from rlhfkit.reward_model import training_batches

    sizes = {"a": 6, "b": 1, "c": 3, "d": 10, "e": 2}  # 10 > batch size: that prompt is a batch of its own
    pairs = [Preference(p, f"x{i}", f"y{i}") for p, n in sizes.items() for i in range(n)]
    for seed in range(5):
        batches = training_batches(pairs, 8, random.Random(seed), group_by_prompt=True)
        assert sorted(i for b in batches for i in b) == list(range(len(pairs)))
        for b in batches:
            prompts = {pairs[i].prompt for i in b}
            assert sum(sizes[p] for p in prompts) == len(b)  # every prompt in a batch is there whole
            assert len(b) <= 8 or len(prompts) == 1
    flat = training_batches(pairs, 8, random.Random(0), group_by_prompt=False)
    assert [len(b) for b in flat] == [8, 8, 6] and sorted(i for b in flat for i in b) == list(range(len(pairs)))


def test_pair_rewards_score_each_distinct_completion_once_and_match_pair_by_pair():
    from rlhfkit.data import Preference, rankings_to_pairs
    from rlhfkit.reward_model import encode_pairs, load_reward_backbone, pair_rewards

    model, tokenizer = load_reward_backbone("tiny-bert")
    model.eval()
    completions = ["Have a wonderful day.", "What a terrible, stupid idea.", "Okay.", "I hate it."]
    pairs = [Preference("Reply to the dog", c, r) for c, r in rankings_to_pairs(completions, [2, 4, 1, 3])]
    pairs.append(Preference("Reply to the game", "Okay.", "I hate it."))  # same completions, other prompt
    encoded = encode_pairs(tokenizer, pairs, 64)
    rows = []
    model.register_forward_hook(lambda m, a, k, out: rows.append(k["input_ids"].shape[0]), with_kwargs=True)
    rc, rr = pair_rewards(model, encoded, tokenizer.pad_token_id)
    assert rows == [4 + 2]  # 6 pairs of one ranking read its 4 completions; the other prompt adds 2
    for i, (c, r) in enumerate(encoded):
        one_c, one_r = pair_rewards(model, [(c, r)], tokenizer.pad_token_id)
        assert rc[i].item() == pytest.approx(one_c.item(), abs=1e-5)
        assert rr[i].item() == pytest.approx(one_r.item(), abs=1e-5)


def test_learns_clear_preference_and_saves_a_loadable_reward(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhfkit.rewards import get_reward

    data = write_jsonl(tmp_path / "pairs.jsonl", clear_pairs(120))
    config = RewardConfig(backbone="tiny-bert", data=data, out=str(tmp_path / "rm"), epochs=3, lr=1e-3, batch_size=8,
                          eval_fraction=0.25)
    history = train_reward_model(config, progress=False)
    assert history["eval"][-1]["accuracy"] >= 0.9
    assert history["eval"][-1]["pairs"] == 30
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert model.config.num_labels == 1 and model.config.rlhfkit_pair_input is True
    assert (tmp_path / "rm" / "config.yaml").exists()
    lines = [json.loads(x) for x in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines if "eval/accuracy" in x] == [0, 1, 2, 3]
    reward = get_reward(str(tmp_path / "rm"))
    assert reward.pair_input
    good, bad = reward(["Reply to the dog", "Reply to the dog"], ["Have a wonderful day.", "What a terrible, stupid idea."])
    assert good > bad
    # Plain transformers usage gives the same number: the model reads tokenizer(prompt, completion).
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "rm")
    with torch.no_grad():
        plain = model(**tokenizer("Reply to the dog", "Have a wonderful day.", return_tensors="pt")).logits[0, 0].item()
    assert plain == pytest.approx(good, abs=1e-4)


def test_random_labels_give_chance_accuracy(tmp_path):
    rng = random.Random(1)

    def text():
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10)))

    rows = []
    for i in range(300):
        a, b = text(), text()
        if a != b:
            rows.append({"prompt": f"prompt {i}", "chosen": a, "rejected": b})
    data = write_jsonl(tmp_path / "random.jsonl", rows)
    config = RewardConfig(backbone="tiny-bert", data=data, out=str(tmp_path / "rm"), epochs=8, lr=3e-3, batch_size=16,
                          eval_fraction=0.5)
    history = train_reward_model(config, progress=False)
    held = history["eval"][-1]
    assert held["pairs"] >= 140
    assert 0.38 <= held["accuracy"] <= 0.62  # about 50%: no signal to learn
    # It did learn: it memorised the training pairs (about 80% by the last epoch), which says nothing of new pairs.
    assert history["train"][-1]["accuracy"] > 0.65


def test_cli_prints_accuracy_every_epoch_and_counts_truncation(tmp_path, capsys):
    rows = [dict(r, chosen=r["chosen"] + " thank you" * (40 if i % 10 == 0 else 0)) for i, r in enumerate(clear_pairs(40))]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    code = main(["reward", "--backbone", "tiny-bert", "--data", data, "--out", str(tmp_path / "rm"), "--epochs", "2",
                 "--max-length", "48", "--lr", "1e-3", "--batch-size", "8"])
    out = capsys.readouterr().out
    assert code == 0
    assert "epoch 1/2: train loss" in out and "epoch 2/2: train loss" in out
    assert out.count("held-out loss") >= 3 and "held-out pairwise accuracy" in out
    assert "4 of" in out and "truncated to 48 tokens" in out


def test_rankings_file_is_expanded_to_pairs(tmp_path):
    rows = [{"prompt": f"Reply to {t}", "completions": [KIND[i % 6], RUDE[i % 6], "Okay."], "ranks": [1, 3, 2]}
            for i, t in enumerate(TOPICS * 2)]
    data = write_jsonl(tmp_path / "rankings.jsonl", rows)
    config = RewardConfig(backbone="tiny-bert", data=data, out=str(tmp_path / "rm"), epochs=1, eval_fraction=0.25)
    history = train_reward_model(config, progress=False)
    assert history["eval"][-1]["pairs"] == 4 * 3  # 4 held-out prompts x 3 pairs each


@pytest.mark.parametrize("row, column", [
    ({"prompt": "p", "chosen": "a"}, "rejected"),
    ({"prompt": "p", "chosen": "  ", "rejected": "b"}, "chosen"),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "rejected"),
])
def test_bad_data_stops_naming_the_row_before_training(tmp_path, monkeypatch, capsys, row, column):
    import rlhfkit.reward_model as rm

    def no_model(*a, **k):
        raise AssertionError("the model must not be loaded before the data is validated")

    monkeypatch.setattr(rm, "load_reward_backbone", no_model)
    data = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "good", "rejected": "bad"}, row])
    with pytest.raises(DataError) as info:
        train_reward_model(RewardConfig(backbone="tiny-bert", data=data, out=str(tmp_path / "rm")), progress=False)
    assert info.value.row == 2 and info.value.column == column
    assert main(["reward", "--backbone", "tiny-bert", "--data", data, "--out", str(tmp_path / "rm")]) == 2
    assert "row 2" in capsys.readouterr().err
    assert not (tmp_path / "rm").exists()


@pytest.mark.slow
def test_minilm_reward_model_learns_profanity_labels(tmp_path):
    """The embedded pretrained encoder learns a scripted profanity labeler's pairs on unseen prompts."""
    from rlhfkit.rewards import ProfanityReward

    rng = random.Random(0)
    polite = KIND + ["Good morning, how are you?", "Could you write a short reply?", "Sure, here is a polite answer."]
    harsh = RUDE + ["Shut up, you stupid moron.", "This is crap, you dumb jerk.", "Go to hell, loser."]
    profanity = ProfanityReward()
    rows = []
    for i in range(160):
        a, b = rng.choice(polite), rng.choice(harsh)
        if rng.random() < 0.5:
            a, b = b, a
        sa, sb = profanity(["", ""], [a, b])
        if sa != sb:
            rows.append({"prompt": f"Reply to {rng.choice(TOPICS)} ({i})", "chosen": a if sa > sb else b,
                         "rejected": b if sa > sb else a})
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    config = RewardConfig(backbone="minilm-l6", data=data, out=str(tmp_path / "rm"), epochs=2, batch_size=16, lr=5e-5,
                          eval_fraction=0.2)
    history = train_reward_model(config, progress=False)
    assert history["eval"][-1]["accuracy"] >= 0.85
