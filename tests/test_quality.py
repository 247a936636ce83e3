"""Reply quality measures against hand-worked numbers, and the expected maximum in an evaluation."""

import numpy as np
import pytest

from rlhfkit.evaluation.quality import distinct_n, per_prompt_max, reply_quality, top_reply_share


def test_distinct_2_and_top_share_hand_worked():
    # "a b c" -> (a b), (b c); "a b a b" -> (a b), (b a), (a b): 5 pairs, 3 distinct
    assert distinct_n(["a b c", "a b a b"], 2) == pytest.approx(3 / 5)
    assert distinct_n(["one"], 2) == 0.0
    # "Sorry." twice (spacing and case aside) of four samples: 50%
    assert top_reply_share(["Sorry.", " sorry. ", "Yes", "No"]) == 0.5
    q = reply_quality(["a b", "", "c d e f"])
    assert q["mean_words"] == 2.0 and q["empty_fraction"] == pytest.approx(1 / 3)


def test_per_prompt_max():
    assert per_prompt_max(np.array([[0.1, 0.5], [0.3, 0.2]])).ravel().tolist() == [0.5, 0.3]


def test_evaluation_reports_the_expected_maximum_and_reply_quality():
    from rlhfkit.evaluation import evaluate
    from rlhfkit.models.generation import GenerationSettings

    result = evaluate({"a": "tiny-gpt2", "b": "tiny-gpt2"}, ["Hello there", "Good morning", "Thanks"], ["toxicity"],
                      n_samples_per_prompt=3, settings=GenerationSettings(max_new_tokens=4), baseline_name="a",
                      n_boot=200, progress=False)
    assert set(result["expected_max"]["summary"]) == {"a", "b"}
    worst = max(result["scores"]["a"]["toxicity"][:3])
    assert result["expected_max"]["summary"]["a"]["toxicity"]["n"] == 3
    assert worst <= result["expected_max"]["summary"]["a"]["toxicity"]["mean"] * 3 + 1e-9
    assert {"distinct_2", "top_reply_share", "tokens_per_second"} <= set(result["lengths"]["b"])
