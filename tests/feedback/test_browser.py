"""The real page in headless Chromium: rank by mouse and keyboard, skip, tie, all-bad, injection, CSRF."""

import contextlib
import http.server
import json
import os
import threading

import pytest

from rlhfkit.feedback.store import Store

from .helpers import live_server

CHROMIUM = os.environ.get("RLHFKIT_CHROMIUM", "/usr/bin/chromium")
pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]
if not os.path.exists(CHROMIUM):
    pytest.skip(f"browser tests need Chromium at {CHROMIUM} (Debian package `chromium`; .ci/services.sh "
                "installs it)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the playwright package")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        yield b
        b.close()


@pytest.fixture
def site(browser, sqlite_url):
    """(store, base URL, fresh page, open_as(rows) -> token, page errors) around a live server."""
    store = Store(sqlite_url)

    def open_as(rows, name="alice"):  # import items, return a new annotator's token
        store.import_items(rows)
        return store.add_annotator(name)

    with live_server(store) as base:
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(10_000)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: (errors.append("dialog: " + d.message), d.dismiss()))
        yield store, base, page, open_as, errors
        context.close()
    store.close()


def sign_in(page, base, token):
    page.goto(f"{base}/login#{token}")
    page.wait_for_url(f"{base}/")
    return wait_item(page)


def wait_item(page, previous=None):
    """The id of the item on screen once it has changed from `previous` (None: when finished)."""
    page.wait_for_function(
        "prev => { const t = document.getElementById('task');"
        " return (!t.hidden && t.dataset.itemId && t.dataset.itemId !== prev)"
        " || !document.getElementById('finished').hidden; }", arg=previous or "")
    value = page.get_attribute("#task", "data-item-id")
    return int(value) if value else None


def shown(page):
    """Completion texts in display order (the numbers the keys use) -> completion id."""
    cards = page.locator("#pool .card, #ranking .card")
    out = {}
    for i in range(cards.count()):
        c = cards.nth(i)
        out[int(c.get_attribute("data-num"))] = (c.locator(".text").inner_text(), int(c.get_attribute("data-id")))
    return [out[k] for k in sorted(out)]


def drag_last(page, card):
    """Drag a card with the mouse into the ranking, below everything placed so far."""
    box = page.locator("#ranking").bounding_box()
    card.drag_to(page.locator("#ranking"), target_position={"x": 30, "y": box["height"] - 3})


def labels_by_prompt(store):
    return {lab["prompt"]: (lab["kind"], dict(zip(lab["completions"], lab["ranks"] or [])))
            for lab in store.all_labels()}


def test_rank_with_the_mouse(site):
    store, base, page, open_as, errors = site
    token = open_as([("mouse 1", ["red", "green", "blue"], {}), ("mouse 2", ["up", "down", "left"], {})])
    item = sign_in(page, base, token)
    assert page.inner_text("#progress") == "Done 0 / 2"
    texts = {t: cid for t, cid in shown(page)}
    card = lambda cid: page.locator(f'.card[data-id="{cid}"]')  # noqa: E731
    drag_last(page, card(texts["green"]))
    drag_last(page, card(texts["red"]))
    card(texts["blue"]).drag_to(page.locator("#ranking"), target_position={"x": 30, "y": 3})  # on top
    card(texts["green"]).drag_to(page.locator("#pool"))  # changed my mind: back to the pool...
    drag_last(page, card(texts["green"]))  # ...and last
    page.click("#submit")
    item2 = wait_item(page, str(item))
    texts = {t: cid for t, cid in shown(page)}
    for t in ("down", "up", "left"):
        drag_last(page, card(texts[t]))
    card(texts["up"]).locator("button.tie").click()  # up ties with down, above it
    page.click("#submit")
    assert wait_item(page, str(item2)) is None
    assert page.inner_text("#progress") == "Done 2 / 2"
    got = labels_by_prompt(store)
    assert got["mouse 1"] == ("rank", {"blue": 1, "red": 2, "green": 3})
    assert got["mouse 2"] == ("rank", {"down": 1, "up": 1, "left": 2})
    assert errors == []


def test_rank_skip_tie_and_all_bad_with_the_keyboard(site):
    store, base, page, open_as, errors = site
    token = open_as([(f"key {i}", [f"k{i}a", f"k{i}b", f"k{i}c"], {}) for i in range(4)])
    item = sign_in(page, base, token)
    done = {}
    for step, keys in enumerate((["3", "1", "Enter"], ["2", "1", "t", "Enter"], ["s"], ["x"])):
        prompt = page.inner_text("#prompt")
        order = [t for t, _ in shown(page)]
        for k in keys:
            page.keyboard.press(k)
        done[prompt] = order
        item = wait_item(page, str(item))
        assert page.inner_text("#progress").startswith(f"Done {step + 1} / 4")
    assert item is None and page.is_visible("#finished")
    got = labels_by_prompt(store)
    by_step = list(done.items())
    (p0, o0), (p1, o1), (p2, _), (p3, o3) = by_step
    assert got[p0] == ("rank", {o0[2]: 1, o0[0]: 2, o0[1]: 3})  # 3, 1, then Enter places 2 last
    assert got[p1] == ("rank", {o1[1]: 1, o1[0]: 1, o1[2]: 2})  # 2, 1 tied with it (T), 3 last
    assert got[p2] == ("skip", {})
    assert got[p3] == ("all_bad", {t: 1 for t in o3})
    assert errors == []


