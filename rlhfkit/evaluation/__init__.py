"""Evaluation before and after, with honest statistics, plots and a report.

- `evaluate`: sample from each model on the same prompts, score, KL to the baseline;
- `statistics`: bootstrap CIs, paired changes, verdicts;
- `summary`: the printed table; `report`: plots (PNG) and the self-contained HTML report.
"""

from rlhfkit.evaluation.evaluate import WithoutAdapters, evaluate, save_json, to_jsonable
from rlhfkit.evaluation.statistics import (
    bootstrap_ci, compare_scores, kl_statistics, paired_change, sample_std, summarize, verdict,
)
from rlhfkit.evaluation.summary import SIGN_CONVENTION, change_line, clean_text, format_summary

__all__ = [
    "SIGN_CONVENTION", "WithoutAdapters", "bootstrap_ci", "change_line", "clean_text", "compare_scores", "evaluate",
    "format_summary", "kl_statistics", "paired_change", "sample_std", "save_json", "summarize", "to_jsonable",
    "verdict",
]
