"""SQLite's single writer: reads never wait for it, and an import does not starve the server."""

import sqlite3
import threading
import time

import pytest
from fastapi.testclient import TestClient

from rlhfkit.feedback.app import Settings, create_app
from rlhfkit.feedback.store import Store

from .helpers import add_items

pytestmark = pytest.mark.timeout(120)


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def hold_write_lock(path, seconds):
    """Another process's writer: a raw connection holding BEGIN IMMEDIATE for `seconds`."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE annotators SET name = name")

    def release():
        time.sleep(seconds)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=release)
    thread.start()
    return thread


def test_reads_do_not_queue_behind_another_processs_writer(tmp_path):
    path = tmp_path / "feedback.db"
    store = Store(f"sqlite:///{path}")
    add_items(store, 5)
    token = store.add_annotator("alice")
    boss = store.add_annotator("boss", role="admin")
    client = TestClient(create_app(store, Settings(per_item=1)))
    try:
        item = client.get("/api/next", headers=bearer(token)).json()["item"]
        writer = hold_write_lock(path, 3.0)
        try:
            for path_, who in (("/api/me", token), ("/api/next", token), ("/api/labels", token),
                               ("/api/stats", boss), ("/", token)):
                t0 = time.monotonic()
                r = client.get(path_, headers=bearer(who))
                took = time.monotonic() - t0
                assert r.status_code == 200 and took < 1.0, (path_, r.status_code, round(took, 2))
            assert client.get("/api/next", headers=bearer(token)).json()["item"] == item  # a reload is a read
        finally:
            writer.join()
    finally:
        client.close()
        store.close()


def test_a_big_import_lets_the_server_write_between_its_chunks(tmp_path):
    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    store = Store(url)
    add_items(store, 200, prefix="first")
    token = store.add_annotator("alice")
    importer = Store(url)  # a second Store: its own connections and lock, as `rlhfkit label import` has
    rows = [(f"new {i}", [f"new {i} completion {j}" for j in range(3)], {}) for i in range(6000)]
    result = {}

    def run_import():
        t0 = time.monotonic()
        result["counts"] = importer.import_items(rows)
        result["seconds"] = time.monotonic() - t0

    client = TestClient(create_app(store))
    thread = threading.Thread(target=run_import)
    try:
        thread.start()
        latencies = []
        while thread.is_alive() and len(latencies) < 400:
            t0 = time.monotonic()
            item = client.get("/api/next", headers=bearer(token)).json()["item"]
            body = {"item_id": item["id"], "action": "rank", "ranking": [[c["id"]] for c in item["completions"]]}
            r = client.post("/api/labels", json=body, headers=bearer(token))
            assert r.status_code == 200, r.text
            latencies.append(time.monotonic() - t0)
        thread.join(60)
    finally:
        client.close()
        importer.close()
        store.close()
    assert result["counts"] == (6000, 0)
    assert len(latencies) >= 5, latencies  # the server kept labelling while the import ran...
    assert max(latencies) < 2.0, max(latencies)  # ...without waiting for the whole import


def test_the_documented_online_backup_is_consistent_while_the_server_writes(tmp_path):
    """docs/feedback.md: `sqlite3.connect(DB).backup(sqlite3.connect(COPY))` while serving."""
    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    store = Store(url)
    add_items(store, 300)
    token = store.add_annotator("alice")
    client = TestClient(create_app(store))
    stop = threading.Event()

    def label():
        while not stop.is_set():
            item = client.get("/api/next", headers=bearer(token)).json()["item"]
            if item is None:
                return
            client.post("/api/labels", json={"item_id": item["id"], "action": "skip"}, headers=bearer(token))

    writer = threading.Thread(target=label)
    writer.start()
    try:
        time.sleep(0.3)
        for i in range(3):
            copy = tmp_path / f"backup{i}.db"
            src, dst = sqlite3.connect(tmp_path / "feedback.db"), sqlite3.connect(copy)
            src.backup(dst)
            src.close()
            assert dst.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            n_labels = dst.execute("select count(*) from labels").fetchone()[0]
            dst.close()
            backup = Store(f"sqlite:///{copy}")
            try:
                assert len(backup.all_labels()) == n_labels and backup.counts(1)["items"] == 300
            finally:
                backup.close()
    finally:
        stop.set()
        writer.join(30)
        client.close()
        store.close()
