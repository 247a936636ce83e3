"""Many annotators at once on loopback: every label stored exactly once, K per item."""

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from rlhfkit.feedback.app import Settings
from rlhfkit.feedback.store import Store

from .helpers import add_items, live_server

CLIENTS = 24
ITEMS = 30
PER_ITEM = 3
DEADLINE_S = 60


def annotate_until_done(base, token, barrier, deadline):
    """One annotator's session: take the next item and rank it, until none is left."""
    acked = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        barrier.wait()
        for _ in range(ITEMS + 1):  # bounded: nobody can label more items than exist
            if time.monotonic() > deadline:
                raise TimeoutError("annotator still busy at the deadline")
            r = client.get("/api/next")
            r.raise_for_status()
            item = r.json()["item"]
            if item is None:
                return acked
            body = {"item_id": item["id"], "action": "rank", "ranking": [[c["id"]] for c in item["completions"]]}
            r = client.post("/api/labels", json=body)
            assert r.status_code == 200, r.text
            acked.append(item["id"])
    raise AssertionError("more items handed out than exist")


@pytest.mark.timeout(120)
def test_many_clients_label_everything_exactly_once(db_url):
    store = Store(db_url)
    add_items(store, ITEMS)
    tokens = {f"a{i:02d}": store.add_annotator(f"a{i:02d}") for i in range(CLIENTS)}
    barrier = threading.Barrier(CLIENTS, timeout=20)
    deadline = time.monotonic() + DEADLINE_S
    try:
        with live_server(store, Settings(per_item=PER_ITEM)) as base:
            with ThreadPoolExecutor(CLIENTS) as pool:
                futures = {n: pool.submit(annotate_until_done, base, t, barrier, deadline) for n, t in tokens.items()}
                acked = {n: f.result(timeout=DEADLINE_S + 10) for n, f in futures.items()}
        stored = [(lab["annotator"], lab["item_id"]) for lab in store.all_labels()]
    finally:
        store.close()
    assert len(stored) == len(set(stored)) == ITEMS * PER_ITEM
    assert sorted(stored) == sorted((n, i) for n, ids in acked.items() for i in ids)  # acknowledged = stored
    assert set(Counter(i for _, i in stored).values()) == {PER_ITEM}


@pytest.mark.timeout(60)
def test_same_label_sent_by_20_clients_at_once_is_stored_once(db_url):
    store = Store(db_url)
    add_items(store, 2)
    token = store.add_annotator("alice")
    n = 20
    barrier = threading.Barrier(n, timeout=20)
    try:
        with live_server(store) as base:
            headers = {"Authorization": f"Bearer {token}"}
            item = httpx.get(f"{base}/api/next", headers=headers, timeout=10).json()["item"]
            body = {"item_id": item["id"], "action": "rank", "ranking": [[c["id"]] for c in item["completions"]]}

            def post(_):
                barrier.wait()
                return httpx.post(f"{base}/api/labels", json=body, headers=headers, timeout=30).status_code

            with ThreadPoolExecutor(n) as pool:
                codes = Counter(pool.map(post, range(n), timeout=40))
        labels = store.all_labels()
    finally:
        store.close()
    assert codes == {200: 1, 409: n - 1}
    assert len(labels) == 1


@pytest.mark.timeout(120)
def test_short_leases_under_contention_give_4xx_never_5xx(db_url):
    """Slow annotators lose items to fast ones (lease 0.3 s): every answer is 200/403/409, none 5xx."""
    import random

    from datetime import timedelta

    clients, items, per_item = 12, 24, 2
    store = Store(db_url)
    add_items(store, items)
    tokens = [store.add_annotator(f"s{i:02d}") for i in range(clients)]
    barrier = threading.Barrier(clients, timeout=20)
    deadline = time.monotonic() + 40

    def annotate(token, seed):
        rng, statuses, acked = random.Random(seed), Counter(), []
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
            barrier.wait()
            for _ in range(60):
                if time.monotonic() > deadline:
                    break
                r = client.get("/api/next")
                statuses[r.status_code] += 1
                item = r.status_code == 200 and r.json()["item"]
                if not item:
                    break
                time.sleep(rng.uniform(0, 0.6))  # half the time longer than the lease
                body = {"item_id": item["id"], "action": "rank", "ranking": [[c["id"]] for c in item["completions"]]}
                r = client.post("/api/labels", json=body)
                statuses[r.status_code] += 1
                if r.status_code == 200:
                    acked.append(item["id"])
        return statuses, acked

    try:
        with live_server(store, Settings(per_item=per_item, lease=timedelta(seconds=0.3))) as base:
            with ThreadPoolExecutor(clients) as pool:
                results = list(pool.map(annotate, tokens, range(clients), timeout=90))
        stored = [(lab["annotator"], lab["item_id"]) for lab in store.all_labels()]
    finally:
        store.close()
    statuses = sum((s for s, _ in results), Counter())
    assert set(statuses) <= {200, 403, 409}, statuses
    assert statuses[403] > 0  # leases really ran out and slots really changed hands
    acked = sorted(i for _, a in results for i in a)
    assert sorted(i for _, i in stored) == acked and len(set(stored)) == len(stored)
    assert max(Counter(acked).values()) <= per_item
