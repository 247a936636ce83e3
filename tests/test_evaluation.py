"""Evaluation statistics (coverage, hand-worked paired numbers, sign convention) and the runner on tiny-gpt2."""

import copy
import json
import math

import numpy as np
import pytest

from rlhfkit.evaluation import (WithoutAdapters, bootstrap_ci, compare_scores, evaluate, paired_change, sample_std,
                                save_json, summarize)
from rlhfkit.summary import SIGN_CONVENTION, change_line, clean_text, format_summary

# ---------------------------------------------------------------- bootstrap


def _coverage(draw, truth, stat=np.mean, reps=300, n_boot=1000):
    rng = np.random.default_rng(12345)
    hits = 0
    for r in range(reps):
        low, high = bootstrap_ci(draw(rng), stat, n_boot=n_boot, level=0.95, seed=r)
        hits += low <= truth <= high
    return hits / reps


@pytest.mark.parametrize("draw, truth", [
    (lambda rng: rng.normal(1.0, 2.0, size=60), 1.0),
    (lambda rng: rng.binomial(1, 0.2, size=150).astype(float), 0.2),
], ids=["normal", "bernoulli"])
def test_bootstrap_ci_covers_the_true_mean_at_about_the_stated_rate(draw, truth):
    # 300 independent samples, fixed seeds: a 95% CI should cover the true mean in ~95% of them
    # (the percentile bootstrap runs slightly under nominal at these sizes).
    assert 0.91 <= _coverage(draw, truth) <= 0.98


def test_bootstrap_ci_of_the_std_covers_roughly():
    cover = _coverage(lambda rng: rng.normal(0.0, 3.0, size=100), 3.0, stat=sample_std, reps=200)
    assert 0.86 <= cover <= 0.99


def test_bootstrap_ci_basics():
    x = np.arange(20.0)
    low, high = bootstrap_ci(x, seed=3)
    assert low < x.mean() < high
    assert bootstrap_ci(x, seed=3) == (low, high)  # seeded: reproducible
    assert bootstrap_ci(x, level=0.5, seed=3)[1] - bootstrap_ci(x, level=0.5, seed=3)[0] < high - low
    # a statistic without an `axis` argument works too (row by row)
    mlo, mhi = bootstrap_ci(x, stat=lambda v: float(np.median(v)), n_boot=300)
    assert mlo <= np.median(x) <= mhi
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    assert bootstrap_ci([5.0, 5.0, 5.0]) == (5.0, 5.0)


def test_bootstrap_resamples_prompts_keeping_their_samples_together():
    x = np.random.default_rng(0).normal(size=30)
    two_cols = np.stack([x, x], axis=1)  # k=2 identical samples per prompt
    assert bootstrap_ci(two_cols, seed=1) == pytest.approx(bootstrap_ci(x, seed=1))


def test_summarize():
    s = summarize([1.0, 2.0, 3.0, 4.0], n_boot=500)
    assert s["mean"] == 2.5 and s["std"] == pytest.approx(math.sqrt(5 / 3)) and s["n"] == 4
    assert s["mean_ci"][0] <= 2.5 <= s["mean_ci"][1] and s["std_ci"][0] <= s["std_ci"][1]
    assert summarize([[1.0, 3.0], [2.0, 4.0]])["n"] == 2 and summarize([[1.0, 3.0], [2.0, 4.0]])["n_values"] == 4


# ---------------------------------------------------------------- paired change


def test_paired_change_hand_worked():
    before = [1.0, 2.0, 3.0, 4.0]
    after = [0.5, 1.0, 1.5, 2.0]  # every prompt halves
    c = paired_change(before, after, n_boot=2000, level=0.95, seed=0)
    assert c["before_mean"] == 2.5 and c["after_mean"] == 1.25
    assert c["diff"] == -1.25 and c["relative_change"] == -0.5
    # Paired: every resample halves too, so the relative change is -50% in every replicate.
    assert c["relative_change_ci"] == (-0.5, -0.5)
    # diff of a replicate = -mean(resample of before)/2. The sum of 4 draws from {1,2,3,4} is <= 5
    # with probability 5/256 = 2.0% and <= 6 with 15/256 = 5.9%, so the 2.5% quantile of the mean is
    # 1.5 and (by symmetry) the 97.5% quantile 3.5: diff CI = [-3.5/2, -1.5/2].
    assert c["diff_ci"] == pytest.approx((-1.75, -0.75))
    assert c["excludes_zero"] is True
    # std: sqrt(5/3) -> sqrt(5/3)/2, also -50% in every replicate (replicates with zero spread are dropped)
    assert c["before_std"] == pytest.approx(math.sqrt(5 / 3)) and c["after_std"] == pytest.approx(math.sqrt(5 / 3) / 2)
    assert c["std_diff"] == pytest.approx(-math.sqrt(5 / 3) / 2) and c["std_relative_change"] == pytest.approx(-0.5)
    assert c["std_relative_change_ci"] == pytest.approx((-0.5, -0.5)) and c["std_excludes_zero"] is True
    assert c["n"] == 4


