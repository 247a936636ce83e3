"""Incremental re-indexing: new / changed / unchanged / removed / skipped files, interruption,
chunking changes, and indexes built with another embedding model."""

from __future__ import annotations

import os

import pytest

from rlhfkit.errors import UserError
from rlhfkit.rag.answering import Retriever
from rlhfkit.rag.indexing import index_documents
from rlhfkit.rag.stores import open_store


def _index(docs, url, embedder, **kw):
    return index_documents([str(d) for d in (docs if isinstance(docs, list) else [docs])], url, embedder=embedder,
                           progress=False, **kw)


def _top_doc(url, embedder, question):
    r = Retriever(url, embedder)
    try:
        return r.search(question, 1)[0].chunk
    finally:
        r.close()


def test_changed_removed_and_unchanged_files(db_url, docs, embedder):
    first = _index(docs, db_url, embedder)
    assert (len(first.new), len(first.changed), first.unchanged, len(first.removed)) == (3, 0, 0, 0)
    assert first.total_files == 3 and first.total_chunks == first.chunks_embedded == 5  # 2 md sections, 1 txt, 2 rows
    assert _top_doc(db_url, embedder, "where do guests get wifi?").doc.endswith("faq.jsonl#wifi")

    again = _index(docs, db_url, embedder)
    assert (len(again.new), len(again.changed), again.unchanged, again.chunks_embedded) == (0, 0, 3, 0)

    (docs / "canteen.txt").write_text("The canteen now serves lunch from 11:30 to 14:00.\n")
    (docs / "travel.md").unlink()
    (docs / "new.md").write_text("# Parking\n\nThe garage has forty places.\n")
    third = _index(docs, db_url, embedder)
    assert [os.path.basename(p) for p in third.changed] == ["canteen.txt"]
    assert [os.path.basename(p) for p in third.new] == ["new.md"]
    assert [os.path.basename(p) for p in third.removed] == ["travel.md"]
    assert third.unchanged == 1 and third.chunks_embedded == 2  # only the changed and the new file
    assert third.total_files == 3 and third.total_chunks == 4
    with open_store(db_url) as store:
        assert not any(h.chunk.path.endswith("travel.md") for h in store.search(embedder.encode_query("hotel"), 10))
    assert "14:00" in _top_doc(db_url, embedder, "When is lunch served?").text


def test_skipped_files_are_named_counted_and_emptied_files_leave(sqlite_url, docs, embedder, capsys):
    _index(docs, sqlite_url, embedder)
    (docs / "canteen.txt").write_text("   \n")  # emptied: its old chunks go
    (docs / "bad.txt").write_bytes(b"\xff\xfeoops")  # not UTF-8
    (docs / "broken.md").symlink_to(docs / "missing-target.md")  # cannot be read
    report = _index(docs, sqlite_url, embedder)
    kinds = sorted((os.path.basename(p), k) for p, k, _ in report.skipped)
    assert kinds == [("bad.txt", "unreadable"), ("broken.md", "unreadable"), ("canteen.txt", "empty")]
    assert [os.path.basename(p) for p in report.removed] == ["canteen.txt"]
    assert "3 skipped (1 empty, 2 unreadable)" in report.summary()
    err = capsys.readouterr().err
    assert f"skipped {docs / 'bad.txt'}: not UTF-8 text" in err
    assert f"skipped {docs / 'broken.md'}: cannot read" in err
    assert f"skipped {docs / 'canteen.txt'}: empty file; its 1 chunks leave the index" in err
    assert report.total_files == 2


def test_an_unreadable_file_keeps_its_last_version(sqlite_url, docs, embedder, capsys):
    _index(docs, sqlite_url, embedder)
    (docs / "faq.jsonl").write_text('{"text": "fine"}\n{broken\n')
    report = _index(docs, sqlite_url, embedder)
    assert report.skipped[0][1] == "unreadable" and not report.removed
    assert "row 2: unparsable JSON" in capsys.readouterr().err
    assert report.total_chunks == 5  # the two rows indexed before are still served


