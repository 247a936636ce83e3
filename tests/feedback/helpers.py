"""Helpers for the feedback tests: items, free ports, a live server in a thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from rlhfkit.feedback.store import Store


def add_items(store: Store, n: int, k: int = 3, prefix: str = "p") -> None:
    store.import_items([(f"{prefix}{i}", [f"{prefix}{i} completion {j}" for j in range(k)], {}) for i in range(n)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(store: Store, settings=None, timeout: float = 10.0):
    """The app served by uvicorn on loopback in a thread; yields its base URL."""
    import uvicorn

    from rlhfkit.feedback.app import create_app

    port = free_port()
    config = uvicorn.Config(create_app(store, settings), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)


@contextlib.contextmanager
def serve_process(db_url: str, log_path, *args: str, timeout: float = 30.0):
    """`rlhfkit label serve` in its own process on a free loopback port; yields (base URL, process)."""
    import subprocess
    import sys

    import httpx

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "rlhfkit.feedback", "serve", "--db", db_url,
                                 "--port", str(port), *args], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    if httpx.get(f"{base}/login", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start; see {log_path}")
                time.sleep(0.1)
            yield base, proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
