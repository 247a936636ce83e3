"""Load: 30 annotators label while a 20k-row import runs, against the real server, on loopback.

Asserts what an operator needs: no ranking lost or stored twice, no 5xx, reads answered in
under a second (p95). Prints the figures (docs/feedback.md quotes them):

    pytest tests/feedback/test_load.py -s        # RLHFKIT_TEST_PG_URL set for PostgreSQL too
"""

import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict

import httpx
import pytest

from rlhfkit.feedback.store import Store

from .helpers import add_items, serve_process

ANNOTATORS = 30
PER_ITEM = 2
BASE_ITEMS = 600          # there before the server starts
IMPORT_ROWS = 20_000      # imported while it serves
THINK_S = (0.5, 2.0)      # per item: annotators ten times faster than people
MIN_RUN_S = 10            # label at least this long, and until the import is done
MAX_RUN_S = 45


def cpu_seconds(pid):
    """User + system CPU time of a process so far (Linux; 0 elsewhere)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles(xs):
    xs = sorted(xs)
    if not xs:
        return {"n": 0}
    pick = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
    return {"n": len(xs), "p50": round(pick(0.50), 3), "p95": round(pick(0.95), 3), "max": round(xs[-1], 3),
            "mean": round(statistics.fmean(xs), 3)}


@pytest.mark.timeout(150)
def test_30_annotators_and_a_20k_row_import(db_url, tmp_path):
    store = Store(db_url)
    add_items(store, BASE_ITEMS, prefix="base ")
    tokens = {f"ann{i:02d}": store.add_annotator(f"ann{i:02d}") for i in range(ANNOTATORS)}
    admin = store.add_annotator("lead", role="admin")
    store.close()
    gen = tmp_path / "generated.jsonl"
    with gen.open("w") as f:
        for i in range(IMPORT_ROWS):
            f.write(json.dumps({"prompt": f"imported prompt {i}",
                                "completions": [f"imported {i} completion {j} " + "x" * 80 for j in range(3)],
                                "model": "load-test"}) + "\n")

    latencies = defaultdict(list)  # kind -> seconds
    statuses = Counter()
    acked = []  # (annotator, item_id) answered 200
    errors = []
    stop = threading.Event()
    lock = threading.Lock()

    def timed(kind, client, method, path, **kw):
        t0 = time.perf_counter()
        r = client.request(method, path, **kw)
        took = time.perf_counter() - t0
        with lock:
            latencies[kind].append(took)
            statuses[r.status_code] += 1
        return r

    def annotator(name, token, seed):
        rng = random.Random(seed)
        try:
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
                timed("read /api/me", c, "GET", "/api/me")
                n = 0
                while not stop.is_set():
                    r = timed("read /api/next", c, "GET", "/api/next")
                    item = r.status_code == 200 and r.json()["item"]
                    if not item:
                        break
                    time.sleep(rng.uniform(*THINK_S))
                    ids = [x["id"] for x in item["completions"]]
                    rng.shuffle(ids)
                    action = rng.choices(["rank", "skip", "all_bad"], [90, 5, 5])[0]
                    body = {"item_id": item["id"], "action": action}
                    if action == "rank":
                        body["ranking"] = [[i] for i in ids]
                    r = timed("submit", c, "POST", "/api/labels", json=body)
                    if r.status_code == 200:
                        with lock:
                            acked.append((name, item["id"]))
                    n += 1
                    if n % 5 == 0:
                        timed("read /api/labels", c, "GET", "/api/labels")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"{name}: {type(e).__name__}: {e}")

    def statistician():
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin}"}, timeout=60) as c:
            while not stop.wait(3.0):
                timed("admin /api/stats", c, "GET", "/api/stats")

    with serve_process(db_url, tmp_path / "server.log", "--per-item", str(PER_ITEM)) as (base, server):
        cpu_before = cpu_seconds(server.pid)
        threads = [threading.Thread(target=annotator, args=(n, t, i)) for i, (n, t) in enumerate(tokens.items())]
        threads.append(threading.Thread(target=statistician))
        t_start = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(1.0)  # annotators at work, then the import starts
        t_import = time.monotonic()
        imp = subprocess.run([sys.executable, "-m", "rlhfkit.feedback", "import", str(gen), "--db", db_url],
                             capture_output=True, text=True, timeout=120)
        import_s = time.monotonic() - t_import
        while time.monotonic() - t_start < MIN_RUN_S:
            time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(MAX_RUN_S)
        run_s = time.monotonic() - t_start
        server_cpu = cpu_seconds(server.pid) - cpu_before

    store = Store(db_url)
    try:
        labels = store.all_labels()
        n_items = store.counts(PER_ITEM)["items"]
    finally:
        store.close()
    stored = [(lab["annotator"], lab["item_id"]) for lab in labels]
    reads = [x for k, v in latencies.items() if k.startswith("read") for x in v]
    report = {
        "database": store.engine.dialect.name, "annotators": ANNOTATORS, "per_item": PER_ITEM,
        "run_s": round(run_s, 1), "import_rows": IMPORT_ROWS, "import_s": round(import_s, 2),
        "labels_stored": len(stored), "statuses": dict(statuses),
        "server_cpu_ms_per_request": round(1000 * server_cpu / max(1, sum(statuses.values())), 1),
        "reads": percentiles(reads), "submits": percentiles(latencies["submit"]),
        **{k: percentiles(v) for k, v in sorted(latencies.items()) if k != "submit"},
    }
    print("\nLOAD " + json.dumps(report))
    if os.environ.get("RLHFKIT_LOAD_REPORT"):
        with open(os.environ["RLHFKIT_LOAD_REPORT"], "a") as f:
            f.write(json.dumps(report) + "\n")

    assert imp.returncode == 0, imp.stderr[-2000:]
    assert f"imported {IMPORT_ROWS} items" in imp.stdout
    assert n_items == BASE_ITEMS + IMPORT_ROWS
    assert errors == []
    assert all(code < 500 for code in statuses), statuses  # no 5xx
    assert set(statuses) == {200}, statuses  # nothing refused either: leases are long, every submit is its own
    assert len(stored) == len(set(stored))  # nobody's ranking stored twice
    assert sorted(stored) == sorted(acked)  # every acknowledged ranking stored, nothing unacknowledged
    judged = Counter(lab["item_id"] for lab in labels if lab["kind"] != "skip")  # (a skip frees its slot)
    assert max(judged.values()) <= PER_ITEM  # never more than K real labels for an item
    assert len(stored) >= ANNOTATORS * 5  # real work was done while the import ran
    assert report["reads"]["p95"] < 1.0, report
