"""Fixtures for the feedback tests: databases (SQLite, PostgreSQL), a live server, helpers."""

from __future__ import annotations

import os

import pytest

from rlhfkit.feedback.schema import Base
from rlhfkit.feedback.store import Store

PG_ENV = "RLHFKIT_TEST_PG_URL"


def _pg_url_or_skip() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"PostgreSQL tests need a server: set {PG_ENV} (CI gets it from .ci/services.sh)")
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1),
                               connect_args={"connect_timeout": 3})
        with engine.connect() as c:
            c.execute(text("select 1"))
        engine.dispose()
    except Exception as e:  # noqa: BLE001 - any failure means "no server here"
        pytest.skip(f"PostgreSQL at {PG_ENV} is not reachable: {type(e).__name__}")
    return url


def _wiped_pg():
    url = _pg_url_or_skip()
    store = Store(url)
    Base.metadata.drop_all(store.engine)
    store.close()
    yield url
    store = Store(url)
    Base.metadata.drop_all(store.engine)
    store.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """A fresh, empty database: a SQLite file, or the test PostgreSQL database wiped clean."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'feedback.db'}"
        return
    yield from _wiped_pg()


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres)])
def pg_url():
    """The test PostgreSQL database wiped clean, for what only PostgreSQL has (row locks)."""
    yield from _wiped_pg()


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'feedback.db'}"


@pytest.fixture
def store(db_url):
    s = Store(db_url)
    yield s
    s.close()