def test_only_files_under_the_given_folders_can_be_removed(sqlite_url, docs, tmp_path, embedder):
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("Keys are handed out by facilities.\n")
    _index([docs, other], sqlite_url, embedder)
    (other / "keep.txt").unlink()
    report = _index(docs, sqlite_url, embedder)  # `other` not given: its file stays
    assert not report.removed and report.total_files == 4
    report = _index(other, sqlite_url, embedder)
    assert [os.path.basename(p) for p in report.removed] == ["keep.txt"] and report.total_files == 3


def test_an_interrupted_run_keeps_whole_files_and_the_next_run_finishes(db_url, docs, embedder, monkeypatch):
    from rlhfkit.rag import stores

    cls = stores.SqliteVecStore if db_url.startswith("sqlite") else stores.PgVectorStore
    real_write = cls.write
    calls = []

    def write_then_interrupt(self, updates, *a, **k):
        calls.append([u.path for u in updates])
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if Ctrl-C arrived between two batches
        return real_write(self, updates, *a, **k)

    monkeypatch.setattr(cls, "write", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        _index(docs, db_url, embedder, commit_every=1)  # one file per transaction
    monkeypatch.setattr(cls, "write", real_write)
    with open_store(db_url) as store:
        files = store.files()
        assert list(files) == calls[0]  # the first batch, complete
        assert store.counts()[1] == files[calls[0][0]].chunks
    report = _index(docs, db_url, embedder)
    assert report.unchanged == 1 and len(report.new) == 2 and report.total_files == 3


def test_changing_the_chunking_rechunks_every_file(sqlite_url, docs, embedder):
    _index(docs, sqlite_url, embedder)
    report = _index(docs, sqlite_url, embedder, chunk_tokens=120, overlap=20)
    assert len(report.changed) == 3 and report.unchanged == 0


def test_chunks_larger_than_the_embedder_takes_are_capped(sqlite_url, docs, embedder, capsys):
    _index(docs, sqlite_url, embedder, chunk_tokens=1000, overlap=40)
    assert f"--chunk-tokens 1000 is more than minilm-l6 takes; using {embedder.max_tokens}" in capsys.readouterr().err


def test_an_index_of_another_embedding_model_is_refused_with_the_fix(sqlite_url, docs, embedder):
    from rlhfkit.models import resolve
    from rlhfkit.rag.embedding import get_embedder

    _index(docs, sqlite_url, embedder)
    tiny = get_embedder("tiny-bert")
    with pytest.raises(UserError) as e:
        _index(docs, sqlite_url, tiny)
    message = str(e.value)
    assert "built with embedding model 'minilm-l6' (384-dim)" in message and "'tiny-bert' (64-dim" in message
    assert "pass --embedder minilm-l6" in message and "--rebuild" in message
    with pytest.raises(UserError, match="leave --embedder out"):
        Retriever(sqlite_url, tiny)
    # the same weights under another name (its folder) are the same model
    Retriever(sqlite_url, resolve("minilm-l6")).close()
    # --rebuild swaps the whole index over to the new model
    report = _index(docs, sqlite_url, tiny, rebuild=True)
    assert len(report.new) == 3 and report.total_chunks == 5
    with open_store(sqlite_url) as store:
        assert store.meta().embedder == "tiny-bert" and store.meta().dim == 64


def test_missing_paths_and_unknown_types_are_errors(sqlite_url, tmp_path, embedder):
    with pytest.raises(UserError, match="no such file or folder"):
        _index(tmp_path / "nope", sqlite_url, embedder)
    (tmp_path / "x.pdf").write_bytes(b"%PDF")
    with pytest.raises(UserError, match="unknown document type '.pdf'"):
        _index(tmp_path / "x.pdf", sqlite_url, embedder)


def test_an_empty_index_says_how_to_build_it(sqlite_url, embedder):
    with pytest.raises(UserError, match="is empty; build it with `rlhfkit rag index"):
        Retriever(sqlite_url, embedder)
