"""Fixtures for the RAG tests: the embedded MiniLM (loaded once), index databases
(SQLite file, or the CI PostgreSQL with pgvector), small document folders."""

from __future__ import annotations

import os

import pytest

PG_ENV = "RLHFKIT_TEST_PG_URL"


@pytest.fixture(scope="session")
def embedder():
    from rlhfkit.rag.embedding import get_embedder

    return get_embedder("minilm-l6")


@pytest.fixture(scope="session")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    from rlhfkit.models import resolve

    return AutoTokenizer.from_pretrained(resolve("minilm-l6"))


def _drop_rag_tables(url: str) -> None:
    from rlhfkit.rag.stores import open_store

    store = open_store(url)
    store.conn.execute("DROP TABLE IF EXISTS rag_chunks, rag_files, rag_meta")
    store.close()


def pg_url_or_skip() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"pgvector tests need a PostgreSQL server with pgvector: set {PG_ENV} "
                    "(CI gets it from .ci/services.sh)")
    import psycopg

    try:
        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1), connect_timeout=3) as c:
            c.execute("select 1")
    except Exception as e:  # noqa: BLE001 - any failure means "no server here"
        pytest.skip(f"PostgreSQL at {PG_ENV} is not reachable: {type(e).__name__}")
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """A fresh, empty index database: a SQLite file, or the test PostgreSQL database without rag_ tables."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'rag.db'}"
        return
    url = pg_url_or_skip()
    _drop_rag_tables(url)
    yield url
    _drop_rag_tables(url)


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'rag.db'}"


@pytest.fixture
def docs(tmp_path):
    """A small folder: Markdown, text and JSONL documents on distinct topics."""
    d = tmp_path / "docs"
    d.mkdir()
    (d / "travel.md").write_text(
        "# Travel\n\nBook trips ten days ahead.\n\n## Hotels\n\nHotel nights are capped at 1,800 kroner, "
        "2,600 in London.\n", encoding="utf-8")
    (d / "canteen.txt").write_text("The canteen serves lunch from 11:00 to 13:00 and coffee is free.\n",
                                   encoding="utf-8")
    (d / "faq.jsonl").write_text(
        '{"id": "wifi", "title": "Guest wifi", "text": "Visitors use the wifi network HMI-Guest."}\n'
        '{"text": "Lost property is kept at reception for three months."}\n', encoding="utf-8")
    return d
