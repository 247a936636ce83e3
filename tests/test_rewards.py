"""Reward sources: each orders clear examples, the spec grammar, classifier label columns, batching."""

import math
import sys

import pytest

from rlhfkit.errors import UserError
from rlhfkit.rewards import (ClassifierReward, FunctionReward, ProfanityReward, RewardSource, ToxicityReward,
                             VaderReward, WeightedSum, get_reward)

NICE = "Thank you so much, that is a lovely and kind idea. Have a wonderful day!"
NASTY = "Shut up, you stupid fucking idiot. You are a worthless piece of shit."
PROMPTS = ["Reply to my neighbour.", "Reply to my neighbour."]


def test_profanity_vader_and_toxicity_order_clear_examples():
    for spec in ("profanity", "profanity:logit", "vader"):
        nice, nasty = get_reward(spec)(PROMPTS, [NICE, NASTY])
        assert nice > nasty, spec
    nice, nasty = get_reward("profanity")(PROMPTS, [NICE, NASTY])
    assert 0.9 < nice <= 1 and 0 <= nasty < 0.1
    tox = get_reward("toxicity")
    assert tox.higher_is_better is False and tox.name == "toxicity"
    low, high = tox(PROMPTS, [NICE, NASTY])
    assert low < high and low == pytest.approx(1 - nice)
    logit = get_reward("profanity:logit")(PROMPTS[:1], [NICE])[0]
    assert logit == pytest.approx(math.log(nice / (1 - nice)), rel=1e-4)


def test_batching_and_chat_prompts():
    texts = [NICE, NASTY] * 5
    source = ProfanityReward(batch_size=3)
    chat = [[{"role": "user", "content": "hi"}]] * len(texts)
    assert source(chat, texts) == ProfanityReward(batch_size=100)(["hi"] * len(texts), texts)
    assert source([], []) == []


def test_function_reward_and_checks():
    seen = []

    def length(prompts, completions):
        seen.append(len(completions))
        return [len(c) for c in completions]

    source = get_reward(length)
    assert isinstance(source, FunctionReward) and source.name.endswith("length")
    assert source(["a", "b"], ["xx", "xxxx"]) == [2.0, 4.0]
    assert FunctionReward(length, batch_size=2)(["p"] * 5, ["x"] * 5) == [1.0] * 5 and seen[-3:] == [2, 2, 1]
    with pytest.raises(UserError, match="2 scores for 1 completions"):
        FunctionReward(lambda p, c: [1.0, 2.0])(["p"], ["c"])
    with pytest.raises(UserError, match="non-finite"):
        FunctionReward(lambda p, c: [float("nan")])(["p"], ["c"])
    with pytest.raises(UserError, match="1 prompts for 2 completions"):
        source(["p"], ["a", "b"])
    assert get_reward(source) is source


