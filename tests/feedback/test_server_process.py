"""The real `serve` command in its own process: killed mid-session, restarted, nothing lost."""

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from rlhfkit.feedback.cli import main
from rlhfkit.feedback.store import Store

from .helpers import add_items, free_port


# Ways a private link /login#TOKEN gets mangled on its way to a browser or script: each sends the token.
LINK_FORMS = ["/login%23{token}", "/login?{token}", "/login/{token}", "/login%2523{token}", "/login?x=1&{token}",
              "/login;{token}", "/{token}"]


def start(db, port, log):
    cmd = [sys.executable, "-m", "rlhfkit.feedback", "serve", "--db", db, "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/login", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"server did not start: {log.name}")


def stop(proc, sig=signal.SIGKILL):
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    proc.wait(timeout=10)


@pytest.mark.timeout(90)
def test_kill_mid_session_loses_nothing_and_resumes(tmp_path):
    db = f"sqlite:///{tmp_path / 'feedback.db'}"
    store = Store(db)
    add_items(store, 40)
    alice, bob = store.add_annotator("alice"), store.add_annotator("bob")
    store.close()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    acked, stop_flag = [], threading.Event()

    def label_forever():  # alice labels as fast as she can until the server dies under her
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {alice}"}, timeout=5) as c:
            for _ in range(40):
                if stop_flag.is_set():
                    return
                try:
                    item = c.get("/api/next").json()["item"]
                    body = {"item_id": item["id"], "action": "rank",
                            "ranking": [[x["id"]] for x in item["completions"]]}
                    if c.post("/api/labels", json=body).status_code == 200:
                        acked.append(item["id"])
                except httpx.TransportError:
                    return

    with open(log_path, "w") as log:
        proc = start(db, port, log)
        try:
            bob_client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {bob}"}, timeout=5)
            held = bob_client.get("/api/next").json()["item"]  # bob opens an item and leaves it open
            # A browser-style session too, so that the cookie path also goes through the log, and a
            # token wrongly put in a query string, which the log filter must hide.
            assert httpx.post(f"{base}/api/session", headers={"Authorization": f"Bearer {bob}"}).status_code == 200
            assert httpx.get(f"{base}/login?token={alice}").status_code == 200
            for form in LINK_FORMS:  # mangled private links: each reaches the server, none may reach the log
                httpx.get(base + form.format(token=bob))
            worker = threading.Thread(target=label_forever)
            worker.start()
            deadline = time.monotonic() + 30
            while len(acked) < 5 and time.monotonic() < deadline and worker.is_alive():
                time.sleep(0.01)
            stop(proc)  # SIGKILL while alice is mid-request
            worker.join(10)
            stop_flag.set()
            assert len(acked) >= 5

            proc = start(db, port, log)
            assert bob_client.get("/api/next").json()["item"] == held  # same item, same order
            again = httpx.get(f"{base}/api/next", headers={"Authorization": f"Bearer {alice}"}).json()
            assert again["progress"]["done"] >= len(acked)
            bob_client.close()
        finally:
            stop_flag.set()
            stop(proc, signal.SIGTERM)

    store = Store(db)
    stored = [lab["item_id"] for lab in store.all_labels() if lab["annotator"] == "alice"]
    store.close()
    assert set(acked) <= set(stored)  # every acknowledged label survived the kill
    assert len(stored) - len(acked) <= 1  # at most the one in flight at the kill got stored unacknowledged
    text = log_path.read_text()
    assert "POST /api/labels" in text and "/login?token=[redacted]" in text  # the access log is on...
    assert alice not in text and bob not in text  # ...and holds no token


def test_serve_refuses_bad_settings(tmp_path, capsys):
    assert main(["serve", "--db", f"sqlite:///{tmp_path / 'x.db'}", "--per-item", "0"]) == 2
    assert "--per-item" in capsys.readouterr().err


def percent_encode_some(token):
    """The token with every other character percent-encoded, as some mail clients rewrite links."""
    return "".join(f"%{ord(c):02X}" if i % 2 else c for i, c in enumerate(token))


@pytest.mark.parametrize("form", LINK_FORMS + ["/login#{token}", "/api/next?token={token}", "Bearer {token}",
                                               "/login%23{encoded}", "/login?{encoded}"])
def test_access_log_filter_redacts_every_token_form(form):
    import logging

    from rlhfkit.feedback.cli import _RedactTokens

    token = "Zx9_Qw-" + "a1B2c3D4e5F6g7H8i9J0kLmNoPqRsTuVw"[:36]
    path = form.format(token=token, encoded=percent_encode_some(token))
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", path, "1.1", 404), None)
    assert _RedactTokens().filter(record)
    line = record.getMessage()
    assert "[redacted]" in line and "127.0.0.1:5000" in line and line.endswith(" 404")
    for piece in (token, token[:16], token[-16:], percent_encode_some(token)[:24]):
        assert piece not in line, line
    for harmless in ("/api/labels", "/static/app.js", "/login", "/api/next?x=1"):
        record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, "%s", (harmless,), None)
        _RedactTokens().filter(record)
        assert record.getMessage() == harmless
