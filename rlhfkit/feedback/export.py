"""Import of `rlhfkit generate` output and export of labels as training data.

Export policy (also written into every summary):

- rankings: one row per (item, annotator) with {"prompt", "completions",
  "ranks", "annotator", "label", "item_id"}; completions in imported order,
  rank 1 = best, equal ranks = tie. "all bad" rows are a full tie (all ranks 1,
  "label": "all_bad"): kept, but they give no pair.
- pairs: the N-choose-2 pairs of every ranking (`rankings_to_pairs`), one row
  {"prompt", "chosen", "rejected", "annotator", "item_id"} per pair and
  annotator; ties and "all bad" give none. Annotators are not merged: two
  people who disagree give two opposite rows.
- skips are never exported as training data.
- raw labels: every label of every kind (skips included), per annotator, with
  timestamps, in a second JSONL file.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path

from rlhfkit import data
from rlhfkit.errors import DataError, UserError
from rlhfkit.feedback.agreement import ranking_agreement

POLICY = {
    "rankings": "one row per (item, annotator); all-bad = full tie (ranks all 1, label 'all_bad'); skips left out",
    "pairs": "N-choose-2 pairs per (item, annotator) ranking; ties and all-bad give no pair; skips left out",
    "raw": "every label of every kind (rank, all_bad, skip) per annotator with timestamps",
    "agreement": "on pair judgments (<, >, =) per (item, pair of completions); Cohen's kappa for exactly "
                 "two annotators, Krippendorff's alpha (nominal) for any number; all-bad counts as all ties",
}


def read_generated(path, notes: list[str] | None = None) -> list[tuple[object, list[str], dict]]:
    """(prompt, completions, extra keys) per row of a `rlhfkit generate` output file.

    Validation is the shared one of `rlhfkit.data` (UTF-8, no NUL, no text that shows as nothing),
    plus what ranking needs: completions that look the same (equal but for surrounding whitespace
    or zero-width characters) are merged into the first of them, since a pair of them could only
    be a tie or a pair that `rlhfkit reward` refuses; each merge is said in `notes`. A row left
    with fewer than 2 different completions is an error.
    """
    rows, merged = [], []
    for row, prompt, completions, extra in data.load_completions(path):
        if len(completions) < 2:
            raise DataError(path, row, "completions", "expected a list of at least 2 completions to rank "
                            "(run `rlhfkit generate` with 2 or more samples per prompt)")
        completions = [data.parse_text(path, row, f"completions[{i}]", c) for i, c in enumerate(completions)]
        if "ranks" in extra:
            raise DataError(path, row, "ranks", "this row is already ranked; import takes unranked generate output")
        first: dict[str, str] = {}
        for c in completions:
            first.setdefault(data.text_key(c), c)
        distinct = list(first.values())
        if len(distinct) < 2:
            raise DataError(path, row, "completions", f"all {len(completions)} completions are identical; there is "
                            "nothing to rank (sample more, or at a higher temperature, or leave the row out)")
        if len(distinct) < len(completions):
            merged.append((row, len(completions) - len(distinct)))
        try:
            json.dumps(extra, ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError, UnicodeEncodeError) as e:
            raise DataError(path, row, None, f"extra columns cannot be stored as JSON text ({e})") from None
        rows.append((prompt, distinct, extra))
    if merged and notes is not None:
        where = ", ".join(f"row {r}" for r, _ in merged[:10])
        where += f" and {len(merged) - 10} more" if len(merged) > 10 else ""
        notes.append(f"{sum(n for _, n in merged)} duplicate completions merged into an identical one in "
                     f"{len(merged)} rows ({where}); they show as one card")
    return rows


def rankings_rows(labels: list[dict]) -> list[dict]:
    return [{"prompt": lab["prompt"], "completions": lab["completions"], "ranks": lab["ranks"],
             "annotator": lab["annotator"], "label": lab["kind"], "item_id": lab["item_id"]}
            for lab in labels if lab["kind"] != "skip"]


def pairs_rows(labels: list[dict]) -> list[dict]:
    out = []
    for lab in labels:
        if lab["kind"] == "skip":
            continue
        for chosen, rejected in data.rankings_to_pairs(lab["completions"], lab["ranks"]):
            out.append({"prompt": lab["prompt"], "chosen": chosen, "rejected": rejected,
                        "annotator": lab["annotator"], "item_id": lab["item_id"]})
    return out


def summary(labels: list[dict], counts: dict | None = None) -> dict:
    judged = [lab for lab in labels if lab["kind"] != "skip"]
    per_person: dict[str, dict] = {}
    for lab in labels:
        per_person.setdefault(lab["annotator"], {"rank": 0, "all_bad": 0, "skip": 0})[lab["kind"]] += 1
    return {
        "labels": {k: sum(lab["kind"] == k for lab in labels) for k in ("rank", "all_bad", "skip")},
        "items_labelled": len({lab["item_id"] for lab in judged}),
        "per_annotator": per_person,
        "agreement": ranking_agreement((lab["item_id"], lab["annotator"], lab["ranks"]) for lab in judged),
        **({"items": counts["items"], "items_complete": counts["items_complete"]} if counts else {}),
    }


def export(store, fmt: str, out, raw=None, summary_path=None) -> dict:
    """Write rankings or pairs to `out`, all raw labels beside it, and a summary; returns the summary."""
    if fmt not in ("rankings", "pairs"):
        raise UserError(f"--format {fmt!r} is unknown; use rankings or pairs")
    out = Path(out)
    raw = Path(raw) if raw else out.with_name(out.stem + ".raw.jsonl")
    summary_path = Path(summary_path) if summary_path else out.with_name(out.stem + ".summary.json")
    if len({out.resolve(), raw.resolve(), summary_path.resolve()}) < 3:
        raise UserError("--out, --raw and --summary must be three different files")
    labels = store.all_labels()
    rows = rankings_rows(labels) if fmt == "rankings" else pairs_rows(labels)
    raw_rows = [{"item_id": lab["item_id"], "annotator": lab["annotator"], "label": lab["kind"],
                 "prompt": lab["prompt"], "completions": lab["completions"], "ranks": lab["ranks"],
                 "meta": lab["meta"], "created_at": lab["created_at"]} for lab in labels]
    result = {"format": fmt, "rows": len(rows), "out": str(out), "raw": str(raw), **summary(labels),
              "policy": POLICY}
    write_atomically([(out, _jsonl(rows)), (raw, _jsonl(raw_rows)),
                      (summary_path, lambda f: f.write(json.dumps(result, indent=2, ensure_ascii=False) + "\n"))])
    return result


def _jsonl(records):
    def write(f):
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return write


def write_atomically(files) -> None:
    """Write each (path, write(f)) to a temporary file beside it, then rename them all into place.

    Nothing is renamed until every file is written and on disk (fsync), so an export killed or
    failing midway leaves the previous files whole, never a truncated one that a loader would read
    without complaint. The renames come last, in order (the summary, which describes the others,
    last); each is atomic. A failure removes the temporary files; a kill -9 may leave one behind,
    named .NAME.XXXXXXXX.tmp.
    """
    temps: list[Path] = []
    try:
        for path, write in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
            temps.append(tmp)
            with open(tmp, "x", encoding="utf-8") as f:  # "x": a new file, with the umask's permissions
                write(f)
                f.flush()
                os.fsync(f.fileno())
        for (path, _), tmp in zip(files, temps):
            os.replace(tmp, path)
        for folder in {path.parent for path, _ in files}:  # make the renames themselves durable
            with contextlib.suppress(OSError):
                fd = os.open(folder, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
    except BaseException:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise
