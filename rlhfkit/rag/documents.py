"""Documents to index: finding files, reading them, splitting them into sections.

Kinds, by suffix:

- text (`.txt`, `.text`): the whole file is one section;
- Markdown (`.md`, `.markdown`): one section per heading, titled by the heading
  trail (`Expenses > Travel`); `#` lines inside code fences are not headings;
- JSONL (`.jsonl`, `.ndjson`): one document per row `{"text": str, "id"?: str|int,
  "title"?: str}` (`"content"` is accepted for `"text"`); the document is named
  `FILE#ID` (the row's line number when it has no id).

A folder is searched recursively for those suffixes (hidden files and folders
left out). A problem with one file never stops a run: `read_file` raises
`SkippedFile` with the reason, and the indexer names it, skips it and counts it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.errors import UserError

TEXT_SUFFIXES = (".txt", ".text")
MARKDOWN_SUFFIXES = (".md", ".markdown")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
SUFFIXES = TEXT_SUFFIXES + MARKDOWN_SUFFIXES + JSONL_SUFFIXES


class SkippedFile(Exception):
    """A file that cannot be indexed; `kind` is "empty" or "unreadable"."""

    def __init__(self, path, kind: str, reason: str):
        self.path, self.kind, self.reason = str(path), kind, reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class Section:
    """A piece of a file to chunk: `doc` names the document it belongs to (the file's
    path, or `path#id` for a JSONL row), `offset` is where `text` starts in the file's
    text and `line` the file line it starts on."""

    doc: str
    title: str | None
    text: str
    offset: int
    line: int


def find_files(paths: list[str]) -> tuple[list[Path], list[Path]]:
    """(files to index, roots): each path given is a file or a folder searched recursively.

    Files are absolute, resolved and sorted; a path that does not exist is an error,
    as is a file given by name whose kind is unknown.
    """
    files: set[Path] = set()
    roots: list[Path] = []
    if not paths:
        raise UserError("no documents given; pass --docs FILE_OR_FOLDER ...")
    for given in paths:
        p = Path(given).expanduser()
        if not p.exists():
            raise UserError(f"{given}: no such file or folder; check the path")
        p = p.resolve()
        roots.append(p)
        if p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in filenames:
                    if not name.startswith(".") and name.lower().endswith(SUFFIXES):
                        files.add(Path(dirpath) / name)
        elif p.suffix.lower() in SUFFIXES:
            files.add(p)
        else:
            raise UserError(f"{given}: unknown document type '{p.suffix}'; index text ({', '.join(TEXT_SUFFIXES)}), "
                            f"Markdown ({', '.join(MARKDOWN_SUFFIXES)}) or JSONL ({', '.join(JSONL_SUFFIXES)}) files")
    return sorted(files), roots


def under_roots(path: str, roots: list[Path]) -> bool:
    p = Path(path)
    return any(p == r or r in p.parents for r in roots)


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise SkippedFile(path, "unreadable", f"cannot read: {e.strerror or e}") from None


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse(path: Path, data: bytes) -> list[Section]:
    """The sections of a file's bytes; `SkippedFile` when it is empty or unreadable."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SkippedFile(path, "unreadable", f"not UTF-8 text (byte {e.start}); convert it to UTF-8") from None
    if not text.strip():
        raise SkippedFile(path, "empty", "empty file")
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        sections = _jsonl_sections(path, text)
    elif suffix in MARKDOWN_SUFFIXES:
        sections = _markdown_sections(str(path), text)
    else:
        sections = [_text_section(str(path), None, text, 0, len(text))]
    sections = [s for s in sections if s is not None]
    if not sections:
        raise SkippedFile(path, "empty", "no text to index")
    return sections


def _text_section(doc: str, title: str | None, text: str, start: int, end: int) -> Section | None:
    """The section `text[start:end]` of a file's text, blank space around it trimmed."""
    body = text[start:end]
    stripped = body.strip()
    if not stripped:
        return None
    start += len(body) - len(body.lstrip())
    return Section(doc=doc, title=title, text=stripped, offset=start, line=text.count("\n", 0, start) + 1)


_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^[ \t]{0,3}(```|~~~)")


def _markdown_sections(doc: str, text: str) -> list[Section | None]:
    """One section per ATX heading; the title is the trail of headings above it."""
    sections: list[Section | None] = []
    trail: list[tuple[int, str]] = []
    in_fence = False
    start = 0  # where the current section's body starts
    title: str | None = None
    pos = 0
    for line in text.splitlines(keepends=True):
        if _FENCE.match(line):
            in_fence = not in_fence
        m = None if in_fence else _HEADING.match(line.rstrip("\r\n"))
        if m:
            sections.append(_text_section(doc, title, text, start, pos))
            level, heading = len(m.group(1)), m.group(2).strip()
            trail = [(lv, h) for lv, h in trail if lv < level] + [(level, heading)]
            title = " > ".join(h for _, h in trail)
            start = pos + len(line)
        pos += len(line)
    sections.append(_text_section(doc, title, text, start, len(text)))
    return sections


def _jsonl_sections(path: Path, text: str) -> list[Section | None]:
    sections: list[Section | None] = []
    seen: set[str] = set()
    offset = 0
    for line_no, line in enumerate(text.splitlines(keepends=True), 1):
        here, offset = offset, offset + len(line)
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SkippedFile(path, "unreadable", f"row {line_no}: unparsable JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise SkippedFile(path, "unreadable", f"row {line_no}: expected an object {{\"text\": ...}}")
        body = row.get("text", row.get("content"))
        if not isinstance(body, str):
            raise SkippedFile(path, "unreadable", f"row {line_no}: no \"text\" string (keys: {sorted(row)})")
        ident = row.get("id", line_no)
        if not isinstance(ident, (str, int)) or isinstance(ident, bool):
            raise SkippedFile(path, "unreadable", f"row {line_no}: \"id\" must be a string or an integer")
        ident = str(ident)
        if ident in seen:
            raise SkippedFile(path, "unreadable", f"row {line_no}: id {ident!r} appears twice; ids name documents")
        seen.add(ident)
        title = row.get("title") if isinstance(row.get("title"), str) else None
        if body.strip():
            sections.append(Section(doc=f"{path}#{ident}", title=title, text=body.strip(), offset=here, line=line_no))
    return sections


def display_path(path: str) -> str:
    """A path relative to the current folder when it is under it."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path
