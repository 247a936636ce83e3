"""Both stores (SQLite + sqlite-vec, PostgreSQL + pgvector): search, atomic writes, snapshots."""

from __future__ import annotations

import numpy as np
import pytest

from rlhfkit.errors import UserError
from rlhfkit.rag.stores import FileUpdate, Meta, PgVectorStore, SqliteVecStore, StoredChunk, open_store

DIM = 8


def _unit(i, dim=DIM):
    v = np.zeros(dim, dtype=np.float32)
    v[i % dim] = 1.0
    v[(i + 1) % dim] = 0.3
    return v / np.linalg.norm(v)


def _update(path, n, offset=0, dim=DIM, tag="v1"):
    chunks = [StoredChunk(path, path, i, f"T{i}", f"{tag} chunk {i} of {path}", i + 1, i + 1) for i in range(n)]
    return FileUpdate(path, f"hash-{tag}", "sig", chunks, np.stack([_unit(offset + i, dim) for i in range(n)]))


META = Meta("test-embedder", DIM, [0.0] * DIM)


def test_urls_choose_the_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open_store("sqlite:///a.db") as s:
        assert isinstance(s, SqliteVecStore) and s.kind == "sqlite-vec"
    with open_store("plain.db") as s:
        assert isinstance(s, SqliteVecStore)
    for bad, message in [("mysql://u@h/db", "unsupported database 'mysql'"), ("sqlite://", "needs a file"),
                         ("postgresql+asyncpg://u@h/db", "psycopg 3 driver"), ("", "no index database")]:
        with pytest.raises(UserError, match=message):
            open_store(bad)


def test_postgres_url_without_a_server_is_a_clear_error():
    with pytest.raises(UserError, match="cannot open database postgresql://u:\\*\\*\\*@127.0.0.1:9/x"):
        open_store("postgresql://u:secret@127.0.0.1:9/x")


def test_write_search_and_replace(db_url):
    with open_store(db_url) as store:
        assert store.meta() is None and store.search(_unit(0), 3) == [] and store.counts() == (0, 0)
        store.write([_update("/d/a.md", 3), _update("/d/b.md", 2, offset=4)], meta=META)
        assert store.meta().embedder == "test-embedder" and store.meta().dim == DIM
        assert store.counts() == (2, 5)
        hits = store.search(_unit(4), 3)
        assert hits[0].chunk.path == "/d/b.md" and hits[0].chunk.position == 0
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert hits[0].chunk.content == "T0\nv1 chunk 0 of /d/b.md"
        # replacing a file drops all its old chunks
        store.write([_update("/d/a.md", 1, offset=4, tag="v2")])
        assert store.counts() == (2, 3)
        texts = {h.chunk.text for h in store.search(_unit(4), 10)}
        assert texts == {"v2 chunk 0 of /d/a.md", "v1 chunk 0 of /d/b.md", "v1 chunk 1 of /d/b.md"}
        assert store.files()["/d/a.md"].content_hash == "hash-v2" and store.files()["/d/a.md"].chunks == 1
        store.write([], removed=["/d/b.md"])
        assert store.counts() == (1, 1) and set(store.files()) == {"/d/a.md"}


def _interrupted_update(path, n):
    """A file update whose vectors raise KeyboardInterrupt after the first one: Ctrl-C mid-transaction."""
    good = _update(path, n, tag="new")
    first = good.vectors[0]

    class Vectors:
        def __iter__(self):
            yield first
            raise KeyboardInterrupt

    good.vectors = Vectors()
    return good


def test_an_interrupted_write_changes_nothing(db_url):
    with open_store(db_url) as store:
        store.write([_update("/d/a.md", 3)], meta=META)
        before = [(h.chunk.text, round(h.score, 5)) for h in store.search(_unit(1), 5)]
        with pytest.raises(KeyboardInterrupt):
            store.write([_update("/d/c.md", 2), _interrupted_update("/d/a.md", 3)], removed=[])
        assert [(h.chunk.text, round(h.score, 5)) for h in store.search(_unit(1), 5)] == before
        assert set(store.files()) == {"/d/a.md"} and store.counts() == (1, 3)
        with pytest.raises(Exception):  # a vector of the wrong size fails inside the transaction
            store.write([_update("/d/a.md", 1, tag="new"), _update("/d/z.md", 1, dim=DIM + 1)])
        assert [(h.chunk.text, round(h.score, 5)) for h in store.search(_unit(1), 5)] == before


def test_readers_see_the_last_committed_index_during_a_write(db_url):
    """A search from another connection while a write transaction is open sees the index before it."""
    with open_store(db_url) as writer, open_store(db_url) as reader:
        writer.write([_update("/d/a.md", 3)], meta=META)
        if isinstance(writer, SqliteVecStore):
            writer.conn.execute("BEGIN IMMEDIATE")
            writer.conn.execute("DELETE FROM rag_chunks")
            writer.conn.execute("DELETE FROM rag_vectors")
            assert len(reader.search(_unit(0), 5)) == 3
            writer.conn.execute("ROLLBACK")
        else:
            assert isinstance(writer, PgVectorStore)
            with pytest.raises(RuntimeError), writer.conn.transaction():
                writer.conn.execute("DELETE FROM rag_chunks")
                assert len(reader.search(_unit(0), 5)) == 3
                raise RuntimeError("roll back")
        assert len(reader.search(_unit(0), 5)) == 3


def test_reset_swaps_in_a_new_dimension(db_url):
    with open_store(db_url) as store:
        store.write([_update("/d/a.md", 3)], meta=META)
        wide = Meta("wider", DIM * 2, [0.0] * (DIM * 2))
        store.write([_update("/d/b.md", 2, dim=DIM * 2)], meta=wide, reset=True)
        assert store.meta().dim == DIM * 2 and set(store.files()) == {"/d/b.md"}
        assert store.search(_unit(0, DIM * 2), 5)[0].chunk.path == "/d/b.md"


def test_postgres_without_pgvector_says_how_to_add_it(monkeypatch):
    """The message when the extension is missing and the user may not create it (no server needed)."""
    import rlhfkit.rag.stores as stores

    class FakeConn:
        def execute(self, sql, *a):
            if "CREATE EXTENSION" in sql:
                raise psycopg.errors.InsufficientPrivilege("permission denied to create extension \"vector\"")

            class R:
                def fetchone(self):
                    return None
            return R()

        def close(self):
            pass

    import psycopg

    monkeypatch.setattr(psycopg, "connect", lambda *a, **k: FakeConn())
    with pytest.raises(UserError, match="CREATE EXTENSION vector"):
        stores.open_store("postgresql+psycopg://u:pw@db.invalid/x")
