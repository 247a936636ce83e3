"""One self-contained HTML report per run.

`write_report(out_dir, title, evaluation=..., metrics=..., config=..., samples=...)`
writes `report.html` with the numbers, the plots (`rlhfkit.evaluation.plots`)
embedded as base64 PNGs, the config and side-by-side samples. No network resources
(no CDN, no web fonts, no scripts), inline CSS, and every piece of text
HTML-escaped: model output is untrusted.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
from pathlib import Path

from rlhfkit.evaluation.plots import KL_KEY, REWARD_KEY, _finite, _series, load_metrics, plot_distributions, plot_training

# ---------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1150px;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
h3{font-size:1.05em}.meta{color:#666;font-size:.9em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}th,td{border:1px solid #ddd;padding:.3em .55em;
text-align:left;vertical-align:top}th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.headline{background:#f3f8ff;border-left:4px solid #1f77b4;padding:.6em 1em;margin:1em 0}
.headline p{margin:.25em 0;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.92em}
.better{color:#1a7f37;font-weight:600}.worse{color:#b42318;font-weight:600}.unclear{color:#666}
pre{background:#f7f7f7;padding:.7em;overflow-x:auto;font-size:.85em;white-space:pre-wrap}
img{max-width:100%;height:auto;border:1px solid #eee;margin:.4em 0}
.samples td{max-width:430px;white-space:pre-wrap;word-wrap:break-word}.score{color:#555;font-size:.85em}
"""


def _e(value) -> str:
    """Escaped text: every string that reaches the page goes through here."""
    return html.escape("" if value is None else str(value), quote=True)


def _num(x, digits: int = 3) -> str:
    if not _finite(x):
        return "n/a"
    return f"{x:.1f}" if abs(x) >= 100 else f"{x:.{digits}f}"


def _ci(ci) -> str:
    low, high = ci if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None)
    return f"[{_num(low)}, {_num(high)}]"


