"""Preference data as token ids for DPO and KTO: pairs and unpaired examples encoded as SFT encodes
them (chat template, completion + EOS), and `--long-pairs`: every sequence longer than `--max-length`
counted and reported with its row, then truncated, left out, or an error; never silently cut."""

from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.errors import UserError


@dataclass
class EncodedPair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    row: int | None = None


@dataclass
class EncodedExample:
    prompt: list[int]
    completion: list[int]
    label: bool
    row: int | None = None


def encode_completions(tokenizer, prompts: list, completions: list[str], seq2seq: bool) -> list[tuple[list, list]]:
    """(prompt ids, completion ids) as SFT encodes them (`methods.sft.encode_examples`: chat template,
    completion + EOS), uncut."""
    from rlhfkit.methods.sft import SFTExample, encode_examples

    encoded, _ = encode_examples(tokenizer, [SFTExample(p, c) for p, c in zip(prompts, completions)], seq2seq,
                                 max_length=1 << 62)
    if seq2seq:
        return [(e.input_ids, e.labels) for e in encoded]
    out = []
    for e in encoded:
        n = sum(1 for t in e.labels if t == -100)
        out.append((e.input_ids[:n], e.input_ids[n:]))
    return out


def _rows(items, limit: int = 8) -> str:
    rows = [str(x.row) if x.row is not None else "?" for x in items[:limit]]
    return ", ".join(rows) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _too_long(prompt, completions, max_length: int, seq2seq: bool) -> bool:
    if seq2seq:
        return max([len(prompt)] + [len(c) for c in completions]) > max_length
    return len(prompt) + max(len(c) for c in completions) > max_length


def _cut(prompt, completions, max_length: int, seq2seq: bool):
    """The prompt keeps its end, completions their start; a causal completion keeps at least half the room."""
    if seq2seq:
        return prompt[-max_length:], [c[:max_length] for c in completions]
    longest = max(len(c) for c in completions)
    keep_c = min(longest, max(max_length // 2, max_length - len(prompt)))
    keep_p = max_length - keep_c
    return (prompt[-keep_p:] if keep_p else []), [c[:keep_c] for c in completions]


def fit_to_length(items: list, max_length: int, seq2seq: bool, policy: str, what: str, fields: tuple[str, ...]):
    """Apply --long-pairs to encoded pairs or examples; every long one is counted and its row reported."""
    long = [x for x in items if _too_long(x.prompt, [getattr(x, f) for f in fields], max_length, seq2seq)]
    if not long:
        return items
    head = (f"{len(long)} of {len(items)} {what} are longer than --max-length {max_length} tokens "
            f"(rows {_rows(long)})")
    if policy == "error":
        raise UserError(f"{head}; raise --max-length, or pass --long-pairs truncate or skip")
    if policy == "skip":
        print(f"rlhfkit dpo: {head}: left out (--long-pairs skip)")
        kept = [x for x in items if not any(x is y for y in long)]
        if not kept:
            raise UserError(f"every one of the {what} is longer than --max-length {max_length}; raise it")
        return kept
    print(f"rlhfkit dpo: {head}: truncated (prompt start and completion ends cut; --long-pairs skip or error "
          "to change)")
    for x in long:
        prompt, cut = _cut(x.prompt, [getattr(x, f) for f in fields], max_length, seq2seq)
        x.prompt = prompt
        for f, c in zip(fields, cut):
            setattr(x, f, c)
        if len(fields) == 2 and x.chosen == x.rejected:
            raise UserError(f"{what}: row {x.row} has identical chosen and rejected tokens after truncation to "
                            f"{max_length} tokens; raise --max-length or pass --long-pairs skip")
    return items


def encode_pairs(tokenizer, pairs, seq2seq: bool, max_length: int, policy: str = "truncate",
                 what: str = "pairs") -> list[EncodedPair]:
    if not pairs:
        return []
    chosen = encode_completions(tokenizer, [p.prompt for p in pairs], [p.chosen for p in pairs], seq2seq)
    rejected = encode_completions(tokenizer, [p.prompt for p in pairs], [p.rejected for p in pairs], seq2seq)
    out = [EncodedPair(c[0], c[1], r[1], p.row) for p, c, r in zip(pairs, chosen, rejected)]
    for x in out:
        if x.chosen == x.rejected:  # two texts that tokenise alike (e.g. differing only in invisible characters)
            raise UserError(f"{what}: row {x.row} has chosen and rejected texts with identical tokens; a pair "
                            "needs two different completions")
    return fit_to_length(out, max_length, seq2seq, policy, what, ("chosen", "rejected"))


def encode_unpaired(tokenizer, examples, seq2seq: bool, max_length: int, policy: str = "truncate",
                    what: str = "examples") -> list[EncodedExample]:
    if not examples:
        return []
    enc = encode_completions(tokenizer, [e.prompt for e in examples], [e.completion for e in examples], seq2seq)
    out = [EncodedExample(p, c, e.label, e.row) for e, (p, c) in zip(examples, enc)]
    return fit_to_length(out, max_length, seq2seq, policy, what, ("completion",))


def mismatched(n: int, chunk: int) -> list[int]:
    """KTO's KL pairs: example i's prompt with the completion of example mismatched[i], rotating by one
    within consecutive chunks of `chunk` examples (TRL's rotation within each batch of its dataset map)."""
    out = []
    for start in range(0, n, chunk):
        idx = list(range(start, min(start + chunk, n)))
        out += idx[-1:] + idx[:-1]
    return out
