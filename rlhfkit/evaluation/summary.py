"""The printed before/after summary of an evaluation result (`rlhfkit.evaluation.evaluate`).

Pure formatting of the result dict, so it also works on an `eval.json` read
back from disk. Model output is untrusted: `clean_text` strips control
characters and terminal escape codes before anything is printed.
"""

from __future__ import annotations

import math
import re
import unicodedata

SIGN_CONVENTION = "change = model - baseline; relative change = (model - baseline) / |baseline|, negative = it fell"


def _num(x, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.1f}" if abs(x) >= 100 else f"{x:.{digits}f}"


def _pct(x) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:+.0f}%"


def _ci(ci, fmt=_num) -> str:
    low, high = (ci or (None, None))
    return f"[{fmt(low)}, {fmt(high)}]"


def clean_text(text: str, width: int | None = None) -> str:
    """One line of untrusted model output for a terminal: control characters dropped, newlines as ' / '."""
    text = re.sub(r"\s*\n\s*", " / ", str(text))
    text = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in text)
    text = re.sub(r"\s+", " ", text).strip()
    if width and len(text) > width:
        text = text[: max(width - 3, 1)] + "..."
    return text


def change_line(scorer: str, c: dict, stat: str = "mean") -> str:
    """e.g. 'toxicity mean: 0.110 -> 0.031, -72% [95% CI -80%, -61%] (lower is better); ...'."""
    p = "" if stat == "mean" else "std_"
    level = round(100 * c.get("level", 0.95))
    rel = c[f"{p}relative_change"]
    rel_text = (f"{_pct(rel)} [{level}% CI {_pct(c[f'{p}relative_change_ci'][0])}, {_pct(c[f'{p}relative_change_ci'][1])}]"
                if rel is not None and math.isfinite(rel) else "relative change n/a (baseline is 0)")
    direction = " (higher is better)" if c.get("higher_is_better", True) else " (lower is better)"
    excl = "CI excludes no change" if c[f"{p}excludes_zero"] else "CI includes no change"
    verdict_text = c.get("verdict", "") if stat == "mean" and c[f"{p}excludes_zero"] else ""
    low, high = c[f"{p}diff_ci"]
    return (f"{scorer} {stat}: {_num(c[f'before_{stat}'])} -> {_num(c[f'after_{stat}'])}, {rel_text}"
            f"{direction if stat == 'mean' else ''}; difference {_num(c[f'{p}diff'])} [{level}% CI {_num(low)}, "
            f"{_num(high)}], {excl}{': ' + verdict_text if verdict_text else ''}")


def _header(result: dict) -> list[str]:
    s = result.get("settings", {})
    level = round(100 * result.get("level", 0.95))
    lines = [
        f"evaluation: {result.get('n_prompts')} prompts x {result.get('n_samples_per_prompt', 1)} sample(s), "
        f"temperature {s.get('temperature')}, top_k {s.get('top_k')}, top_p {s.get('top_p')}, "
        f"up to {s.get('max_new_tokens')} new tokens, seed {result.get('seed')}",
        "models: " + "; ".join(f"{n}{' (baseline)' if n == result.get('baseline') != 'baseline' else ''} = {clean_text(src, 80)}"
                               for n, src in result.get("models", {}).items()),
        f"statistics: {level}% percentile-bootstrap CIs over prompts ({result.get('n_boot')} resamples), "
        "paired (every model answers the same prompts)",
    ]
    if result.get("baseline"):
        lines.append(f"sign convention: {SIGN_CONVENTION}")
    if (result.get("n_prompts") or 0) < 200:
        lines.append(f"note: only {result.get('n_prompts')} prompts; CIs from fewer than 200 prompts are rough")
    return lines


def _score_block(result: dict, scorer: dict) -> list[str]:
    name = scorer["name"]
    lines = [f"{name} ({'higher' if scorer['higher_is_better'] else 'lower'} is better)"]
    width = max(len(m) for m in result["summary"])
    for model, per in result["summary"].items():
        s = per[name]
        lines.append(f"  {model:<{width}}  mean {_num(s['mean'])} {_ci(s['mean_ci'])}  "
                     f"std {_num(s['std'])} {_ci(s['std_ci'])}  n={s['n']}")
    many = len(result.get("changes", {})) > 1
    for model, per in result.get("changes", {}).items():
        tag = f"[{model} vs {result['baseline']}] " if many else ""
        lines.append("  " + tag + change_line(name, per[name], "mean"))
        lines.append("  " + tag + change_line(name, per[name], "std"))
    return lines


def _kl_lines(result: dict) -> list[str]:
    lines = []
    level = round(100 * result.get("level", 0.95))
    for model, kl in result.get("kl", {}).items():
        head = f"KL({model} || {result['baseline']}) on {model}'s responses: "
        if kl.get("skipped"):
            lines.append(head + "skipped: " + kl["skipped"])
            continue
        warn = " (negative: sampling noise, or the model is not what was sampled)" if (kl.get("mean") or 0) < 0 else ""
        lines.append(head + f"{_num(kl['mean'])} nats per response [{level}% CI {_num(kl['ci'][0])}, "
                     f"{_num(kl['ci'][1])}], {_num(kl['per_token'], 4)} per token{warn}")
    lengths = result.get("lengths", {})
    if lengths:
        limit = result.get("settings", {}).get("max_new_tokens")
        lines.append("response length: " + "; ".join(
            f"{m} {_num(v['mean_tokens'], 1)} tokens ({_pct_plain(v['hit_limit_fraction'])} hit the {limit}-token limit)"
            for m, v in lengths.items()))
        if all("distinct_2" in v for v in lengths.values()):
            lines.append("replies: " + "; ".join(
                f"{m} distinct-2 {_num(v['distinct_2'])}, most frequent reply {_pct_plain(v['top_reply_share'])} "
                f"of samples" for m, v in lengths.items()))
    for model, per in (result.get("expected_max") or {}).get("changes", {}).items():
        for scorer, c in per.items():
            lines.append("expected maximum over each prompt's samples: " + change_line(scorer, c, "mean"))
    return lines


def _pct_plain(x) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.0f}%"


def _sample_lines(result: dict, max_samples: int, width: int) -> list[str]:
    samples = result.get("samples") or []
    if not samples or max_samples <= 0:
        return []
    shown = samples[:max_samples]
    lines = [f"paired samples (first {len(shown)} of {len(samples)} prompts, in file order, not selected):"]
    models = list(result.get("models") or shown[0]["completions"])
    name_w = max(len(m) for m in models)
    abbrev = {s["name"]: s["name"][:8] for s in result.get("scorers", [])}
    for i, row in enumerate(shown, 1):
        lines.append(f"  [{i}] {clean_text(row['prompt'], width - 6)}")
        for m in models:
            scores = row.get("scores", {}).get(m, {})
            tag = " ".join(f"{abbrev.get(s, s)} {_num(v[0], 2)}" for s, v in scores.items() if v)
            prefix = f"      {m:<{name_w}}  {tag} | "
            text = (row["completions"].get(m) or [""])[0]
            lines.append(prefix + clean_text(text or "(empty)", max(width - len(prefix), 20)))
    return lines


def format_summary(result: dict, max_samples: int = 3, width: int = 110) -> str:
    """The printed evaluation table: settings, per-score means/stds with CIs, changes, KL, samples."""
    lines = _header(result)
    for scorer in result.get("scorers", []):
        lines += [""] + _score_block(result, scorer)
    kl = _kl_lines(result)
    if kl:
        lines += [""] + kl
    samples = _sample_lines(result, max_samples, width)
    if samples:
        lines += [""] + samples
    return "\n".join(lines)
