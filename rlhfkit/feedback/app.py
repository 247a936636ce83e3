"""The labelling web app: FastAPI over a `Store`, static pages in ./static.

Security model:
- A private link is /login#TOKEN. The fragment never reaches the server (so no
  log holds it); login.js sends it once as `Authorization: Bearer` to
  /api/session, which sets an HttpOnly SameSite=Lax cookie. API clients may send
  the Bearer header on every request instead.
- Everything but /login and its script needs a valid token; annotators reach
  only their own assignment and labels, admins only the statistics.
- Cross-site requests: any request whose Origin is not this server is refused,
  and cookie-authenticated writes must carry the X-Requested-With header,
  which a cross-site form cannot send.
- Completions are model output: the pages render them with textContent and a
  Content-Security-Policy allows no inline script, so markup in them is inert.
- Bodies over `max_body` bytes get 413; malformed bodies get a 4xx JSON error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from rlhfkit.feedback.export import summary
from rlhfkit.feedback.store import AlreadyLabelled, NotAssigned, Store, Who

STATIC = Path(__file__).parent / "static"
COOKIE = "rlhfkit_session"
PUBLIC_STATIC = {"login.js", "app.css"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"),
                    (b"cache-control", b"no-store")]
INTERNAL_ERROR = "internal server error; see the server log"  # details go to the server log, not to the client


@dataclass
class Settings:
    per_item: int = 1  # annotators per item
    lease: timedelta = timedelta(minutes=60)  # an untouched assignment is given away after this
    max_body: int = 64 * 1024  # bytes
    allowed_origins: list[str] = field(default_factory=list)  # extra origins, e.g. behind a proxy


class Guard:
    """ASGI middleware: refuses foreign origins and oversized bodies, adds security headers."""

    def __init__(self, app, settings: Settings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        if origin and not self._same_origin(origin, headers.get("host", "")):
            return await _json(send, 403, "cross-origin request refused")
        length = headers.get("content-length", "")
        if length and (not length.isdigit() or int(length) > self.settings.max_body):
            return await _json(send, 413, f"request body over the limit of {self.settings.max_body} bytes")
        seen = 0

        async def limited_receive():  # bodies without Content-Length are counted as they arrive
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.settings.max_body:
                raise HTTPException(413, f"request body over the limit of {self.settings.max_body} bytes")
            return message

        started = False

        async def secured_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        try:
            await self.app(scope, limited_receive, secured_send)
        except Exception:
            # An unhandled error is answered here, inside the guard, so that a 500 carries the
            # security headers like any other response; re-raised for the server to log it.
            if not started:
                await _json(send, 500, INTERNAL_ERROR)
            raise

    def _same_origin(self, origin: str, host: str) -> bool:
        if origin in self.settings.allowed_origins:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()


async def _json(send, status: int, message: str):
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                + SECURITY_HEADERS})
    await send({"type": "http.response.body", "body": body})


# Ids are bounded by the 32-bit INTEGER key columns (PostgreSQL's `integer`); anything outside is a 422,
# never a value handed to the database driver (SQLite raises OverflowError past 2**63).
MAX_ID = 2**31 - 1
Id = Annotated[int, Field(ge=1, le=MAX_ID)]


class Submission(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    item_id: Id
    action: Literal["rank", "skip", "all_bad"]
    # groups of completion ids, best first; a group is a tie
    ranking: Annotated[list[Annotated[list[Id], Field(max_length=1000)]], Field(max_length=1000)] | None = None


def create_app(store: Store, settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(title="rlhfkit feedback", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store, app.state.settings = store, settings
    _add_error_handlers(app)
    app.add_middleware(Guard, settings=settings)

    def who(request: Request) -> Who:
        bearer = _bearer(request)
        token = bearer or request.cookies.get(COOKIE, "")
        found = store.authenticate(token) if token else None
        if found is None:
            raise HTTPException(401, "missing or unknown token; open your private link again")
        # Only a Bearer token proves the request was made by a script holding it; any other
        # Authorization (e.g. Basic auth added by a proxy) leaves the cookie doing the authenticating.
        if request.method not in ("GET", "HEAD") and not bearer and "x-requested-with" not in request.headers:
            raise HTTPException(403, "cookie-authenticated writes need the X-Requested-With header")
        return found

    def annotator(w: Who = Depends(who)) -> Who:
        if w.role != "annotator":
            raise HTTPException(403, "this account cannot label; it is an admin account")
        return w

    def admin(w: Who = Depends(who)) -> Who:
        if w.role != "admin":
            raise HTTPException(403, "statistics need an admin token")
        return w

    @app.get("/login")
    def login_page():
        return FileResponse(STATIC / "login.html")

    @app.post("/api/session")
    def session(request: Request, w: Who = Depends(who)):
        token = _bearer(request)
        if not token:
            raise HTTPException(400, "send the token as 'Authorization: Bearer TOKEN' to start a session")
        resp = JSONResponse({"name": w.name, "role": w.role, "next": "/stats" if w.role == "admin" else "/"})
        resp.set_cookie(COOKIE, token, httponly=True, samesite="lax", path="/",
                        secure=request.url.scheme == "https")
        return resp

    @app.post("/api/logout")
    def logout(w: Who = Depends(who)):
        resp = JSONResponse({"ok": True})
        resp.delete_cookie(COOKIE, path="/")
        return resp

    @app.get("/static/{name}")
    def static(name: str, request: Request):
        if name not in PUBLIC_STATIC:
            who(request)
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise HTTPException(404, "no such file")
        return FileResponse(path)

    @app.get("/")
    def index(w: Who = Depends(who)):
        return RedirectResponse("/stats", 303) if w.role == "admin" else FileResponse(STATIC / "index.html")

    @app.get("/stats")
    def stats_page(w: Who = Depends(admin)):
        return FileResponse(STATIC / "stats.html")

    @app.get("/api/me")
    def me(w: Who = Depends(who)):
        return {"name": w.name, "role": w.role}

    @app.get("/api/next")
    def next_item(w: Who = Depends(annotator)):
        item = store.next_item(w, settings.per_item, settings.lease)
        # lease_seconds: how long an item may lie untouched before it can go to someone else;
        # the page renews it on activity after a long pause and says so if it was lost.
        return {"item": item, "progress": store.progress(w, settings.per_item, settings.lease),
                "lease_seconds": settings.lease.total_seconds()}

    @app.post("/api/labels")
    def submit(body: Submission, w: Who = Depends(annotator)):
        try:
            store.submit(w, body.item_id, body.action, body.ranking)
        except AlreadyLabelled:
            raise HTTPException(409, "you already labelled this item") from None
        except NotAssigned:
            minutes = settings.lease.total_seconds() / 60
            return JSONResponse({"error": "this item is not assigned to you (or no longer: it lay untouched for "
                                 f"more than {minutes:g} minutes and went to someone else)",
                                 "code": "not_assigned"}, status_code=403)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        return {"ok": True, "progress": store.progress(w, settings.per_item, settings.lease)}

    @app.get("/api/labels")
    def my_labels(w: Who = Depends(annotator)):
        return {"labels": store.my_labels(w)}

    @app.get("/api/stats")
    def stats(w: Who = Depends(admin)):
        return {**store.counts(settings.per_item), **summary(store.all_labels())}

    return app


def _bearer(request: Request) -> str:
    """The token of an `Authorization: Bearer TOKEN` header, or ""."""
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def internal_error(request, exc):  # only reached if the Guard itself failed; it answers the rest
        return JSONResponse({"error": INTERNAL_ERROR}, status_code=500,
                            headers={k.decode(): v.decode() for k, v in SECURITY_HEADERS})

    @app.exception_handler(RequestValidationError)
    async def bad_request(request, exc):
        problems = [{"where": ".".join(str(p) for p in e.get("loc", ())), "problem": e.get("msg", "")}
                    for e in exc.errors()]
        return JSONResponse({"error": "malformed request", "problems": problems}, status_code=422)
