"""Chunking: sections into overlapping windows that fit every token limit.

A chunk is what gets embedded and, at question time, pasted into the prompt:
its section title (when it has one) on the first line, then the text. Windows
are cut in the embedding model's tokens:

- at most `chunk_tokens` tokens, title included, and never more than the
  embedding model takes (`Embedder.max_tokens`: its max_seq_length less its
  special tokens), so nothing is silently truncated when embedding;
- consecutive windows of a section share `overlap` tokens, so a sentence cut
  at one window's end is whole in the next;
- a window ends, where it can, at a paragraph break, else a sentence end, else
  between words (searched back over the last half of the window), and starts
  at a word;
- any further limit (`TokenLimit`: a tokenizer and a count, such as the policy's
  share of its context window for one of the top-k chunks) holds for every
  chunk: a section whose chunks exceed one is cut again with smaller windows.

Every chunk is re-tokenized and checked against every limit, so the limits hold
for the text as stored, not only for the token windows it was cut from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from rlhfkit.errors import UserError
from rlhfkit.rag.documents import Section

CHUNKER_VERSION = 1  # bump when the cutting rules change: every file is re-chunked


@dataclass(frozen=True)
class TokenLimit:
    """Chunks (title and text) must be at most `max_tokens` tokens of `tokenizer`."""

    tokenizer: object
    max_tokens: int
    what: str  # for messages: "the policy's context share (smollm2-135m: ...)"

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass(frozen=True)
class Chunk:
    """One stored chunk: `position` counts the chunks of its file from 0."""

    doc: str
    position: int
    title: str | None
    text: str
    line_start: int
    line_end: int

    @property
    def content(self) -> str:
        """What is embedded and shown to the model: the title line, then the text."""
        return f"{self.title}\n{self.text}" if self.title else self.text


class Chunker:
    def __init__(self, tokenizer, chunk_tokens: int, overlap: int, limits: tuple[TokenLimit, ...] = ()):
        if chunk_tokens < 8:
            raise UserError(f"--chunk-tokens {chunk_tokens} is too small; use at least 8 (e.g. 200)")
        if not 0 <= overlap < chunk_tokens // 2:
            raise UserError(f"--overlap {overlap} must be at least 0 and under half of --chunk-tokens ({chunk_tokens})")
        self.tokenizer = tokenizer
        self.chunk_tokens = chunk_tokens
        self.overlap = overlap
        self.limits = (TokenLimit(tokenizer, chunk_tokens, f"--chunk-tokens {chunk_tokens}"),) + tuple(limits)

    def signature(self) -> str:
        """What decides the cut: a file chunked under another signature is chunked again."""
        return json.dumps({"version": CHUNKER_VERSION, "chunk_tokens": self.chunk_tokens, "overlap": self.overlap,
                           "limits": sorted([lim.what, lim.max_tokens] for lim in self.limits[1:])})

    def chunk_sections(self, sections: list[Section]) -> list[Chunk]:
        """All chunks of a file's sections, numbered in order."""
        chunks: list[Chunk] = []
        for section in sections:
            for start, end in self.split(section.text, section.title):
                text = section.text[start:end]
                line = section.line + section.text.count("\n", 0, start)
                chunks.append(Chunk(doc=section.doc, position=len(chunks), title=section.title, text=text,
                                    line_start=line, line_end=line + text.count("\n")))
        return chunks

    # ------------------------------------------------------------ cutting

    def split(self, text: str, title: str | None = None) -> list[tuple[int, int]]:
        """Character spans of `text`, each (with the title) within every limit."""
        title_tokens = self.limits[0].count(title + "\n") if title else 0
        window = self.chunk_tokens - title_tokens
        if window < max(8, 2 * self.overlap):
            raise UserError(f"the section title {title[:60]!r} takes {title_tokens} of --chunk-tokens "
                            f"{self.chunk_tokens}; raise --chunk-tokens or shorten the heading")
        overlap = self.overlap
        while True:
            spans = self._windows(text, window, overlap)
            worst = 1.0
            for start, end in spans:
                content = f"{title}\n{text[start:end]}" if title else text[start:end]
                for lim in self.limits:
                    n = lim.count(content)
                    if n > lim.max_tokens:
                        worst = min(worst, lim.max_tokens / n)
            if worst == 1.0:
                return spans
            shrunk = int(window * worst * 0.95)
            if shrunk >= window:
                shrunk = window - 1
            if shrunk < 4:
                raise UserError(f"cannot cut {text[:40]!r}... (title {title!r}) into chunks within every token "
                                f"limit ({'; '.join(f'{lim.what}: {lim.max_tokens}' for lim in self.limits)}); "
                                "lower --top-k or --max-new-tokens, or index for a policy with a longer context")
            window, overlap = shrunk, min(overlap, shrunk // 4)

    def _windows(self, text: str, window: int, overlap: int) -> list[tuple[int, int]]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = [(a, b) for a, b in enc["offset_mapping"] if b > a]
        n = len(offsets)
        if n == 0:
            return [(0, len(text))] if text.strip() else []
        if n <= window:
            return [(offsets[0][0], offsets[-1][1])]
        spans = []
        s = 0
        while True:
            e = min(s + window, n)
            if e < n:
                e = self._cut(text, offsets, s, e)
            spans.append((offsets[s][0], offsets[e - 1][1]))
            if e >= n:
                return spans
            nxt = max(e - overlap, s + 1)
            # start at a word: move forward to a token that follows blank space (or punctuation)
            while nxt < e and nxt > 0 and offsets[nxt][0] == offsets[nxt - 1][1] and text[offsets[nxt][0]].isalnum() \
                    and text[offsets[nxt - 1][1] - 1].isalnum():
                nxt += 1
            s = nxt

    @staticmethod
    def _cut(text: str, offsets: list[tuple[int, int]], s: int, e: int) -> int:
        """Where a window [s, e) should end: the latest paragraph break, else sentence end, else word gap
        in its second half (token index of the first token after the cut)."""
        lo = s + max(1, (e - s) // 2)
        best = {0: None, 1: None, 2: None}
        for j in range(e, lo - 1, -1):  # the cut falls before token j
            gap = text[offsets[j - 1][1]:offsets[j][0]]
            if best[0] is None and "\n\n" in gap:
                best[0] = j
                break
            if best[1] is None and gap and text[offsets[j - 1][1] - 1] in ".!?:;":
                best[1] = j
            if best[2] is None and gap:
                best[2] = j
        for rank in (0, 1, 2):
            if best[rank] is not None:
                return best[rank]
        return e