def _pct(x) -> str:
    return f"{100 * x:+.0f}%" if _finite(x) else "n/a"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _table(headers: list[str], rows: list[list], cls: str = "") -> str:
    """rows hold (text) or ('num', value) cells; text is escaped here."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            if isinstance(cell, tuple) and cell[0] == "num":
                cells.append(f'<td class="num">{_e(cell[1])}</td>')
            elif isinstance(cell, tuple) and cell[0] == "html":  # pre-escaped fragment built in this module
                cells.append(f"<td>{cell[1]}</td>")
            else:
                cells.append(f"<td>{_e(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="{cls}"><tr>{head}</tr>{"".join(body)}</table>'


def _headline(evaluation: dict) -> str:
    from rlhfkit.evaluation.summary import change_line

    lines = []
    for model, per in (evaluation.get("changes") or {}).items():
        for scorer, c in per.items():
            cls = {"better": "better", "worse": "worse"}.get(c.get("verdict"), "unclear")
            tag = f"[{model} vs {evaluation.get('baseline')}] " if len(evaluation["changes"]) > 1 else ""
            lines.append(f'<p class="{cls}">{_e(tag + change_line(scorer, c, "mean"))}</p>')
    if not lines:
        return ""
    return f'<div class="headline">{"".join(lines)}<p class="meta">{_e(evaluation.get("sign_convention", ""))}</p></div>'


def _evaluation_html(ev: dict) -> str:
    level = round(100 * (ev.get("level") or 0.95))
    s = ev.get("settings") or {}
    parts = ["<h2>Evaluation</h2>", f'<p class="meta">{_e(ev.get("n_prompts"))} held-out prompts x '
             f'{_e(ev.get("n_samples_per_prompt", 1))} sample(s) per model, temperature {_e(s.get("temperature"))}, '
             f'up to {_e(s.get("max_new_tokens"))} new tokens, seed {_e(ev.get("seed"))}. {level}% percentile-bootstrap '
             f'CIs over prompts ({_e(ev.get("n_boot"))} resamples); changes are paired (same prompts for every model).</p>']
    models = ev.get("models") or {}
    if models:
        parts.append(_table(["model", "source"], [[m + (" (baseline)" if m == ev.get("baseline") != "baseline" else ""), src]
                                                  for m, src in models.items()]))
    for scorer in ev.get("scorers", []):
        name = scorer["name"]
        better = "higher" if scorer.get("higher_is_better", True) else "lower"
        parts.append(f"<h3>{_e(name)} ({better} is better)</h3>")
        rows = [[m, ("num", _num(x["mean"])), ("num", _ci(x["mean_ci"])), ("num", _num(x["std"])),
                 ("num", _ci(x["std_ci"])), ("num", x["n"])]
                for m, per in (ev.get("summary") or {}).items() if (x := per.get(name))]
        parts.append(_table(["model", "mean", f"{level}% CI", "std", f"{level}% CI", "prompts"], rows))
        change_rows = []
        for m, per in (ev.get("changes") or {}).items():
            c = per.get(name)
            if not c:
                continue
            for stat, p in (("mean", ""), ("std", "std_")):
                rel_ci = c.get(f"{p}relative_change_ci") or (None, None)
                change_rows.append([
                    f"{m} vs {ev.get('baseline')}", stat, ("num", f"{_num(c[f'before_{stat}'])} → {_num(c[f'after_{stat}'])}"),
                    ("num", _num(c[f"{p}diff"])), ("num", _ci(c[f"{p}diff_ci"])), ("num", _pct(c[f"{p}relative_change"])),
                    ("num", f"[{_pct(rel_ci[0])}, {_pct(rel_ci[1])}]"),
                    "excludes 0: " + c.get(f"{'std_' if p else ''}verdict", "") if c[f"{p}excludes_zero"] else "includes 0",
                ])
        if change_rows:
            parts.append(_table(["comparison", "statistic", "baseline → model", "difference", f"{level}% CI",
                                 "relative change", f"{level}% CI", "CI vs no change"], change_rows))
    parts.append(_kl_html(ev))
    return "".join(parts)


def _kl_html(ev: dict) -> str:
    level = round(100 * (ev.get("level") or 0.95))
    rows = []
    for m, kl in (ev.get("kl") or {}).items():
        if kl.get("skipped"):
            rows.append([m, "skipped: " + kl["skipped"], "", ""])
        else:
            rows.append([m, ("num", _num(kl.get("mean"))), ("num", _ci(kl.get("ci"))), ("num", _num(kl.get("per_token"), 4))])
    out = ""
    if rows:
        out += "<h3>KL to the baseline</h3>" + _table(
            ["model", "KL (nats per response)", f"{level}% CI", "KL per token"], rows)
        out += f'<p class="meta">{_e(ev.get("kl_note", ""))}</p>'
    lengths = ev.get("lengths") or {}
    if lengths:
        limit = (ev.get("settings") or {}).get("max_new_tokens")
        out += "<h3>Replies</h3>" + _table(
            ["model", "mean length (tokens)", "mean words", f"hit the {limit}-token limit", "distinct-2",
             "most frequent reply's share", "generation time (s)", "tokens/s"],
            [[m, ("num", _num(v.get("mean_tokens"), 1)), ("num", _num(v.get("mean_words"), 1)),
              ("num", f"{100 * v['hit_limit_fraction']:.0f}%" if _finite(v.get("hit_limit_fraction")) else "n/a"),
              ("num", _num(v.get("distinct_2"))), ("num", _pct_plain(v.get("top_reply_share"))),
              ("num", _num(v.get("generation_seconds"), 1)), ("num", _num(v.get("tokens_per_second"), 1))]
             for m, v in lengths.items()])
        out += ('<p class="meta">Reward hacking shows here: a policy that found one safe reply has a short '
                "length, a low distinct-2 (distinct word pairs over all word pairs) and a large share of one reply.</p>")
    worst = ev.get("expected_max") or {}
    if worst.get("summary"):
        level = round(100 * (ev.get("level") or 0.95))
        rows = []
        for m, per in worst["summary"].items():
            for scorer, x in per.items():
                c = (worst.get("changes") or {}).get(m, {}).get(scorer)
                rel = f"{_pct(c['relative_change'])} {_ci(c.get('relative_change_ci'))}" if c else ""
                rows.append([m, scorer, ("num", _num(x["mean"])), ("num", _ci(x["mean_ci"])), ("num", rel)])
        out += (f"<h3>Expected maximum over each prompt's {_e(ev.get('n_samples_per_prompt'))} samples</h3>"
                + _table(["model", "score", "mean of the per-prompt maximum", f"{level}% CI",
                          "relative change [CI]"], rows))
    return out


def _pct_plain(x) -> str:
    return f"{100 * x:.1f}%" if _finite(x) else "n/a"


def _training_html(rows: list[dict]) -> str:
    _, reward = _series(rows, REWARD_KEY)
    _, kl = _series(rows, KL_KEY)
    facts = [["PPO steps logged", ("num", len(rows))]]
    if reward:
        facts += [["reward, first step", ("num", _num(reward[0]))], ["reward, last step", ("num", _num(reward[-1]))],
                  ["reward, best step", ("num", _num(max(reward)))]]
    if kl:
        facts += [["KL, last step (nats)", ("num", _num(kl[-1]))], ["KL, largest (nats)", ("num", _num(max(kl)))]]
    return _table(["", "value"], facts)


def _sample_rows(samples: list, models: list[str]) -> tuple[list[str], list[list]]:
    """Side-by-side rows from evaluation samples, or a generic table from any list of dicts."""
    if samples and isinstance(samples[0], dict) and isinstance(samples[0].get("completions"), dict):
        headers = ["#", "prompt"] + [m for m in models]
        rows = []
        for i, s in enumerate(samples, 1):
            row = [("num", i), s.get("prompt", "")]
            for m in models:
                texts = s["completions"].get(m) or [""]
                scores = (s.get("scores") or {}).get(m) or {}
                score_text = ", ".join(f"{k} {_num(v[0], 3)}" for k, v in scores.items() if v)
                row.append(("html", f"{_e(texts[0])}<br><span class=\"score\">{_e(score_text)}</span>"))
            rows.append(row)
        return headers, rows
    keys: list[str] = []
    for s in samples:
        for k in (s if isinstance(s, dict) else {"text": s}):
            if k not in keys:
                keys.append(k)
    rows = [[(s if isinstance(s, dict) else {"text": s}).get(k, "") for k in keys] for s in samples]
    return keys, [[v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str) for v in r] for r in rows]


def _config_text(config) -> str:
    import dataclasses

    import yaml

    from rlhfkit.evaluation import to_jsonable

    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    try:
        return yaml.safe_dump(to_jsonable(config), sort_keys=False, allow_unicode=True)
    except yaml.YAMLError:
        return json.dumps(to_jsonable(config), indent=1, ensure_ascii=False)


def _extra_html(sections) -> str:
    """(title, content) pairs: text (kept as is, escaped), a dict (key/value table) or a list of dicts."""
    parts = []
    for title, content in (sections.items() if isinstance(sections, dict) else sections):
        parts.append(f"<h2>{_e(title)}</h2>")
        if isinstance(content, dict):
            parts.append(_table(["", "value"], [[k, v if isinstance(v, str) else json.dumps(v, default=str)]
                                                for k, v in content.items()]))
        elif isinstance(content, list) and content and isinstance(content[0], dict):
            headers, rows = _sample_rows(content, [])
            parts.append(_table(headers, rows))
        elif isinstance(content, (str, Path)) and str(content).lower().endswith(".png") and Path(content).exists():
            parts.append(_img(Path(content), title))
        else:
            parts.append(f"<pre>{_e(content)}</pre>")
    return "".join(parts)


def write_report(out_dir, title: str = "rlhfkit report", evaluation: dict | None = None, metrics=None,
                 config=None, samples: list | None = None, extra_sections=None, images=None,
                 max_samples: int = 100, summary_text: str | None = None) -> Path:
    """Write `out_dir/report.html` (and the PNGs it embeds) and return its path.

    evaluation: an `rlhfkit.evaluation.evaluate` result (dict, or as read back
    from eval.json); metrics: metrics.jsonl path or list of per-step dicts;
    config: dict or dataclass; samples: rows to show side by side (default: the
    evaluation's samples, first `max_samples`); extra_sections: [(title,
    content)] with text, a dict, a list of dicts or a PNG path; images: more PNGs.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = load_metrics(metrics)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [f"<h1>{_e(title)}</h1>", f'<p class="meta">written {_e(now)} by rlhfkit</p>']
    if evaluation:
        body.append(_headline(evaluation))
        body.append(_evaluation_html(evaluation))
        dist = plot_distributions(evaluation, out)
        if dist:
            body.append("<h2>Score distributions</h2>" + "".join(_img(p, p.stem) for p in dist))
    if rows:
        body.append("<h2>Training</h2>" + _training_html(rows))
        body += [_img(p, p.stem) for p in plot_training(rows, out)]
    for p in images or []:
        body.append(_img(Path(p), Path(p).stem))
    if samples is None and evaluation:
        samples = evaluation.get("samples")
    if samples:
        models = list((evaluation or {}).get("models") or {}) or list(samples[0].get("completions", {}) if isinstance(samples[0], dict) else [])
        headers, srows = _sample_rows(samples[:max_samples], models)
        note = f"first {min(len(samples), max_samples)} of {len(samples)}, in prompt order (not selected); first sample per prompt"
        body.append(f'<h2>Samples</h2><p class="meta">{_e(note)}</p>' + _table(headers, srows, "samples"))
    if summary_text:
        body.append(f"<h2>Printed summary</h2><pre>{_e(summary_text)}</pre>")
    if config is not None:
        body.append(f"<h2>Configuration</h2><pre>{_e(_config_text(config))}</pre>")
    if extra_sections:
        body.append(_extra_html(extra_sections))
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


__all__ = ["plot_training", "plot_distributions", "write_report", "load_metrics"]
