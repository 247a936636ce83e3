"""Vector stores: chunks, their embeddings, and the files they came from.

Chosen by URL, like the feedback store:

- `sqlite:///rag.db` (or a plain file path): an embedded SQLite file with the
  sqlite-vec extension (a `vec0` table, exact cosine k-nearest-neighbour search);
  no server. Opened through `apsw`, whose SQLite can load extensions (many Python
  builds' `sqlite3` cannot);
- `postgresql+psycopg://user:password@host/db` (or `postgresql://`): PostgreSQL
  with pgvector (a `vector(dim)` column with an HNSW cosine index), for teams
  sharing one index.

Tables (prefixed `rag_`, so one database can also hold the feedback app's):
`rag_meta` (embedding model, its fingerprint and dimension, chunking),
`rag_files` (path, content hash, chunking signature, chunk count) and
`rag_chunks` (one row per chunk, with its vector; in SQLite the vectors live in
the `rag_vectors` vec0 table under the chunk's id).

Every change is one transaction (`write`): the files it replaces lose their old
chunks and get their new ones, and their hashes are updated, all or nothing. A
search is one statement, so it sees the index before or after a write, never
during one. Writers take a lock first (SQLite `BEGIN IMMEDIATE`, a PostgreSQL
advisory lock), so two indexing runs on one database queue instead of mixing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from rlhfkit.errors import UserError

SCHEMA_VERSION = 1
_PG_LOCK_KEY = 0x7261675F6C6F636B  # "rag_lock": the advisory lock every writer takes


@dataclass(frozen=True)
class StoredChunk:
    """A chunk as stored: `path` is its file, `doc` its document (the path, or `path#id`
    for a JSONL row), `position` its number within the file (from 0)."""

    path: str
    doc: str
    position: int
    title: str | None
    text: str
    line_start: int
    line_end: int

    @property
    def content(self) -> str:
        return f"{self.title}\n{self.text}" if self.title else self.text


@dataclass(frozen=True)
class Hit:
    chunk: StoredChunk
    score: float  # cosine similarity to the query


@dataclass
class FileUpdate:
    """A file's new state: its chunks and their vectors replace whatever the index had."""

    path: str
    content_hash: str
    chunking: str
    chunks: list[StoredChunk]
    vectors: np.ndarray  # [len(chunks), dim] float32


@dataclass
class FileState:
    content_hash: str
    chunking: str
    chunks: int


@dataclass
class Meta:
    embedder: str
    dim: int
    fingerprint: list[float]
    chunking: dict = field(default_factory=dict)
    schema: int = SCHEMA_VERSION
    created: str = ""

    def to_rows(self) -> dict[str, str]:
        return {"embedder": self.embedder, "dim": str(self.dim), "fingerprint": json.dumps(self.fingerprint),
                "chunking": json.dumps(self.chunking), "schema": str(self.schema),
                "created": self.created or datetime.now(timezone.utc).isoformat(timespec="seconds")}

    @classmethod
    def from_rows(cls, rows: dict[str, str]) -> "Meta":
        return cls(embedder=rows["embedder"], dim=int(rows["dim"]), fingerprint=json.loads(rows["fingerprint"]),
                   chunking=json.loads(rows.get("chunking") or "{}"), schema=int(rows.get("schema", 1)),
                   created=rows.get("created", ""))