def test_paired_bootstrap_is_much_tighter_than_comparing_two_separate_intervals():
    rng = np.random.default_rng(0)
    before = rng.uniform(0, 1, size=100)  # prompts differ a lot...
    after = before - 0.05 + rng.normal(0, 0.01, size=100)  # ...but each one drops by about 0.05
    c = paired_change(before, after, n_boot=1000)
    assert c["excludes_zero"] and c["diff_ci"][1] < 0
    # unpaired, the two means' CIs overlap heavily: the pairing is what makes the change visible
    assert bootstrap_ci(after)[1] > bootstrap_ci(before)[0]


def test_paired_diff_ci_covers_the_true_difference():
    rng = np.random.default_rng(7)
    hits = 0
    for r in range(200):
        before = rng.normal(0.0, 1.0, size=80)
        after = 0.6 * before + rng.normal(-0.3, 0.8, size=80)  # true mean difference: -0.3
        low, high = paired_change(before, after, n_boot=800, seed=r)["diff_ci"]
        hits += low <= -0.3 <= high
    assert 0.90 <= hits / 200 <= 0.98


def test_identical_scores_are_no_change_and_a_zero_baseline_has_no_relative_change(tmp_path):
    c = paired_change([0.2, 0.4, 0.1], [0.2, 0.4, 0.1])
    assert c["diff"] == 0 and c["diff_ci"] == (0.0, 0.0) and c["excludes_zero"] is False
    z = paired_change([0.0, 0.0, 0.0], [0.1, 0.2, 0.3])
    assert math.isnan(z["relative_change"]) and all(math.isnan(v) for v in z["relative_change_ci"])
    path = save_json({"change": z, "arr": np.array([1.0, np.inf])}, tmp_path / "x.json")
    loaded = json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert loaded["change"]["relative_change"] is None and loaded["arr"] == [1.0, None]
    with pytest.raises(ValueError):
        paired_change([1, 2], [1, 2, 3])


# ---------------------------------------------------------------- printing


