"""`rlhfkit demo --preset quick`: the whole pipeline end to end on tiny models."""

import json
import math

import pytest

from rlhfkit.cli import main


def _finite_numbers(obj):
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return
    if isinstance(obj, (int, float)):
        assert math.isfinite(obj), obj
    elif isinstance(obj, dict):
        for v in obj.values():
            _finite_numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            _finite_numbers(v)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--preset", "quick", "--out", str(out)]) == 0
    return out


def test_quick_demo_writes_every_stage_and_the_report(quick_run):
    for stage in ("generate", "label", "reward", "ppo", "eval", "report"):
        assert (quick_run / stage / "stage.json").exists(), stage
    html = (quick_run / "report.html").read_text()
    assert "toxicity" in html and "data:image/png;base64," in html
    assert "http://" not in html and "https://" not in html
    result = json.loads((quick_run / "eval" / "eval.json").read_text())
    change = result["changes"]["after"]["toxicity"]
    for key in ("before_mean", "after_mean", "relative_change", "diff"):
        assert math.isfinite(change[key]), key
    for model in ("before", "after"):
        assert math.isfinite(result["summary"][model]["toxicity"]["mean"])
        assert math.isfinite(result["summary"][model]["toxicity"]["std"])
    assert math.isfinite(result["kl"]["after"]["mean"])
    metrics = [json.loads(line) for line in (quick_run / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3
    for row in metrics:
        _finite_numbers({k: row[k] for k in ("env/reward_mean", "objective/kl")})
    rankings = [json.loads(line) for line in (quick_run / "label" / "rankings.jsonl").read_text().splitlines()]
    assert rankings and all(sorted(set(r["ranks"]))[0] == 1 for r in rankings)


def test_second_run_reuses_stages_and_from_redoes_the_tail(quick_run, capsys):
    before = {s: (quick_run / s / "stage.json").stat().st_mtime_ns for s in ("generate", "reward", "ppo", "eval")}
    assert main(["demo", "--preset", "quick", "--out", str(quick_run)]) == 0
    out = capsys.readouterr().out
    assert out.count("reusing") == 6
    assert main(["demo", "--preset", "quick", "--out", str(quick_run), "--from", "eval"]) == 0
    out = capsys.readouterr().out
    assert "[ppo] reusing" in out and "[eval] running" in out and "[report] running" in out
    after = {s: (quick_run / s / "stage.json").stat().st_mtime_ns for s in ("generate", "reward", "ppo", "eval")}
    assert after["generate"] == before["generate"] and after["ppo"] == before["ppo"]
    assert after["eval"] != before["eval"]


def test_human_feedback_file_replaces_generate_and_label(tmp_path, write_jsonl, capsys):
    rows = [{"prompt": f"prompt {i}", "completions": ["thanks, kind words", "you idiot, shut up", "ok"],
             "ranks": [1, 3, 2]} for i in range(12)]
    feedback = write_jsonl(rows, "human.jsonl")
    out = tmp_path / "run"
    assert main(["demo", "--preset", "quick", "--out", str(out), "--feedback", str(feedback),
                 "--ppo-steps", "1", "--n-eval-prompts", "4"]) == 0
    assert "using 12 human rankings" in capsys.readouterr().out
    assert not (out / "generate").exists() and (out / "report.html").exists()


def test_bad_feedback_file_stops_before_training(tmp_path, write_jsonl, capsys):
    feedback = write_jsonl([{"prompt": "p", "completions": ["a", "b"], "ranks": [1, 7]}], "bad.jsonl")
    assert main(["demo", "--preset", "quick", "--out", str(tmp_path / "run"), "--feedback", str(feedback)]) == 2
    err = capsys.readouterr().err
    assert "row 1" in err and "'ranks'" in err and not (tmp_path / "run" / "reward").exists()


def test_quick_demo_leaves_a_tracker_a_model_card_and_a_plain_exported_model(quick_run):
    from rlhfkit.models.card import card_metadata

    assert list((quick_run / "ppo" / "logs").rglob("events.out.tfevents.*"))  # TensorBoard
    assert list((quick_run / "reward" / "model" / "logs").rglob("events.out.tfevents.*"))
    names = {p.name for p in (quick_run / "model").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "README.md"} <= names
    assert not names & {"adapter_config.json", "value_head.safetensors"}
    meta = card_metadata(quick_run / "model")
    assert meta["pipeline_tag"] == "text-generation" and "ppo" in meta["tags"]
    card = (quick_run / "model" / "README.md").read_text()
    assert "before vs after ppo" in card and "toxicity mean" in card


def test_more_methods_and_a_direct_reward_land_beside_ppo(quick_run, capsys):
    """The group methods and PPO on the classifier itself train in their own stage folders, reuse the
    ranking and reward stages, and are compared with PPO in one evaluation and report."""
    assert main(["demo", "--preset", "quick", "--out", str(quick_run), "--method", "ppo", "grpo", "rloo",
                 "--direct-reward", "profanity"]) == 0
    out = capsys.readouterr().out
    assert "[reward] reusing" in out and "[ppo] reusing" in out and "[grpo] running" in out
    for stage in ("grpo", "rloo", "ppo-direct"):
        assert (quick_run / stage / "model" / "adapter_config.json").exists(), stage
    result = json.loads((quick_run / "eval" / "eval.json").read_text())
    assert set(result["changes"]) == {"after", "grpo", "rloo", "ppo-direct"}
    assert result["methods"]["ppo"] == "after"
    html = (quick_run / "report.html").read_text()
    assert "ppo-direct" in html and "Expected maximum" in html and "distinct-2" in html
    assert main(["demo", "--preset", "quick", "--out", str(quick_run), "--method", "dqn"]) == 2


def test_dpo_trains_on_the_label_stage_rankings_beside_ppo(quick_run, capsys):
    """`--method dpo`: DPO with LoRA on the same rankings the reward model learnt from, in its own stage
    folder (a standard peft adapter), evaluated and tabulated beside PPO."""
    assert main(["demo", "--preset", "quick", "--out", str(quick_run), "--method", "ppo", "dpo"]) == 0
    out = capsys.readouterr().out
    assert "[label] reusing" in out and "[ppo] reusing" in out and "[dpo] running" in out
    assert (quick_run / "dpo" / "model" / "adapter_config.json").exists()
    assert (quick_run / "dpo" / "metrics.jsonl").exists()
    result = json.loads((quick_run / "eval" / "eval.json").read_text())
    assert result["methods"] == {"ppo": "after", "dpo": "dpo"} and "dpo" in result["changes"]
    assert "dpo" in (quick_run / "report.html").read_text()


@pytest.mark.slow  # the compression suite measures each model in its own process: minutes
def test_compress_stage_adds_the_deployment_table_to_the_report(quick_run, capsys):
    assert main(["demo", "--preset", "quick", "--out", str(quick_run), "--compress"]) == 0
    out = capsys.readouterr().out
    assert "[ppo] reusing" in out and "[compress] running" in out
    rows = json.loads((quick_run / "compress" / "metrics.json").read_text())["rows"]
    names = [r["model"] for r in rows]
    assert names[0] == "teacher" and "wanda-50%" in names and any(n.startswith("distilled-") for n in names)
    goals = json.loads((quick_run / "compress" / "goals.json").read_text())
    assert "Conv1D" in goals["skipped"]["int8-weight"]  # tiny-gpt2 cannot be quantized by torchao: said, not hidden
    html = (quick_run / "report.html").read_text()
    assert "Compression for deployment" in html and "Compression goals" in html


def test_reward_cap_is_that_quantile_of_the_reward_models_scores_on_the_ranked_completions(quick_run, capsys,
                                                                                           tmp_path):
    """Last in this file: it retrains the quick run's PPO with a cap (the direct reward is never capped)."""
    import statistics

    import yaml

    assert main(["demo", "--preset", "quick", "--out", str(quick_run), "--reward-cap", "0.5",
                 "--direct-reward", "profanity"]) == 0
    assert "[ppo] running" in capsys.readouterr().out
    scores = json.loads((quick_run / "reward" / "reference_scores.json").read_text())["scores"]
    assert len(scores) == 24 * 3  # every ranked completion of the quick preset (first 512 at most)
    config = yaml.safe_load((quick_run / "ppo" / "config.yaml").read_text())
    assert config["score_cap"] == pytest.approx(statistics.median(scores), abs=1e-4)
    assert yaml.safe_load((quick_run / "ppo-direct" / "config.yaml").read_text())["score_cap"] is None
    for bad in ("1.5", "0"):  # refused before any stage runs
        assert main(["demo", "--preset", "quick", "--out", str(tmp_path / bad), "--reward-cap", bad]) == 2
        assert "a quantile in (0, 1]" in capsys.readouterr().err
        assert not (tmp_path / bad / "generate").exists()
