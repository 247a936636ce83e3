"""Prompt, preference and ranking data: loading, validation, rankings to pairs.

Formats (one record per row):

- prompts:     {"prompt": str} or {"messages": [{"role", "content"}, ...]}
- preferences: {"prompt", "chosen", "rejected"}, or the conversational variant
               where "chosen"/"rejected" are message lists ending in the
               assistant reply and sharing the prompt messages before it; with
               no "prompt" column the prompt is implicit: the longest common
               prefix of chosen and rejected (messages, or text as in hh-rlhf),
               as TRL's `extract_prompt`
- unpaired:    {"prompt", "completion", "label": true/false} (KTO's desirable /
               undesirable examples); pairs and rankings convert to it
               (`pairs_to_unpaired`)
- rankings:    {"prompt", "completions": [c1..cN], "ranks": [r1..rN]}, 1 = best;
               equal ranks are a tie and give no pair

Files (`rlhfkit.datafiles`): JSONL (or a JSON list), CSV, Parquet, or a saved `datasets`
folder. List columns in CSV cells are JSON text. Every problem is a `DataError` naming the
file, the row (1-based, as a person counts lines or data rows), the column and
what is wrong. Nothing is dropped silently.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from rlhfkit.datafiles import read_records
from rlhfkit.errors import DataError, UserError

Message = dict[str, str]
Prompt = Union[str, list[Message]]  # plain text or a chat conversation


@dataclass(frozen=True)
class Preference:
    prompt: Prompt
    chosen: str
    rejected: str
    row: int | None = field(default=None, compare=False)  # the file's row, for messages naming it
    tie: bool = False  # ranked equal: no preference between the two (kept only when asked for)


@dataclass(frozen=True)
class Unpaired:
    """One KTO example: a completion marked desirable (label True) or undesirable."""

    prompt: Prompt
    completion: str
    label: bool
    row: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Ranking:
    prompt: Prompt
    completions: list[str]
    ranks: list[int]


# ---------------------------------------------------------------- field checks


def _column(path, row, record, name):
    if name not in record or record[name] is None:
        have = ", ".join(sorted(k for k in record if not k.startswith("_"))) or "none"
        raise DataError(path, row, name, f"missing column (columns present: {have})")
    return record[name]


def maybe_json(value):
    """CSV cells hold lists as JSON text."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def is_blank(text: str) -> bool:
    """True for text that shows as nothing: whitespace, zero-width and other format or control characters."""
    return all(c.isspace() or unicodedata.category(c) in ("Cf", "Cc") for c in text)


def text_key(text: str) -> str:
    """What a reader sees of a text, for telling whether two texts are the same: no invisible
    format characters (zero-width spaces, joiners, byte-order marks), no surrounding whitespace."""
    if text.isascii():
        return text.strip()
    return "".join(c for c in text if unicodedata.category(c) != "Cf").strip()


def parse_text(path, row, column, value) -> str:
    if not isinstance(value, str):
        raise DataError(path, row, column, f"expected text, got {type(value).__name__}")
    if "\x00" in value:
        raise DataError(path, row, column, f"contains a NUL character (\\u0000) at position {value.index(chr(0)) + 1}; "
                        "remove it (PostgreSQL cannot store it and it is never meaningful text)")
    if _SURROGATE.search(value):
        raise DataError(path, row, column, "contains an unpaired surrogate (\\ud800-\\udfff), which is not valid "
                        "Unicode; fix the program that wrote the file")
    if is_blank(value):
        raise DataError(path, row, column, "empty text" + ("" if not value.strip() else
                                                           " (only invisible characters such as zero-width spaces)"))
    return value


def parse_messages(path, row, column, value) -> list[Message]:
    value = maybe_json(value)
    if not isinstance(value, list) or not value:
        raise DataError(path, row, column, "expected a non-empty list of {role, content} messages")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(path, row, column, f"message {i} is not a {{role, content}} object")
        if m["role"] not in ("system", "user", "assistant"):
            raise DataError(path, row, column, f"message {i} has unknown role {m['role']!r}")
        parse_text(path, row, f"{column}[{i}].content", m["content"])
    return [{"role": m["role"], "content": m["content"]} for m in value]


def parse_prompt(path, row, record) -> Prompt:
    if "prompt" in record and record["prompt"] is not None:
        value = maybe_json(record["prompt"])
        if isinstance(value, list):
            return parse_messages(path, row, "prompt", value)
        return parse_text(path, row, "prompt", value)
    if "messages" in record and record["messages"] is not None:
        return parse_messages(path, row, "messages", record["messages"])
    _column(path, row, record, "prompt")  # raises "missing column"


