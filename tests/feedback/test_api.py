"""HTTP API: authentication, isolation between annotators, cross-origin refusal, bad bodies."""

import pytest
from fastapi.testclient import TestClient

from rlhfkit.feedback.app import Settings, create_app
from rlhfkit.feedback.store import Store

from .helpers import add_items

ORIGIN = "http://testserver"  # TestClient's own origin


@pytest.fixture
def env(sqlite_url):
    store = Store(sqlite_url)
    add_items(store, 3)
    tokens = {n: store.add_annotator(n) for n in ("alice", "bob")}
    tokens["boss"] = store.add_annotator("boss", role="admin")
    client = TestClient(create_app(store, Settings(max_body=2048)))
    yield store, client, tokens
    client.close()
    store.close()


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def rank_body(item):
    return {"item_id": item["id"], "action": "rank", "ranking": [[c["id"]] for c in item["completions"]]}


def test_every_page_and_api_needs_a_token(env):
    _, client, _ = env
    for path in ("/", "/stats", "/api/next", "/api/labels", "/api/stats", "/api/me", "/static/app.js",
                 "/static/index.html"):
        r = client.get(path)
        assert r.status_code == 401 and "token" in r.json()["error"], path
    r = client.get("/api/next", headers=bearer("not-a-real-token"))
    assert r.status_code == 401
    r = client.post("/api/labels", json={"item_id": 1, "action": "skip"})
    assert r.status_code == 401
    # Only the sign-in page, its script and the style sheet are public; they hold no data.
    for path in ("/login", "/static/login.js", "/static/app.css"):
        assert client.get(path).status_code == 200, path


def test_security_headers(env):
    _, client, tokens = env
    r = client.get("/", headers=bearer(tokens["alice"]))
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    assert client.get("/nowhere").json() == {"error": "Not Found"}


def test_roles_are_separate(env):
    _, client, tokens = env
    assert client.get("/api/next", headers=bearer(tokens["boss"])).status_code == 403
    assert client.get("/api/stats", headers=bearer(tokens["alice"])).status_code == 403
    assert client.get("/stats", headers=bearer(tokens["alice"])).status_code == 403
    r = client.get("/api/stats", headers=bearer(tokens["boss"]))
    assert r.status_code == 200 and r.json()["items"] == 3


def test_annotator_cannot_touch_another_annotators_item(env):
    store, client, tokens = env
    item = client.get("/api/next", headers=bearer(tokens["alice"])).json()["item"]
    r = client.post("/api/labels", json=rank_body(item), headers=bearer(tokens["bob"]))
    assert r.status_code == 403 and "not assigned" in r.json()["error"]
    r = client.post("/api/labels", json=rank_body(item), headers=bearer(tokens["alice"]))
    assert r.status_code == 200 and r.json()["progress"] == {"done": 1, "total": 3}
    r = client.post("/api/labels", json=rank_body(item), headers=bearer(tokens["alice"]))
    assert r.status_code == 409  # no second label for the same item
    assert client.get("/api/labels", headers=bearer(tokens["bob"])).json() == {"labels": []}
    mine = client.get("/api/labels", headers=bearer(tokens["alice"])).json()["labels"]
    assert [m["item_id"] for m in mine] == [item["id"]]
    assert [lab["annotator"] for lab in store.all_labels()] == ["alice"]


def test_cross_origin_requests_are_refused(env):
    store, client, tokens = env
    item = client.get("/api/next", headers=bearer(tokens["alice"])).json()["item"]
    for origin in ("http://evil.example", "http://testserver.evil.example", "null"):
        r = client.post("/api/labels", json=rank_body(item), headers={**bearer(tokens["alice"]), "Origin": origin})
        assert r.status_code == 403 and r.json()["error"] == "cross-origin request refused"
    assert client.get("/api/next", headers={**bearer(tokens["alice"]), "Origin": "http://evil.example"}).status_code == 403
    assert store.all_labels() == []
    r = client.post("/api/labels", json=rank_body(item), headers={**bearer(tokens["alice"]), "Origin": ORIGIN})
    assert r.status_code == 200


def test_cookie_session_needs_the_csrf_header_for_writes(env):
    store, client, tokens = env
    r = client.post("/api/session", headers=bearer(tokens["alice"]))
    cookie = r.headers["set-cookie"].lower()
    assert r.status_code == 200 and "httponly" in cookie and "samesite=lax" in cookie
    assert r.json()["next"] == "/"
    item = client.get("/api/next").json()["item"]  # the cookie now authenticates reads
    r = client.post("/api/labels", json=rank_body(item))  # as a cross-site form would post
    assert r.status_code == 403 and "X-Requested-With" in r.json()["error"]
    r = client.post("/api/labels", json=rank_body(item), headers={"X-Requested-With": "rlhfkit"})
    assert r.status_code == 200
    # A session is only made from a Bearer token, never renewed from the cookie.
    assert client.post("/api/session", headers={"X-Requested-With": "rlhfkit"}).status_code == 400