class VectorStore:
    """The interface both stores implement."""

    url: str
    kind: str

    def meta(self) -> Meta | None:
        raise NotImplementedError

    def files(self) -> dict[str, FileState]:
        raise NotImplementedError

    def write(self, updates: list[FileUpdate], removed: list[str] = (), meta: Meta | None = None,
              reset: bool = False) -> None:
        """One transaction: (with `reset`, drop every chunk and file first and make the
        tables for `meta`'s dimension;) store `meta` when given, replace each updated
        file's chunks, drop the removed files'."""
        raise NotImplementedError

    def search(self, vector: np.ndarray, k: int) -> list[Hit]:
        raise NotImplementedError

    def counts(self) -> tuple[int, int]:
        """(files, chunks) in the index."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def safe_url(url: str) -> str:
    from rlhfkit.feedback.engine import safe_url as _safe

    return _safe(url) if "://" in url else url


def open_store(url: str) -> VectorStore:
    """The store a URL names: SQLite + sqlite-vec (a `sqlite:///` URL or a file path), or
    PostgreSQL + pgvector (`postgresql://` / `postgresql+psycopg://`)."""
    if not url:
        raise UserError("no index database given; pass --db sqlite:///rag.db (a file) or "
                        "--db postgresql+psycopg://user:password@host/dbname")
    if "://" not in url:
        return SqliteVecStore(url)
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        u = make_url(url)
    except ArgumentError:
        raise UserError(f"--db {url!r} is not a database URL; use sqlite:///rag.db or "
                        "postgresql+psycopg://user:password@host/dbname") from None
    backend = u.get_backend_name()
    if backend == "sqlite":
        if not u.database or u.database == ":memory:":
            raise UserError(f"--db {url!r}: an index needs a file; use sqlite:///rag.db")
        return SqliteVecStore(u.database, url=url)
    if backend == "postgresql":
        if u.drivername not in ("postgresql", "postgresql+psycopg"):
            raise UserError(f"--db {safe_url(url)}: use the psycopg 3 driver (postgresql+psycopg://...)")
        return PgVectorStore(u, url=url)
    raise UserError(f"--db {safe_url(url)}: unsupported database '{backend}'; use sqlite:///FILE or postgresql+psycopg://")


# ---------------------------------------------------------------- SQLite + sqlite-vec


def _blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


class SqliteVecStore(VectorStore):
    kind = "sqlite-vec"

    def __init__(self, path: str, url: str | None = None):
        try:
            import apsw
            import sqlite_vec
        except ImportError as e:
            raise UserError(f"the SQLite index needs the packages apsw and sqlite-vec ({e.name} is missing); "
                            "run: pip install apsw sqlite-vec") from None
        self.path = str(Path(path).expanduser())
        self.url = url or f"sqlite:///{self.path}"
        parent = Path(self.path).parent
        if not parent.exists():
            parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = apsw.Connection(self.path)
            self.conn.enable_load_extension(True)
            self.conn.load_extension(sqlite_vec.loadable_path())
            self.conn.enable_load_extension(False)
            self.conn.set_busy_timeout(30_000)
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "mmap_size=1073741824", "cache_size=-262144"):
                self.conn.execute(f"PRAGMA {pragma}").fetchall()
        except apsw.Error as e:
            raise UserError(f"cannot open index {self.path}: {e}; check the path and that it is a SQLite file") from None
        self._apsw = apsw

    def close(self) -> None:
        self.conn.close()

    def _has_table(self, name: str) -> bool:
        return bool(self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchall())

    def meta(self) -> Meta | None:
        if not self._has_table("rag_meta"):
            return None
        rows = dict(self.conn.execute("SELECT key, value FROM rag_meta").fetchall())
        return Meta.from_rows(rows) if rows else None

    def files(self) -> dict[str, FileState]:
        if not self._has_table("rag_files"):
            return {}
        return {p: FileState(h, c, n) for p, h, c, n in
                self.conn.execute("SELECT path, content_hash, chunking, chunks FROM rag_files")}

    def counts(self) -> tuple[int, int]:
        if not self._has_table("rag_chunks"):
            return 0, 0
        return (self.conn.execute("SELECT count(*) FROM rag_files").fetchall()[0][0],
                self.conn.execute("SELECT count(*) FROM rag_chunks").fetchall()[0][0])

    def _create(self, dim: int) -> None:
        c = self.conn
        c.execute("CREATE TABLE IF NOT EXISTS rag_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        c.execute("CREATE TABLE IF NOT EXISTS rag_files (path TEXT PRIMARY KEY, content_hash TEXT NOT NULL, "
                  "chunking TEXT NOT NULL, chunks INTEGER NOT NULL, indexed_at TEXT NOT NULL)")
        c.execute("CREATE TABLE IF NOT EXISTS rag_chunks (id INTEGER PRIMARY KEY, path TEXT NOT NULL, doc TEXT NOT NULL, "
                  "position INTEGER NOT NULL, title TEXT, text TEXT NOT NULL, line_start INTEGER, line_end INTEGER, "
                  "UNIQUE (path, position))")
        c.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS rag_vectors USING vec0(embedding float[{int(dim)}] "
                  "distance_metric=cosine)")

    def write(self, updates, removed=(), meta=None, reset=False) -> None:
        c = self.conn
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        c.execute("BEGIN IMMEDIATE")
        try:
            if reset:
                for table in ("rag_vectors", "rag_chunks", "rag_files", "rag_meta"):
                    c.execute(f"DROP TABLE IF EXISTS {table}")
            if meta is not None or reset:
                self._create((meta or self.meta()).dim)
            if meta is not None:
                c.executemany("INSERT OR REPLACE INTO rag_meta (key, value) VALUES (?, ?)", list(meta.to_rows().items()))
            for path in list(removed) + [u.path for u in updates]:
                ids = [r[0] for r in c.execute("SELECT id FROM rag_chunks WHERE path = ?", (path,))]
                c.executemany("DELETE FROM rag_vectors WHERE rowid = ?", [(i,) for i in ids])
                c.execute("DELETE FROM rag_chunks WHERE path = ?", (path,))
                c.execute("DELETE FROM rag_files WHERE path = ?", (path,))
            for u in updates:
                for chunk, vector in zip(u.chunks, u.vectors):
                    c.execute("INSERT INTO rag_chunks (path, doc, position, title, text, line_start, line_end) "
                              "VALUES (?, ?, ?, ?, ?, ?, ?)",
                              (u.path, chunk.doc, chunk.position, chunk.title, chunk.text, chunk.line_start,
                               chunk.line_end))
                    c.execute("INSERT INTO rag_vectors (rowid, embedding) VALUES (?, ?)",
                              (c.last_insert_rowid(), _blob(vector)))
                c.execute("INSERT INTO rag_files (path, content_hash, chunking, chunks, indexed_at) VALUES (?, ?, ?, ?, ?)",
                          (u.path, u.content_hash, u.chunking, len(u.chunks), now))
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    def search(self, vector: np.ndarray, k: int) -> list[Hit]:
        if not self._has_table("rag_vectors"):
            return []
        rows = self.conn.execute(
            "SELECT c.path, c.doc, c.position, c.title, c.text, c.line_start, c.line_end, v.distance "
            "FROM (SELECT rowid, distance FROM rag_vectors WHERE embedding MATCH ? AND k = ?) AS v "
            "JOIN rag_chunks AS c ON c.id = v.rowid ORDER BY v.distance", (_blob(vector), int(k))).fetchall()
        return _hits(rows)


def _hits(rows) -> list[Hit]:
    """Search rows (path, doc, position, title, text, line_start, line_end, distance) as hits, nearest
    first; equal distances in file order (the databases return ties in any order, sorting by a second
    key in SQL would keep pgvector's HNSW index from serving the query)."""
    rows = sorted(rows, key=lambda r: (float(r[7]), r[0], r[2]))
    return [Hit(StoredChunk(*r[:7]), 1.0 - float(r[7])) for r in rows]


# ---------------------------------------------------------------- PostgreSQL + pgvector


class PgVectorStore(VectorStore):
    kind = "pgvector"

    def __init__(self, sa_url, url: str):
        try:
            import psycopg
            from pgvector.psycopg import register_vector
        except ImportError as e:
            raise UserError(f"a PostgreSQL index needs the packages psycopg and pgvector ({e.name} is missing); "
                            "run: pip install 'psycopg[binary]' pgvector") from None
        self.url = url
        self._psycopg = psycopg
        conninfo = sa_url.set(drivername="postgresql").render_as_string(hide_password=False)
        try:
            self.conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as e:
            raise UserError(f"cannot open database {safe_url(url)}: {str(e).strip().splitlines()[0]}; check the URL "
                            "and that the server is running") from None
        have = self.conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone()
        if not have:
            try:
                self.conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            except psycopg.Error as e:
                self.conn.close()
                raise UserError(f"database {safe_url(url)} has no pgvector extension and this user cannot add it "
                                f"({str(e).strip().splitlines()[0]}); as a superuser run `CREATE EXTENSION vector;` "
                                "in it (the server needs pgvector installed: Debian's postgresql-NN-pgvector)") from None
        register_vector(self.conn)

    def close(self) -> None:
        self.conn.close()

    def _has_table(self, name: str) -> bool:
        return self.conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]

    def meta(self) -> Meta | None:
        if not self._has_table("rag_meta"):
            return None
        rows = dict(self.conn.execute("SELECT key, value FROM rag_meta").fetchall())
        return Meta.from_rows(rows) if rows else None

    def files(self) -> dict[str, FileState]:
        if not self._has_table("rag_files"):
            return {}
        return {p: FileState(h, c, n) for p, h, c, n in
                self.conn.execute("SELECT path, content_hash, chunking, chunks FROM rag_files").fetchall()}

    def counts(self) -> tuple[int, int]:
        if not self._has_table("rag_chunks"):
            return 0, 0
        return (self.conn.execute("SELECT count(*) FROM rag_files").fetchone()[0],
                self.conn.execute("SELECT count(*) FROM rag_chunks").fetchone()[0])

    def _create(self, cur, dim: int) -> None:
        cur.execute("CREATE TABLE IF NOT EXISTS rag_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        cur.execute("CREATE TABLE IF NOT EXISTS rag_files (path TEXT PRIMARY KEY, content_hash TEXT NOT NULL, "
                    "chunking TEXT NOT NULL, chunks INTEGER NOT NULL, indexed_at TEXT NOT NULL)")
        cur.execute(f"CREATE TABLE IF NOT EXISTS rag_chunks (id BIGSERIAL PRIMARY KEY, path TEXT NOT NULL, "
                    f"doc TEXT NOT NULL, position INTEGER NOT NULL, title TEXT, text TEXT NOT NULL, line_start INTEGER, "
                    f"line_end INTEGER, embedding vector({int(dim)}) NOT NULL, UNIQUE (path, position))")
        cur.execute("CREATE INDEX IF NOT EXISTS rag_chunks_embedding ON rag_chunks "
                    "USING hnsw (embedding vector_cosine_ops)")

    def write(self, updates, removed=(), meta=None, reset=False) -> None:
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK_KEY,))
            if reset:
                cur.execute("DROP TABLE IF EXISTS rag_chunks, rag_files, rag_meta")
            if meta is not None or reset:
                self._create(cur, (meta or self.meta()).dim)
            if meta is not None:
                cur.executemany("INSERT INTO rag_meta (key, value) VALUES (%s, %s) "
                                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", list(meta.to_rows().items()))
            paths = list(removed) + [u.path for u in updates]
            if paths:
                cur.execute("DELETE FROM rag_chunks WHERE path = ANY(%s)", (paths,))
                cur.execute("DELETE FROM rag_files WHERE path = ANY(%s)", (paths,))
            for u in updates:
                cur.executemany(
                    "INSERT INTO rag_chunks (path, doc, position, title, text, line_start, line_end, embedding) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    [(u.path, ch.doc, ch.position, ch.title, ch.text, ch.line_start, ch.line_end,
                      np.asarray(v, dtype=np.float32)) for ch, v in zip(u.chunks, u.vectors)])
                cur.execute("INSERT INTO rag_files (path, content_hash, chunking, chunks, indexed_at) "
                            "VALUES (%s, %s, %s, %s, %s)", (u.path, u.content_hash, u.chunking, len(u.chunks), now))

    def search(self, vector: np.ndarray, k: int) -> list[Hit]:
        if not self._has_table("rag_chunks"):
            return []
        q = np.asarray(vector, dtype=np.float32)
        with self.conn.transaction(), self.conn.cursor() as cur:
            # the HNSW index returns at most ef_search rows: keep it above k
            cur.execute(f"SET LOCAL hnsw.ef_search = {max(40, 2 * int(k))}")
            rows = cur.execute(
                "SELECT path, doc, position, title, text, line_start, line_end, embedding <=> %s AS distance "
                "FROM rag_chunks ORDER BY embedding <=> %s LIMIT %s", (q, q, int(k))).fetchall()
        return _hits(rows)


__all__ = ["FileState", "FileUpdate", "Hit", "Meta", "PgVectorStore", "SqliteVecStore", "StoredChunk", "VectorStore",
           "open_store"]
