"""Database engines for the feedback store: PostgreSQL through psycopg 3, or SQLite in WAL mode with
writes that take the lock up front (see `rlhfkit.feedback.store`)."""

from __future__ import annotations

from sqlalchemy import create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from rlhfkit.errors import UserError

def safe_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable URL>"


# Connections kept open: about one per concurrently served request (the server runs up to 40 at
# once), so that a busy server does not open and close a PostgreSQL connection (a SCRAM handshake
# and a backend process) per request, as overflow connections beyond the pool are.
POOL = 20


def make_engine(url: str):
    try:
        u = make_url(url)
    except ArgumentError:
        raise UserError(f"--db {url!r} is not a database URL; use e.g. sqlite:///feedback.db "
                        "or postgresql://user:password@host/dbname") from None
    if u.drivername == "postgresql":
        u = u.set(drivername="postgresql+psycopg")  # psycopg 3 is the installed driver
    if u.get_backend_name() != "sqlite":
        return create_engine(u, pool_pre_ping=True, pool_size=POOL, max_overflow=POOL)
    engine = create_engine(u, pool_size=POOL, max_overflow=POOL, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves, below
        cur = dbapi_conn.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=30000"):
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # Writes take the write lock up front (IMMEDIATE): a deferred transaction that reads and
        # then writes can fail with "database is locked" instead of waiting. Reads stay deferred:
        # under WAL they see a snapshot and neither wait for nor block the writer.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN")

    return engine


WRITE = "rlhfkit_write"  # execution option of the connections `Store.write()` uses
