"""The compression suite (the demo's --compress stage) on a tiny model: every folder, the table, the goals."""

import json

import pytest


@pytest.mark.slow  # ten measuring processes: minutes on two cores
def test_suite_writes_every_model_the_table_and_the_goals(tiny_llama_dir, tmp_path):
    from rlhfkit.methods.compress import CompressSuite, run_suite

    suite = CompressSuite(distill_rows=8, distill_epochs=1, distill_batch_size=4, distill_max_new_tokens=4,
                          n_calibration=8, n_prompts=3, max_new_tokens=4)
    rows = run_suite(str(tiny_llama_dir), tmp_path / "c", suite, progress=False)
    names = [r["model"] for r in rows]
    assert names == ["teacher", "int8-weight", "int8-dynamic", "int4-weight", "magnitude-50%", "wanda-50%",
                     "wanda-2:4", "depth-1", "distilled-2", "layer-dropped-2"]
    goals = json.loads((tmp_path / "c" / "goals.json").read_text())["goals"]
    assert len(goals) == 8 and all("measured" in g for g in goals)
    assert (tmp_path / "c" / "report.html").exists() and (tmp_path / "c" / "metrics.json").exists()


def test_gpt2_skips_quantization_with_the_reason(tmp_path):
    from rlhfkit.methods.compress import _quantizable

    assert "Conv1D" in _quantizable("tiny-gpt2")
