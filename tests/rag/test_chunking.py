"""Chunking: overlap, every token limit (embedder, policy, title), boundaries, sections."""

from __future__ import annotations

import pytest

from rlhfkit.errors import UserError
from rlhfkit.rag.chunking import Chunker, TokenLimit
from rlhfkit.rag.documents import SkippedFile, parse


def _count(tok, text):
    return len(tok(text, add_special_tokens=False)["input_ids"])


def _long_text(sentences=80):
    return " ".join(f"Sentence number {i} talks about topic {i % 7} and the weather in town {i}." for i in range(sentences))


def test_windows_overlap_and_stay_within_the_limit(minilm_tokenizer):
    text = _long_text()
    chunker = Chunker(minilm_tokenizer, chunk_tokens=50, overlap=10)
    spans = chunker.split(text)
    assert len(spans) > 5
    for start, end in spans:
        assert _count(minilm_tokenizer, text[start:end]) <= 50
    for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
        assert s1 < s2 < e1 < e2  # each window starts inside the previous one: they overlap
        shared = _count(minilm_tokenizer, text[s2:e1])
        assert 5 <= shared <= 30, shared  # about `overlap` tokens, moved to word and sentence boundaries
    # nothing is lost: the windows cover the text from its first to its last character
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    covered = set()
    for start, end in spans:
        covered.update(range(start, end))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())


def test_windows_end_at_sentences_and_start_at_words(minilm_tokenizer):
    text = _long_text()
    spans = Chunker(minilm_tokenizer, chunk_tokens=50, overlap=10).split(text)
    for start, end in spans[:-1]:
        assert text[end - 1] == "."  # a sentence end was found in the window's second half
    for start, _ in spans[1:]:
        assert text[start - 1] == " "  # never starts inside a word


def test_paragraph_breaks_are_preferred(minilm_tokenizer):
    para = "This paragraph has a few short words. It ends here."
    text = "\n\n".join([para] * 12)
    for start, end in Chunker(minilm_tokenizer, chunk_tokens=40, overlap=0).split(text)[:-1]:
        assert text[end:end + 2] == "\n\n"


def test_short_text_is_one_chunk(minilm_tokenizer):
    assert Chunker(minilm_tokenizer, 200, 40).split("Just one line.") == [(0, 14)]


def test_the_title_counts_against_the_limit(minilm_tokenizer):
    text = _long_text(30)
    chunker = Chunker(minilm_tokenizer, chunk_tokens=40, overlap=5)
    title = "Expense policy > Receipts and approvals"
    for start, end in chunker.split(text, title):
        assert _count(minilm_tokenizer, f"{title}\n{text[start:end]}") <= 40
    with pytest.raises(UserError, match="section title"):
        Chunker(minilm_tokenizer, chunk_tokens=12, overlap=2).split(text, "a very long heading " * 5)


def test_a_second_tokenizer_limit_holds_for_every_chunk(minilm_tokenizer):
    """The policy's share of its context (its own tokenizer) binds when it is tighter."""
    from rlhfkit.models import load_tokenizer

    gpt2 = load_tokenizer("tiny-gpt2")  # a 512-token BPE trained on a tiny corpus: many tokens per word
    text = _long_text(40)
    policy = TokenLimit(gpt2, 60, "policy tiny-gpt2")
    chunker = Chunker(minilm_tokenizer, chunk_tokens=200, overlap=20, limits=(policy,))
    spans = chunker.split(text)
    assert len(spans) > 1
    for start, end in spans:
        assert _count(gpt2, text[start:end]) <= 60
        assert _count(minilm_tokenizer, text[start:end]) <= 200
    assert "policy tiny-gpt2" in chunker.signature()


def test_policy_limit_from_the_context_window():
    from rlhfkit.rag.indexing import policy_limit

    limit = policy_limit("tiny-gpt2", top_k=5, max_new_tokens=48)  # n_positions 512
    assert 16 <= limit.max_tokens < (512 - 48) // 5
    with pytest.raises(UserError, match="lower --top-k"):
        policy_limit("tiny-gpt2", top_k=40, max_new_tokens=400)


def test_bad_settings_are_refused(minilm_tokenizer):
    with pytest.raises(UserError, match="--overlap"):
        Chunker(minilm_tokenizer, chunk_tokens=100, overlap=60)
    with pytest.raises(UserError, match="too small"):
        Chunker(minilm_tokenizer, chunk_tokens=4, overlap=0)


def test_markdown_sections_have_heading_trails_and_lines(tmp_path, minilm_tokenizer):
    path = tmp_path / "guide.md"
    text = ("Intro line.\n\n# Guide\n\nTop text.\n\n## Install\n\nRun it.\n\n```sh\n# not a heading\n```\n\n"
            "### Linux\n\nUse apt.\n\n## Use\n\nAsk away.\n")
    path.write_text(text)
    sections = parse(path, path.read_bytes())
    assert [s.title for s in sections] == [None, "Guide", "Guide > Install", "Guide > Install > Linux", "Guide > Use"]
    assert "# not a heading" in sections[2].text
    assert [s.line for s in sections] == [1, 5, 9, 17, 21]
    chunks = Chunker(minilm_tokenizer, 200, 40).chunk_sections(sections)
    assert [c.position for c in chunks] == list(range(5))
    assert chunks[3].content == "Guide > Install > Linux\nUse apt."
    assert all(c.doc == str(path) for c in chunks)
    assert chunks[2].line_start == 9 and chunks[2].line_end == 13


def test_jsonl_rows_are_documents(tmp_path):
    path = tmp_path / "faq.jsonl"
    path.write_text('{"id": "a", "text": "Alpha.", "title": "A"}\n\n{"content": "Beta."}\n{"id": 7, "text": "  "}\n')
    sections = parse(path, path.read_bytes())
    assert [(s.doc, s.title, s.text, s.line) for s in sections] == [
        (f"{path}#a", "A", "Alpha.", 1), (f"{path}#3", None, "Beta.", 3)]


@pytest.mark.parametrize("content, kind, message", [
    (b"", "empty", "empty file"),
    (b"  \n\n ", "empty", "empty file"),
    (b"\xff\xfe\x00bad", "unreadable", "not UTF-8"),
])
def test_empty_and_unreadable_text(tmp_path, content, kind, message):
    path = tmp_path / "x.txt"
    path.write_bytes(content)
    with pytest.raises(SkippedFile, match=message) as e:
        parse(path, content)
    assert e.value.kind == kind and e.value.path == str(path)


@pytest.mark.parametrize("line, message", [
    ('{"text": "ok"}\n{not json\n', "row 2: unparsable JSON"),
    ('["a list"]\n', "row 1: expected an object"),
    ('{"body": "x"}\n', 'row 1: no "text" string'),
    ('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', "row 2: id 'a' appears twice"),
])
def test_bad_jsonl_rows_name_the_row(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(line)
    with pytest.raises(SkippedFile, match=message):
        parse(path, path.read_bytes())