def _validate_ranks(path, row, ranks, n) -> list[int]:
    ranks = maybe_json(ranks)
    if not isinstance(ranks, list):
        raise DataError(path, row, "ranks", f"expected a list of integers, got {type(ranks).__name__}")
    if len(ranks) != n:
        raise DataError(path, row, "ranks", f"{len(ranks)} ranks for {n} completions; give one rank per completion")
    out = []
    for r in ranks:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or int(r) != r:
            raise DataError(path, row, "ranks", f"not a ranking: {ranks!r} holds {r!r}, ranks are integers 1..{n}")
        out.append(int(r))
    if out and (min(out) != 1 or max(out) > n):
        raise DataError(
            path, row, "ranks", f"not a ranking: {ranks!r}; the best completion has rank 1 and no rank exceeds {n}"
        )
    return out


# ---------------------------------------------------------------- loaders


def load_prompts(path: str | Path) -> list[Prompt]:
    """Prompts from a file: text, or message lists for chat models."""
    records = read_records(path)
    if not records:
        raise UserError(f"{path}: no rows; a prompts file needs one {{\"prompt\": ...}} per row")
    return [parse_prompt(path, row, rec) for row, rec in records]


def load_completions(path: str | Path) -> list[tuple[int, Prompt, list[str], dict]]:
    """Rows of a `rlhfkit generate` file: (row, prompt, completion texts, other keys).

    Only the shape is checked here; callers add their own policy (the scripted
    labeler skips empty completions, the feedback app rejects them).
    """
    rows = []
    for row, rec in read_records(path):
        prompt = parse_prompt(path, row, rec)
        completions = maybe_json(_column(path, row, rec, "completions"))
        if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
            raise DataError(path, row, "completions", "expected a list of completion texts")
        extra = {k: v for k, v in rec.items() if k not in ("prompt", "messages", "completions")}
        rows.append((row, prompt, completions, extra))
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows


def load_rankings(path: str | Path) -> list[Ranking]:
    """Rankings rows: a prompt, N >= 2 completions and their ranks (1 = best)."""
    out = []
    for row, rec in read_records(path):
        out.append(_ranking(path, row, rec))
    if not out:
        raise UserError(f"{path}: no rows")
    return out


def _ranking(path, row, rec) -> Ranking:
    prompt = parse_prompt(path, row, rec)
    completions = maybe_json(_column(path, row, rec, "completions"))
    if not isinstance(completions, list) or len(completions) < 2:
        raise DataError(path, row, "completions", "expected a list of at least 2 completions")
    completions = [parse_text(path, row, f"completions[{i}]", c) for i, c in enumerate(completions)]
    ranks = _validate_ranks(path, row, _column(path, row, rec, "ranks"), len(completions))
    return Ranking(prompt, completions, ranks)


def load_preferences(path: str | Path, ties: bool = False) -> list[Preference]:
    """Preference pairs from a pairs file, or expanded from a rankings file.

    A file whose rows carry "ranks" is read as rankings and each row becomes its
    N-choose-2 pairs (`rankings_to_pairs`); a ranking whose completions are all
    tied gives no pair. With `ties`, each ranking's equally ranked pairs come too,
    as `Preference(..., tie=True)` after its decisive ones.
    """
    records = read_records(path)
    if not records:
        raise UserError(f"{path}: no rows")
    if "ranks" in records[0][1]:
        pairs = []
        for row, rec in records:
            r = _ranking(path, row, rec)
            for c, j in rankings_to_pairs(r.completions, r.ranks):
                if text_key(c) == text_key(j):
                    raise DataError(path, row, "completions", f"the same completion {c[:40]!r} has two different "
                                    "ranks; a pair needs two different texts (give equal texts equal ranks)")
                pairs.append(Preference(r.prompt, c, j, row))
            if ties:
                pairs.extend(Preference(r.prompt, a, b, row, tie=True) for a, b in tied_pairs(r.completions, r.ranks))
        if not any(not p.tie for p in pairs):
            raise UserError(f"{path}: every ranking is a full tie, so there are no preference pairs to learn from")
        return pairs
    return [_preference(path, row, rec) for row, rec in records]


def _preference(path, row, rec) -> Preference:
    chosen = maybe_json(_column(path, row, rec, "chosen"))
    rejected = maybe_json(_column(path, row, rec, "rejected"))
    if isinstance(chosen, list) or isinstance(rejected, list):
        # Conversational variant: shared prompt messages, then one assistant reply each.
        chosen_m = parse_messages(path, row, "chosen", chosen)
        rejected_m = parse_messages(path, row, "rejected", rejected)
        if "prompt" in rec and rec["prompt"] is not None:
            prompt = parse_prompt(path, row, rec)
        else:  # the implicit prompt: the messages both conversations share (TRL's extract_prompt)
            shared = 0
            while shared < min(len(chosen_m), len(rejected_m)) and chosen_m[shared] == rejected_m[shared]:
                shared += 1
            prompt = chosen_m[:shared]
            if not prompt:
                raise DataError(path, row, "chosen", "no prompt column and the conversations share no prompt "
                                "messages before the reply; add a \"prompt\" column")
            if shared != len(chosen_m) - 1 or shared != len(rejected_m) - 1:
                raise DataError(path, row, "rejected", "chosen and rejected conversations differ before the last "
                                "reply; after the shared prompt each must be one assistant reply")
        for col, conv in (("chosen", chosen_m), ("rejected", rejected_m)):
            if conv[-1]["role"] != "assistant":
                raise DataError(path, row, col, "the last message must be the assistant's reply")
        chosen, rejected = chosen_m[-1]["content"], rejected_m[-1]["content"]
    else:
        chosen = parse_text(path, row, "chosen", chosen)
        rejected = parse_text(path, row, "rejected", rejected)
        if rec.get("prompt") is None and rec.get("messages") is None:
            prompt, chosen, rejected = _implicit_text_prompt(path, row, chosen, rejected)
        else:
            prompt = parse_prompt(path, row, rec)
    if text_key(chosen) == text_key(rejected):
        raise DataError(path, row, "rejected", "chosen is identical to rejected; a pair needs two different texts")
    return Preference(prompt, chosen, rejected, row)


