"""`rlhfkit label`: turn completions into rankings.

`rlhfkit label script --by SOURCE --in completions.jsonl --out rankings.jsonl`
is the scripted labeler: it scores the K completions of each prompt with a
reward source (any `get_reward` spec) and writes the rankings format
{prompt, completions, ranks (1 = best), scores}, so the pipeline runs without
people. Optional noise imitates disagreeing annotators; a tie threshold
imitates "these two are as good as each other".

The human side (`label serve`, `import`, `add-annotator`, `export`) lives in
`rlhfkit.feedback` and joins the same command group when installed.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass
from typing import Sequence

from rlhfkit.config import option
from rlhfkit.data import is_blank
from rlhfkit.errors import UserError


@dataclass
class ScriptLabelConfig:
    by: str = option("profanity", "reward spec that scores completions (see docs/rewards.md), e.g. profanity, vader")
    input: str | None = option(None, "completions file: rows {prompt|messages, completions: [...]} as `rlhfkit generate` writes")
    out: str = option("rankings.jsonl", "output rankings JSONL: {prompt, completions, ranks, scores}")
    noise: float = option(0.0, "Gaussian noise added to scores, in standard deviations of all scores (0 = exact)")
    tie_threshold: float = option(0.0, "completions whose scores differ by at most this share a rank")
    batch_size: int = option(32, "completions a classifier reward scores at once")
    seed: int = option(0, "random seed for the noise")


def rank_scores(scores: Sequence[float], tie_threshold: float = 0.0) -> list[int]:
    """Dense ranks, 1 = highest score; a score within `tie_threshold` of the next higher score shares its rank (ties chain)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    ranks = [0] * len(scores)
    rank, prev = 0, None
    for i in order:
        if prev is None or prev - scores[i] > tie_threshold + 1e-12:
            rank += 1
        ranks[i] = rank
        prev = scores[i]
    return ranks


def _read_completion_rows(path) -> list[tuple[int, object, list[str]]]:
    from rlhfkit.data import load_completions

    return [(row, prompt, completions) for row, prompt, completions, _ in load_completions(path)]


def script_label(rows, source, noise: float = 0.0, tie_threshold: float = 0.0, seed: int = 0,
                 path: str = "<rows>", batch_size: int | None = None) -> tuple[list[dict], dict]:
    """Rank each row's completions by `source` (a spec, callable or RewardSource).

    rows: (row number, prompt, completions) as read from a completions file.
    Empty completions are left out and rows with fewer than two distinct
    non-empty completions are skipped; both are counted in the returned stats.
    Identical completions always share a rank, so no pair compares a text
    with itself. Returns (ranking records, stats).
    """
    from rlhfkit.data import prompt_to_json
    from rlhfkit.rewards import get_reward

    reward = get_reward(source, **({"batch_size": batch_size} if batch_size else {}))
    kept, empty, skipped = [], 0, []
    for row, prompt, completions in rows:
        texts = [t for t in (c.replace("\x00", "") for c in completions) if not is_blank(t)]  # as the loaders read text
        empty += len(completions) - len(texts)
        if len({t.strip() for t in texts}) < 2:
            skipped.append(row)
            continue
        kept.append((row, prompt, texts))
    if not kept:
        raise UserError(f"{path}: no row has two different non-empty completions to rank")
    # Score each distinct text of a row once: identical completions get identical scores.
    flat_prompts, flat_texts, index = [], [], []
    for _, prompt, texts in kept:
        unique = list(dict.fromkeys(t.strip() for t in texts))
        index.append(unique)
        flat_prompts += [prompt] * len(unique)
        flat_texts += unique
    scores = reward(flat_prompts, flat_texts)
    if not reward.higher_is_better:
        scores = [-s for s in scores]  # rank 1 is always the best
    noisy = list(scores)
    if noise > 0:
        spread = statistics.pstdev(scores) or 1.0
        rng = random.Random(seed)
        noisy = [s + rng.gauss(0.0, noise * spread) for s in scores]
    records, pos, pairs = [], 0, 0
    for (row, prompt, texts), unique in zip(kept, index):
        by_text = dict(zip(unique, range(pos, pos + len(unique))))
        pos += len(unique)
        unique_ranks = dict(zip(unique, rank_scores([noisy[by_text[u]] for u in unique], tie_threshold)))
        ranks = [unique_ranks[t.strip()] for t in texts]
        shown = [scores[by_text[t.strip()]] * (1 if reward.higher_is_better else -1) for t in texts]
        pairs += sum(1 for a in ranks for b in ranks if a < b)
        records.append({**prompt_to_json(prompt), "completions": texts, "ranks": ranks,
                        "scores": [round(s, 6) for s in shown], "labeler": f"script:{reward.name}"})
    stats = {"rows": len(records), "pairs": pairs, "empty_completions": empty, "skipped_rows": skipped,
             "mean_score": statistics.fmean(scores) * (1 if reward.higher_is_better else -1)}
    return records, stats


def run_script(config: ScriptLabelConfig) -> int:
    from rlhfkit.datafiles import write_jsonl

    if not config.input:
        raise UserError("no completions file; pass --in FILE.jsonl (as written by `rlhfkit generate`)")
    if config.noise < 0 or config.tie_threshold < 0:
        raise UserError("--noise and --tie-threshold must be >= 0")
    rows = _read_completion_rows(config.input)
    records, stats = script_label(rows, config.by, config.noise, config.tie_threshold, config.seed, config.input,
                                  config.batch_size)
    write_jsonl(config.out, records)
    notes = []
    if stats["empty_completions"]:
        notes.append(f"{stats['empty_completions']} empty completions left out")
    if stats["skipped_rows"]:
        shown = ", ".join(map(str, stats["skipped_rows"][:10])) + (" ..." if len(stats["skipped_rows"]) > 10 else "")
        notes.append(f"{len(stats['skipped_rows'])} rows skipped with fewer than 2 different completions (rows {shown})")
    print(
        f"rlhfkit label script: ranked {stats['rows']} prompts by {config.by} (mean score {stats['mean_score']:.4f}), "
        f"{stats['pairs']} preference pairs, wrote {config.out}" + ("; " + "; ".join(notes) if notes else "")
    )
    return 0