def test_admin_link_opens_the_statistics_page(site):
    store, base, page, open_as, errors = site
    open_as([("p", ["a", "b"], {})])
    admin = store.add_annotator("boss", role="admin")
    page.goto(f"{base}/login#{admin}")
    page.wait_for_url(f"{base}/stats")
    page.wait_for_selector("#overview td")
    assert "Krippendorff" in page.inner_text("#overview") and "alice" in page.inner_text("#people")
    assert page.evaluate("location.hash") == ""  # the token left the address bar
    assert errors == []


PAYLOADS = ['<script>window.__pwned = "script"</script>',
            '<img src=x onerror="window.__pwned = \'img\'">',
            '"><svg onload="window.__pwned = \'svg\'"></svg>']


def test_markup_in_completions_is_shown_as_text_and_never_runs(site):
    store, base, page, open_as, errors = site
    token = open_as([(PAYLOADS[1], PAYLOADS, {}),
                     ([{"role": "user", "content": PAYLOADS[0]}], ["<b>x</b>", PAYLOADS[2]], {})])
    item = sign_in(page, base, token)
    assert page.inner_text("#prompt") == PAYLOADS[1]
    assert sorted(t for t, _ in shown(page)) == sorted(PAYLOADS)
    for k in ("1", "2", "3"):  # also render them in the ranking list
        page.keyboard.press(k)
    assert page.locator("#task img, #task svg, #task script").count() == 0
    page.keyboard.press("Enter")
    wait_item(page, str(item))
    assert "user:" in page.inner_text("#prompt") and PAYLOADS[0] in page.inner_text("#prompt")
    assert page.locator("#task b").count() == 0
    page.wait_for_timeout(200)  # give any injected handler time to fire
    assert page.evaluate("window.__pwned") is None
    # Second layer: even markup forced into the page cannot run, the CSP forbids inline code.
    page.evaluate("document.body.insertAdjacentHTML('beforeend', '<img src=x onerror=\"window.__pwned=1\">')")
    page.wait_for_timeout(200)
    assert page.evaluate("window.__pwned") is None
    assert errors == []


@contextlib.contextmanager
def other_site(html: str):
    """A page served from another port on loopback: same-site for cookies, another origin."""
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server naming
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_another_origin_cannot_post_with_the_annotators_cookie(site):
    store, base, page, open_as, errors = site
    token = open_as([("p", ["a", "b"], {})])
    item = sign_in(page, base, token)
    body = json.dumps({"item_id": item, "action": "all_bad"})
    form = ("<form id=f method=post enctype=text/plain action='" + base + "/api/labels'>"
            "<input name='" + body[:-2] + "' value='\"}'></form>")  # a text/plain form that posts JSON
    with other_site(form) as evil:
        page.goto(evil)
        with page.expect_response(f"{base}/api/labels") as form_post:
            page.evaluate("document.getElementById('f').submit()")
        assert form_post.value.status == 403
        page.wait_for_url(f"{base}/api/labels")  # the form navigated to the refusal
        page.goto(evil)
        with page.expect_response(f"{base}/api/labels") as fetch_post:
            # (Chromium hides the refusal from a no-cors fetch as a network error; the server's answer
            # is what matters here.)
            page.evaluate("([url, body]) => fetch(url, {method: 'POST', mode: 'no-cors', credentials: 'include',"
                          " body}).catch(() => null)", [f"{base}/api/labels", body])
        assert fetch_post.value.status == 403
    assert store.all_labels() == []


def test_a_lost_lease_is_told_to_the_annotator(browser, sqlite_url):
    """Items left untouched past the lease go to others; the page says so and moves on."""
    from datetime import timedelta

    from rlhfkit.feedback.app import Settings

    store = Store(sqlite_url)
    store.import_items([(f"lease {i}", [f"l{i}a", f"l{i}b", f"l{i}c"], {}) for i in range(3)])
    alice = store.add_annotator("alice")
    rivals = [store.authenticate(store.add_annotator(n)) for n in ("bob", "carol")]
    lease = timedelta(seconds=4)
    try:
        with live_server(store, Settings(lease=lease)) as base:
            context = browser.new_context()
            page = context.new_page()
            page.set_default_timeout(10_000)
            first = sign_in(page, base, alice)
            page.keyboard.press("1")
            page.keyboard.press("2")  # alice starts ranking, then leaves it past the lease...
            page.wait_for_timeout(lease.total_seconds() * 1000 + 500)
            taken = store.next_item(rivals[0], 1, lease)  # ...and bob takes it over, and ranks it
            assert taken["id"] == first
            store.submit(rivals[0], first, "all_bad", None)
            page.keyboard.press("Enter")  # her submit is refused: the page says why and moves on
            second = wait_item(page, str(first))
            assert second is not None and "not saved" in page.inner_text("#message")
            # Away again, and carol takes this one: the first key press back finds out, before any submit.
            page.evaluate("document.getElementById('message').textContent = ''")
            page.wait_for_timeout(lease.total_seconds() * 1000 + 500)
            assert store.next_item(rivals[1], 1, lease)["id"] == second
            page.keyboard.press("1")
            third = wait_item(page, str(second))
            assert third not in (first, second) and "not saved" in page.inner_text("#message")
            context.close()
        assert [lab["annotator"] for lab in store.all_labels()] == ["bob"]
    finally:
        store.close()