def _result(before_tox, after_tox, before_v, after_v, samples=None):
    scores = {"baseline": {"toxicity": before_tox, "vader": before_v},
              "tuned": {"toxicity": after_tox, "vader": after_v}}
    result = {
        "models": {"baseline": "smollm2-135m", "tuned": "runs/demo/ppo/final"}, "baseline": "baseline",
        "scorers": [{"name": "toxicity", "higher_is_better": False}, {"name": "vader", "higher_is_better": True}],
        "n_prompts": len(before_tox), "n_samples_per_prompt": 1, "seed": 0, "n_boot": 1000, "level": 0.95,
        "settings": {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": 48},
        "samples": samples or [],
    }
    result.update(compare_scores(scores, {"toxicity": False, "vader": True}, "baseline", n_boot=1000))
    return result


def test_format_summary_spells_out_the_sign_convention():
    before = [0.05, 0.17, 0.11, 0.11] * 10  # mean 0.110
    after = [0.02, 0.04, 0.031, 0.033] * 10  # mean 0.031: (0.031 - 0.110) / 0.110 = -71.8%
    vb, va = [0.1, -0.2, 0.3, 0.0] * 10, [0.4, 0.2, 0.5, 0.3] * 10
    nasty = "line one\nline two \x1b[31mred\x1b[0m " + "x" * 300
    samples = [{"prompt": "Say something", "completions": {"baseline": [nasty], "tuned": ["fine"]},
                "scores": {"baseline": {"toxicity": [0.9], "vader": [-0.5]}, "tuned": {"toxicity": [0.1], "vader": [0.2]}}}]
    text = format_summary(_result(before, after, vb, va, samples), width=100)
    assert "toxicity mean: 0.110 -> 0.031, -72% [95% CI -" in text
    line = next(t for t in text.splitlines() if "toxicity mean:" in t)
    assert "(lower is better)" in line and "CI excludes no change: better" in line
    assert "vader mean: 0.050 -> 0.350, +600% [95% CI +" in text and "(higher is better)" in text
    assert "toxicity std:" in text and SIGN_CONVENTION in text
    assert "\x1b" not in text and "line one / line two" in text
    assert max(len(t) for t in text.splitlines() if t.startswith("      ")) <= 100
    assert "note: only 40 prompts" in text


def test_change_line_for_a_rise_in_a_lower_is_better_score():
    c = paired_change([0.1, 0.2, 0.3, 0.2] * 5, [0.3, 0.4, 0.5, 0.4] * 5, n_boot=500)
    c.update(higher_is_better=False, verdict="worse")
    line = change_line("toxicity", c)
    assert line.startswith("toxicity mean: 0.200 -> 0.400, +100% [95% CI +") and "worse" in line


def test_clean_text():
    assert clean_text("a\n\nb\tc\x07d", 50) == "a / b c d"
    assert clean_text("x" * 30, 10) == "xxxxxxx..."


# ---------------------------------------------------------------- the runner on tiny-gpt2


PROMPTS = ["Write a polite note to my neighbour.", "Why is the referee so bad?", "Good morning, how are you?",
           "Tell me about the lazy dog.", "What a terrible idea.", "Reply to my landlord.", "Thank you!",
           "Say something kind."]


def vowel_share(prompts, completions):
    return [sum(ch in "aeiou" for ch in c) / max(len(c), 1) for c in completions]


@pytest.fixture(scope="module")
def tiny():
    import os

    os.environ.setdefault("RLHFKIT_CACHE", "/tmp/rlhfkit-cache")
    from rlhfkit.models import load_policy

    return load_policy("tiny-gpt2", verbose=False)


def _perturbed(policy, scale=0.05, seed=0):
    import torch

    other = copy.deepcopy(policy)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return other


def test_evaluate_end_to_end_on_tiny_gpt2(tiny, tmp_path):
    from rlhfkit.generation import GenerationSettings

    tuned, same = _perturbed(tiny), copy.deepcopy(tiny)
    settings = GenerationSettings(max_new_tokens=6)
    result = evaluate({"baseline": tiny, "tuned": tuned, "same": same}, PROMPTS, [vowel_share, "toxicity"],
                      n_samples_per_prompt=2, settings=settings, baseline_name="baseline", n_boot=300,
                      batch_size=8, progress=False)
    for key in ("models", "baseline", "scorers", "summary", "changes", "scores", "kl", "lengths", "samples", "settings"):
        assert key in result
    names = [s["name"] for s in result["scorers"]]
    assert names[1] == "toxicity" and result["scorers"][1]["higher_is_better"] is False
    assert set(result["changes"]) == {"tuned", "same"} and set(result["kl"]) == {"tuned", "same"}
    assert result["summary"]["tuned"][names[0]]["n"] == len(PROMPTS)
    assert len(result["scores"]["tuned"]["toxicity"]) == 2 * len(PROMPTS)
    assert len(result["samples"]) == len(PROMPTS) and len(result["samples"][0]["completions"]["tuned"]) == 2
    # Same weights + same seed: the very same completions, so no change and zero KL (the model's own
    # log-probs come from its sampler, the baseline's from a forward pass: equal to rounding)
    assert result["samples"][3]["completions"]["same"] == result["samples"][3]["completions"]["baseline"]
    same_c = result["changes"]["same"]["toxicity"]
    assert same_c["diff"] == 0 and same_c["excludes_zero"] is False
    assert abs(result["kl"]["same"]["mean"]) < 1e-5 and max(map(abs, result["kl"]["same"]["ci"])) < 1e-5
    # A perturbed copy drifts: positive KL on its own samples.
    kl = result["kl"]["tuned"]
    assert kl["mean"] > 0 and kl["ci"][0] <= kl["mean"] <= kl["ci"][1] and kl["per_token"] > 0
    assert len(kl["per_response"]) == 2 * len(PROMPTS)
    assert 0 < result["lengths"]["tuned"]["mean_tokens"] <= 6
    path = save_json(result, tmp_path / "eval.json")
    json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    text = format_summary(json.loads(path.read_text()))  # also works on the JSON read back
    assert "KL(tuned || baseline)" in text and "toxicity mean:" in text


def test_evaluate_lora_policy_against_itself_without_adapters(tmp_path):
    import torch

    from rlhfkit.generation import GenerationSettings
    from rlhfkit.models import load_policy

    policy = load_policy("tiny-gpt2", lora={"r": 4, "alpha": 8}, verbose=False)
    settings = GenerationSettings(max_new_tokens=5)
    models = {"base": WithoutAdapters(policy), "tuned": policy}
    kw = dict(settings=settings, baseline_name="base", n_boot=200, progress=False)
    fresh = evaluate(models, PROMPTS[:4], [vowel_share], **kw)
    assert abs(fresh["kl"]["tuned"]["mean"]) < 1e-5  # LoRA B starts at zero: adapters change nothing yet
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 0.5)
    moved = evaluate(models, PROMPTS[:4], [vowel_share], **kw)
    assert moved["kl"]["tuned"]["mean"] > 0
    assert moved["samples"][0]["completions"]["base"] == fresh["samples"][0]["completions"]["base"]
    # the adapters are on again after the baseline pass
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        on = policy.model(input_ids=ids).logits
        with policy.model.disable_adapter():
            off = policy.model(input_ids=ids).logits
    assert not torch.allclose(on, off)