def test_function_spec_imports_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text("def shouty(prompts, completions):\n    return [c.count('!') for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    source = get_reward("my_rewards:shouty")
    assert source.name == "my_rewards:shouty" and source(["p", "p"], ["a!", "b!!!"]) == [1.0, 3.0]
    with pytest.raises(UserError, match="no attribute 'missing'"):
        get_reward("my_rewards:missing")
    with pytest.raises(UserError, match="no Python module 'no_such_module_xyz'"):
        get_reward("no_such_module_xyz.sub:f")
    sys.modules.pop("my_rewards", None)


def test_weighted_sum_spec_and_class():
    source = get_reward("0.7*profanity+0.3*vader")
    assert isinstance(source, WeightedSum) and source.name == "0.7*profanity+0.3*vader"
    prof, vader = ProfanityReward()(PROMPTS, [NICE, NASTY]), VaderReward()(PROMPTS, [NICE, NASTY])
    assert source(PROMPTS, [NICE, NASTY]) == pytest.approx([0.7 * p + 0.3 * v for p, v in zip(prof, vader)])
    neg = get_reward("profanity + -0.5*toxicity")
    assert neg(PROMPTS[:1], [NASTY])[0] == pytest.approx(prof[1] - 0.5 * (1 - prof[1]))
    mixed = WeightedSum([(2.0, "vader"), (1.0, lambda p, c: [1.0] * len(c))])
    assert mixed(PROMPTS[:1], [NICE])[0] == pytest.approx(2 * vader[0] + 1)


@pytest.mark.parametrize("spec, message", [
    ("x*profanity", "'x' in 'x\\*profanity' is not a number"),
    ("0.5*", "no source after"),
    ("profanity+", "empty term"),
    ("profanity:prob:x", "unknown option"),
    ("", "spec string"),
    (42, "spec string"),
])
def test_bad_specs_say_how_to_fix(spec, message):
    with pytest.raises(UserError, match=message):
        get_reward(spec)


# ---------------------------------------------------------------- classifiers


@pytest.fixture(scope="module")
def hate_classifier(tmp_path_factory):
    """A tiny random RoBERTa classifier with labels nothate (0) / hate (1) and a known constant bias."""
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from rlhfkit.models import load_tokenizer

    tokenizer = load_tokenizer("tiny-gpt2")
    config = RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=130, pad_token_id=tokenizer.pad_token_id, id2label={0: "nothate", 1: "hate"},
        label2id={"nothate": 0, "hate": 1},
    )
    torch.manual_seed(0)
    model = RobertaForSequenceClassification(config)
    with torch.no_grad():  # constant logits: nothate = 1.5, hate = -2.0 for every text
        model.classifier.out_proj.weight.zero_()
        model.classifier.out_proj.bias.copy_(torch.tensor([1.5, -2.0]))
    folder = tmp_path_factory.mktemp("hate") / "roberta-hate"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_classifier_label_picks_the_named_column(hate_classifier):
    texts = ["you are kind", "a much longer completion that has more words in it"]
    nothate = ClassifierReward(hate_classifier, label="nothate")
    assert nothate(PROMPTS, texts) == pytest.approx([1.5, 1.5], abs=1e-5)
    assert ClassifierReward(hate_classifier, label="hate")(PROMPTS, texts) == pytest.approx([-2.0, -2.0], abs=1e-5)
    assert ClassifierReward(hate_classifier, label="NotHate")(PROMPTS, texts)[0] == pytest.approx(1.5, abs=1e-5)
    prob = 1 / (1 + math.exp(-3.5))  # softmax over (1.5, -2.0)
    spec = get_reward(f"{hate_classifier}:nothate:prob")
    assert spec.name.endswith(":nothate:prob") and spec(PROMPTS, texts) == pytest.approx([prob] * 2, abs=1e-5)
    assert get_reward(f"{hate_classifier}:1")(PROMPTS, texts)[0] == pytest.approx(-2.0, abs=1e-5)
    assert nothate.pair_input is False and nothate.higher_is_better


def test_classifier_label_errors(hate_classifier):
    with pytest.raises(UserError, match=r"has 2 labels \['nothate', 'hate'\]; pick one"):
        get_reward(hate_classifier)
    with pytest.raises(UserError, match="no label 'toxic'"):
        ClassifierReward(hate_classifier, label="toxic")
    with pytest.raises(UserError, match="'logit' or 'prob'"):
        get_reward(f"{hate_classifier}:nothate:odds")
    with pytest.raises(UserError, match="no trained classification head"):
        get_reward("tiny-bert:LABEL_0")


