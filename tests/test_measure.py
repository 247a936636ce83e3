"""The deployment table: every figure present, the teacher its own reference, a compressed model
measured as different from it where it is."""

import json

import pytest


def test_deployment_table_compares_teacher_and_compressed_models(tiny_llama_dir, tmp_path):
    from rlhfkit.compression.measure import MeasureSettings, deployment_table
    from rlhfkit.compression.prune import prune_model
    from rlhfkit.compression.quantize import quantize_model

    quantize_model(str(tiny_llama_dir), tmp_path / "q", "int8-weight")
    prune_model(str(tiny_llama_dir), tmp_path / "p", "magnitude", sparsity=0.5)
    settings = MeasureSettings(n_prompts=4, max_new_tokens=4, n_speed_prompts=2, text_chunks=3, chunk_tokens=32)
    rows = deployment_table(str(tiny_llama_dir), {"int8": tmp_path / "q", "pruned": tmp_path / "p"}, tmp_path / "m",
                            settings, progress=False)
    by = {r["model"]: r for r in rows}
    assert list(by) == ["teacher", "int8", "pruned"]
    t, q, p = by["teacher"], by["int8"], by["pruned"]
    assert t["kl_to_teacher"] == 0 and t["top1_match"] == 1 and t["size_ratio"] == 1
    # int8 linear weights: a byte per weight plus a scale and zero point per row, against 4 bytes
    assert 0.25 < q["linear_size_ratio"] < 0.3
    assert q["kl_to_teacher"] > 0 and p["kl_to_teacher"] > q["kl_to_teacher"]  # half the weights gone hurts more
    assert p["sparsity"] == pytest.approx(0.5, abs=1e-3)
    for r in rows:
        assert r["peak_rss_mb"] >= r["base_rss_mb"] > 0 and r["tokens_per_second"] > 0
        assert 0 <= r["toxicity"] <= 1 and r["perplexity"] > 1
    saved = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert [r["model"] for r in saved["rows"]] == ["teacher", "int8", "pruned"]
    html = (tmp_path / "m" / "report.html").read_text()
    assert "Deployment table" in html and "top-1 match" in html