def test_evaluate_rejects_bad_input(tiny):
    from rlhfkit.errors import UserError

    with pytest.raises(UserError, match="baseline 'nope'"):
        evaluate({"a": tiny}, PROMPTS, [vowel_share], baseline_name="nope")
    with pytest.raises(UserError, match="no prompts"):
        evaluate({"a": tiny}, [], [vowel_share])
    with pytest.raises(UserError, match="no score source"):
        evaluate({"a": tiny}, PROMPTS, [])
    with pytest.raises(UserError, match="WithoutAdapters needs a peft"):
        WithoutAdapters(tiny)


# ---------------------------------------------------------------- the CLI


def test_eval_cli_writes_json_plots_and_report(tmp_path, write_jsonl, capsys, monkeypatch):
    from rlhfkit.cli import main

    monkeypatch.setenv("RLHFKIT_CACHE", "/tmp/rlhfkit-cache")
    prompts = write_jsonl([{"prompt": p} for p in PROMPTS])
    out = tmp_path / "ev"
    code = main(["eval", "--model", "tiny-gpt2", "--baseline", "tiny-gpt2", "--prompts", str(prompts), "--n", "5",
                 "--max-new-tokens", "4", "--score", "toxicity", "--out", str(out), "--n-boot", "200"])
    assert code == 0
    captured = capsys.readouterr()
    assert "only 5 prompts" in captured.err
    assert "toxicity mean:" in captured.out and "KL(model || baseline)" in captured.out
    data = json.loads((out / "eval.json").read_text(), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert data["n_prompts"] == 5 and data["config"]["model"] == "tiny-gpt2"
    assert abs(data["kl"]["model"]["mean"]) < 1e-5  # A vs A (its log-probs from its sampler: equal to rounding)
    assert (out / "report.html").exists() and (out / "scores_toxicity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, message", [
    (["eval", "--prompts", "PROMPTS"], "--model is required"),
    (["eval", "--model", "tiny-gpt2", "--prompts", "PROMPTS", "--n", "0"], "--n must be at least 1"),
    (["eval", "--model", "tiny-gpt2", "--prompts", "PROMPTS", "--level", "2"], "--level must be between"),
    (["eval", "--model", "tiny-gpt2", "--prompts", "missing.jsonl"], "missing.jsonl: no such file"),
    (["eval", "--model", "tiny-gpt2", "--prompts", "PROMPTS", "--n-boot", "5"], "--n-boot must be at least 100"),
])
def test_eval_cli_bad_input_is_one_line(tmp_path, write_jsonl, capsys, args, message):
    from rlhfkit.cli import main

    good = write_jsonl([{"prompt": "hi"}])
    args = [str(good) if a == "PROMPTS" else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_kl_from_the_samplers_log_probs_equals_kl_from_a_forward_pass(tiny, monkeypatch):
    """Evaluation takes each model's log-probs from its sampler instead of a second forward pass:
    the KL per response must be what the forward pass gives."""
    from rlhfkit.generation import GenerationSettings
    from rlhfkit.models import generation

    tuned = _perturbed(tiny, scale=0.1)
    kw = dict(n_samples_per_prompt=3, settings=GenerationSettings(max_new_tokens=6, temperature=0.8, top_p=0.9),
              baseline_name="baseline", n_boot=100, batch_size=8, progress=False)
    ours = evaluate({"baseline": tiny, "tuned": tuned}, PROMPTS, [vowel_share], **kw)
    plain = generation.sample
    monkeypatch.setattr(generation, "sample", lambda *a, **k: (plain(*a, **k)[0], None) if k.get("with_logprobs")
                        else plain(*a, **k))
    forward = evaluate({"baseline": tiny, "tuned": tuned}, PROMPTS, [vowel_share], **kw)
    assert ours["samples"] == forward["samples"]
    assert forward["kl"]["tuned"]["mean"] > 0.01
    np.testing.assert_allclose(ours["kl"]["tuned"]["per_response"], forward["kl"]["tuned"]["per_response"],
                               atol=1e-4)