def test_classifier_batching_matches_one_batch(hate_classifier):
    """Padding and length-sorting must not change scores: batches of 2 equal one batch of all."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.models import load_tokenizer

    model = AutoModelForSequenceClassification.from_pretrained(hate_classifier)
    torch.manual_seed(1)
    with torch.no_grad():
        model.classifier.out_proj.weight.normal_()  # make the score depend on the text
    tokenizer = load_tokenizer(hate_classifier)
    texts = ["hi", "you are a stupid idiot and I hate it", "thank you", "good morning, how are you today my friend?", "ok"]
    prompts = ["p"] * len(texts)
    small = ClassifierReward(model, tokenizer, label="nothate", batch_size=2)(prompts, texts)
    big = ClassifierReward(model, tokenizer, label="nothate", batch_size=64)(prompts, texts)
    alone = [ClassifierReward(model, tokenizer, label="nothate")(["p"], [t])[0] for t in texts]
    assert small == pytest.approx(big, abs=1e-5) and big == pytest.approx(alone, abs=1e-5)
    assert len(set(round(x, 4) for x in big)) > 1


def test_pair_input_feeds_prompt_and_completion(hate_classifier):
    import torch
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.models import load_tokenizer

    model = AutoModelForSequenceClassification.from_pretrained(hate_classifier)
    with torch.no_grad():
        model.classifier.out_proj.weight.normal_()
    tokenizer = load_tokenizer(hate_classifier)
    single = ClassifierReward(model, tokenizer, label=0)
    paired = ClassifierReward(model, tokenizer, label=0, pair_input=True)
    a = single(["first prompt", "another prompt entirely"], ["same", "same"])
    b = paired(["first prompt", "another prompt entirely"], ["same", "same"])
    assert a[0] == pytest.approx(a[1], abs=1e-6)  # the completion alone: the prompt does not matter
    assert b[0] != pytest.approx(b[1], abs=1e-6)  # the pair: it does
    model.config.rlhfkit_pair_input = True
    assert ClassifierReward(model, tokenizer, label=0).pair_input is True


def test_classifier_object_needs_tokenizer(hate_classifier):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(hate_classifier)
    with pytest.raises(UserError, match="needs its tokenizer"):
        ClassifierReward(model, label="hate")


def test_base_class_interface():
    class Constant(RewardSource):
        name = "constant"
        batch_size = 2

        def score(self, prompts, completions):
            return [1.0] * len(completions)

    source = Constant()
    assert get_reward(source) is source and source.to("cpu") is source
    assert source(["p"] * 3, ["c"] * 3) == [1.0, 1.0, 1.0]
    assert ToxicityReward().to("cpu").higher_is_better is False


def test_decoder_classifier_scores_without_a_kv_cache():
    """A GPT-2 reward model's config says use_cache=True; one scoring pass never reads a cache, so none is built."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.models import load_tokenizer, resolve

    tokenizer = load_tokenizer("tiny-gpt2")
    model = AutoModelForSequenceClassification.from_pretrained(resolve("tiny-gpt2"), num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    assert model.config.use_cache
    seen = []
    model.register_forward_hook(lambda m, args, kwargs, out: seen.append((kwargs.get("use_cache"), out.past_key_values)),
                                with_kwargs=True)
    texts = ["hello there", "a somewhat longer completion"]
    scores = ClassifierReward(model, tokenizer)(["p", "q"], texts)
    assert seen == [(False, None)]
    with torch.inference_mode():
        alone = [model(input_ids=torch.tensor([tokenizer(t)["input_ids"]])).logits[0, 0].item() for t in texts]
    assert seen[-1][1] is not None  # the plain call did build one
    assert scores == pytest.approx(alone, abs=1e-5)


def test_concise_reward_hand_worked():
    from rlhfkit.rewards import get_reward

    reward = get_reward("concise:4")
    # 4 words: 1; 2 words: 1 - 2/4 = 0.5; 10 words: floored at 0; nothing: 0
    assert reward([""] * 4, ["a b c d", "a b", " ".join("x" * 10), ""]) == [1.0, 0.5, 0.0, 0.0]
    assert get_reward("concise").words == 12
    with pytest.raises(UserError, match="unknown option"):
        get_reward("concise:many")