@pytest.mark.parametrize("body, status", [
    (b"{not json", 422),
    (b"[]", 422),
    (b'{"item_id": "1", "action": "skip"}', 422),  # a string id
    (b'{"item_id": 1, "action": "delete"}', 422),
    (b'{"item_id": 1, "action": "skip", "extra": 1}', 422),
    (b'{"item_id": 1, "action": "rank"}', 422),  # a ranking without its order
    (b'{"item_id": 1, "action": "rank", "ranking": [[1, 1]]}', 422),
    (b'{"item_id": true, "action": "skip"}', 422),
    (b'{"item_id": 1, "action": "skip", "ranking": "' + b"x" * 4096 + b'"}', 413),
])
def test_malformed_bodies_get_json_4xx(env, body, status):
    _, client, tokens = env
    client.get("/api/next", headers=bearer(tokens["alice"]))  # alice holds item 1
    r = client.post("/api/labels", content=body, headers={**bearer(tokens["alice"]), "Content-Type": "application/json"})
    assert r.status_code == status
    assert isinstance(r.json()["error"], str)


def test_body_limit_without_content_length(env):
    _, client, tokens = env

    def chunks():  # chunked transfer: no Content-Length to check up front
        for _ in range(10):
            yield b" " * 1024

    r = client.post("/api/labels", content=chunks(), headers={**bearer(tokens["alice"]), "Content-Type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]


def test_server_errors_are_json_without_details(env, monkeypatch):
    store, client, tokens = env

    def broken(*args):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(store, "next_item", broken)
    client = TestClient(create_app(store), raise_server_exceptions=False)
    r = client.get("/api/next", headers=bearer(tokens["alice"]))
    assert r.status_code == 500 and "secret" not in r.text and r.json()["error"].startswith("internal")


@pytest.mark.parametrize("item_id", [2**63, 2**63 - 1, 2**64 + 5, -(2**63) - 1, 2**31])
def test_huge_item_ids_are_a_4xx_not_a_500(env, item_id):
    _, client, tokens = env
    client.get("/api/next", headers=bearer(tokens["alice"]))
    headers = {**bearer(tokens["alice"]), "Content-Type": "application/json"}
    r = client.post("/api/labels", content=b'{"item_id": %d, "action": "skip"}' % item_id, headers=headers)
    assert 400 <= r.status_code < 500, r.text
    assert isinstance(r.json()["error"], str)
    ranking = b'{"item_id": 1, "action": "rank", "ranking": [[%d], [1], [2]]}' % item_id
    r = client.post("/api/labels", content=ranking, headers=headers)
    assert 400 <= r.status_code < 500, r.text


def test_server_errors_carry_the_security_headers(env, monkeypatch):
    store, _, tokens = env

    def broken(*args):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(store, "next_item", broken)
    client = TestClient(create_app(store), raise_server_exceptions=False)
    r = client.get("/api/next", headers=bearer(tokens["alice"]))
    assert r.status_code == 500 and r.json()["error"].startswith("internal")
    assert r.headers["content-security-policy"].startswith("default-src 'none'")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-frame-options"] == "DENY"
    for path in ("/nowhere", "/api/next"):  # 404 and 401 have them too
        assert client.get(path).headers["x-content-type-options"] == "nosniff", path


@pytest.mark.parametrize("authorization", ["Basic dXNlcjpwYXNz", "Digest username=x", "Token abc", "Bearer"])
def test_cookie_writes_need_the_csrf_header_whatever_authorization_says(env, authorization):
    store, client, tokens = env
    client.post("/api/session", headers=bearer(tokens["alice"]))
    item = client.get("/api/next").json()["item"]
    # A proxy may add Basic auth: the cookie still authenticates, so the CSRF rule must still apply.
    r = client.post("/api/labels", json=rank_body(item), headers={"Authorization": authorization})
    assert r.status_code == 403 and "X-Requested-With" in r.json()["error"]
    assert store.all_labels() == []
    r = client.post("/api/labels", json=rank_body(item),
                    headers={"Authorization": authorization, "X-Requested-With": "rlhfkit"})
    assert r.status_code == 200