def _implicit_text_prompt(path, row, chosen: str, rejected: str) -> tuple[str, str, str]:
    """hh-rlhf style rows (the dialogue inside chosen and rejected): the prompt is their longest common
    prefix, less a trailing space, as TRL's `extract_prompt`."""
    idx = 0
    while idx < min(len(chosen), len(rejected)) and chosen[idx] == rejected[idx]:
        idx += 1
    if idx == len(chosen) or idx == len(rejected):
        raise DataError(path, row, "rejected", "one of chosen and rejected is a prefix of the other, so there is no "
                        "completion left after the shared prompt; add a \"prompt\" column")
    if idx and chosen[idx - 1] == " ":
        idx -= 1
    if idx == 0 or is_blank(chosen[:idx]):
        raise DataError(path, row, "prompt", "missing column, and chosen and rejected share no prompt text to "
                        "take it from; add a \"prompt\" column")
    return chosen[:idx], chosen[idx:], rejected[idx:]


def load_unpaired(path: str | Path) -> list[Unpaired]:
    """KTO rows {prompt, completion, label}, or pairs / rankings converted (`pairs_to_unpaired`)."""
    records = read_records(path)
    if not records:
        raise UserError(f"{path}: no rows")
    if "label" not in records[0][1]:
        return pairs_to_unpaired(load_preferences(path))
    out = []
    for row, rec in records:
        prompt = parse_prompt(path, row, rec)
        completion = parse_text(path, row, "completion", _column(path, row, rec, "completion"))
        label = maybe_json(_column(path, row, rec, "label"))
        if isinstance(label, str) and label.strip().lower() in ("true", "false", "1", "0"):
            label = label.strip().lower() in ("true", "1")  # CSV cells
        if not isinstance(label, bool) and label not in (0, 1):
            raise DataError(path, row, "label", f"expected true (desirable) or false (undesirable), got {label!r}")
        out.append(Unpaired(prompt, completion, bool(label), row))
    return out


def pairs_to_unpaired(pairs: list[Preference]) -> list[Unpaired]:
    """Each pair's chosen as a desirable and its rejected as an undesirable example (TRL's
    `unpair_preference_dataset`); a completion repeated with the same label (a ranking's pairs
    share completions) is kept once."""
    seen, out = set(), []
    for p in pairs:
        for text, label in ((p.chosen, True), (p.rejected, False)):
            key = (json.dumps(p.prompt, sort_keys=True), text_key(text), label)
            if key not in seen:
                seen.add(key)
                out.append(Unpaired(p.prompt, text, label, p.row))
    return out


def tied_pairs(completions: list[str], ranks: list[int]) -> list[tuple[str, str]]:
    """The pairs of different completions a ranking ranks equal, in position order."""
    n = len(completions)
    return [(completions[a], completions[b]) for a in range(n) for b in range(a + 1, n)
            if ranks[a] == ranks[b] and text_key(completions[a]) != text_key(completions[b])]


def rankings_to_pairs(completions: list[str], ranks: list[int]) -> list[tuple[str, str]]:
    """All (preferred, other) pairs of a ranking; ties give no pair.

    Pairs come in order of preference: by the preferred completion's rank, then
    the other's rank, then position. Ranks [2, 1, 3] over [a, b, c] give
    (b, a), (b, c), (a, c).
    """
    if len(completions) != len(ranks):
        raise ValueError(f"{len(ranks)} ranks for {len(completions)} completions")
    order = sorted(range(len(ranks)), key=lambda i: (ranks[i], i))
    pairs = []
    for a_pos, a in enumerate(order):
        for b in order[a_pos + 1 :]:
            if ranks[a] < ranks[b]:
                pairs.append((completions[a], completions[b]))
    return pairs


def prompt_text(prompt: Prompt) -> str:
    """A prompt as plain text, for reward models and tables (the last user turn of a chat)."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[-1] if users else prompt[-1]["content"]


def prompt_to_json(prompt: Prompt) -> dict:
    """The prompts-format record of a prompt."""
    return {"prompt": prompt} if isinstance(prompt, str) else {"messages": prompt}
