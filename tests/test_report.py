"""Plots are valid PNGs; the HTML report is self-contained and escapes untrusted text."""

import base64
import json
import re

import pytest

from rlhfkit.evaluation import compare_scores
from rlhfkit.report import load_metrics, plot_distributions, plot_training, write_report

PNG = b"\x89PNG\r\n\x1a\n"
EVIL = '<script>alert("pwned")</script>'


def _metrics(n=12):
    return [{"step": i, "env/reward_mean": 0.1 * i, "env/reward_std": 0.05, "objective/kl": 0.02 * i * i,
             "objective/entropy": 3.0} for i in range(n)]


def _evaluation():
    before = [0.3, 0.1, 0.05, 0.6, 0.2, 0.0] * 5
    after = [0.1, 0.02, 0.01, 0.2, 0.05, 0.0] * 5
    result = {
        "models": {"baseline": "smollm2-135m", "tuned": "runs/x/final"}, "baseline": "baseline",
        "scorers": [{"name": "toxicity", "higher_is_better": False}], "n_prompts": 30, "n_samples_per_prompt": 1,
        "settings": {"temperature": 1.0, "max_new_tokens": 48}, "seed": 0, "n_boot": 500, "level": 0.95,
        "kl": {"tuned": {"mean": 1.5, "ci": [1.2, 1.8], "per_token": 0.04, "n": 30}},
        "kl_note": "KL in nats",
        "lengths": {"baseline": {"mean_tokens": 40.0, "hit_limit_fraction": 0.5, "generation_seconds": 3.0},
                    "tuned": {"mean_tokens": 30.0, "hit_limit_fraction": 0.1, "generation_seconds": 3.0}},
        "samples": [{"prompt": 'tell me "<b>bold</b>" & more',
                     "completions": {"baseline": [EVIL], "tuned": ["<img src=x onerror=alert(1)>"]},
                     "scores": {"baseline": {"toxicity": [0.3]}, "tuned": {"toxicity": [0.1]}}}],
    }
    result.update(compare_scores({"baseline": {"toxicity": before}, "tuned": {"toxicity": after}},
                                 {"toxicity": False}, "baseline", n_boot=500))
    return result


def test_plot_training_from_list_and_jsonl(tmp_path):
    paths = plot_training(_metrics(), tmp_path / "a")
    assert [p.name for p in paths] == ["training_curves.png", "reward_vs_kl.png"]
    assert all(p.read_bytes()[:8] == PNG and p.stat().st_size > 5000 for p in paths)
    jsonl = tmp_path / "metrics.jsonl"
    rows = _metrics(5) + [{"step": 5, "env/reward_mean": float("nan"), "objective/kl": None}]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(load_metrics(jsonl)) == 6
    assert len(plot_training(jsonl, tmp_path / "b")) == 2  # the non-finite step is skipped, not plotted
    assert plot_training([{"step": 1, "loss": 0.3}], tmp_path / "c") == []  # no reward/KL keys: no plots


def test_plot_distributions(tmp_path):
    paths = plot_distributions(_evaluation(), tmp_path)
    assert [p.name for p in paths] == ["scores_toxicity.png"] and paths[0].read_bytes()[:8] == PNG


def test_report_is_self_contained_and_escapes_untrusted_text(tmp_path):
    ev = _evaluation()
    path = write_report(tmp_path, title="demo <run>", evaluation=ev, metrics=_metrics(),
                        config={"policy": "smollm2-135m", "note": "</pre><script>x()</script>"},
                        extra_sections=[("Notes", "a <b>note</b>"), ("Stages", {"ppo": "12 s"})])
    page = path.read_text(encoding="utf-8")
    assert path.name == "report.html"
    # no network resources of any kind
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(?!data:)[a-z]*:?//""", page, re.I)
    assert "<link" not in page and "@import" not in page and "<script" not in page.lower()
    # untrusted text is escaped, not interpreted
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "<img src=x" not in page
    assert "demo &lt;run&gt;" in page and "a &lt;b&gt;note&lt;/b&gt;" in page
    # every image is an embedded, valid PNG: 2 training plots + 1 distribution
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', page)
    assert len(images) == 3 == page.count("<img ")
    assert all(base64.b64decode(b)[:8] == PNG for b in images)
    # the numbers are there
    assert "toxicity mean: 0.208 -&gt; 0.063, -70% [95% CI" in page
    assert "KL to the baseline" in page and "1.500" in page and "policy: smollm2-135m" in page


def test_report_from_json_read_back_with_nulls(tmp_path):
    from rlhfkit.evaluation import save_json

    ev = _evaluation()
    ev["changes"]["tuned"]["toxicity"]["relative_change"] = float("nan")  # e.g. a zero baseline
    ev["changes"]["tuned"]["toxicity"]["relative_change_ci"] = (float("nan"), float("nan"))
    loaded = json.loads(save_json(ev, tmp_path / "eval.json").read_text())
    page = write_report(tmp_path / "r", evaluation=loaded).read_text()
    assert "relative change n/a" in page


def test_report_with_generic_samples_and_no_evaluation(tmp_path):
    page = write_report(tmp_path, metrics=_metrics(3), samples=[{"prompt": "p", "reply": EVIL, "score": 0.5}]).read_text()
    assert "&lt;script&gt;" in page and "<script" not in page and page.count("<img ") == 2


@pytest.mark.parametrize("bad", ["missing.jsonl"])
def test_missing_metrics_file_is_a_user_error(tmp_path, bad):
    from rlhfkit.errors import UserError

    with pytest.raises(UserError, match="metrics file not found"):
        load_metrics(tmp_path / bad)
