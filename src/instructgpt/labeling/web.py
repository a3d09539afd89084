"""Shared web plumbing: templates, security headers, body limits, the current user, CSRF checks.

Every POST route depends on ``form_csrf`` (HTML forms: a ``csrf_token`` field)
or ``json_csrf`` (JSON: an ``X-CSRF-Token`` header); both compare against the
token of the caller's session in constant time and answer 403 otherwise.
Admin POST routes depend on ``admin_form_csrf``, which refuses a non-admin
(403) before the body is read, so a labeler cannot make the server parse an
upload-sized body.

Request bodies are capped before anything parses them (``BodyLimit``: 413);
a urlencoded form must be valid UTF-8 and a JSON body valid, not too deeply
nested JSON (400), as the API already required.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import Depends, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from instructgpt.data import FLAGS

from .labels import FLAG_LABELS
from .security import SESSION_COOKIE, Viewer, load_viewer, same
from .store import Store
from .tasks import MAX_ID

Id = Annotated[int, PathParam(gt=0, le=MAX_ID)]
"""A row id in a URL; anything else is a 404 (see app.py)."""

HERE = Path(__file__).resolve().parent

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]

templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True,
                        undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
templates.globals.update(FLAGS=FLAGS, FLAG_LABELS=FLAG_LABELS)


class SecurityHeaders:
    """ASGI middleware: CSP and friends on every response; no caching of pages."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        static = scope["path"].startswith("/static/")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", [])) + SECURITY_HEADERS
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


KIB, MIB = 1024, 1024 * 1024
CONTENT_LENGTH_DIGITS = 20   # a Content-Length longer than this is refused unread (int() refuses over 4300 digits)
MULTIPART_SLACK = 64 * KIB   # an upload's body holds its file plus the form's other fields and part headers


@dataclass(frozen=True)
class SizeLimit:
    """A body size limit: the bytes allowed, and how error messages state it (in its option's unit)."""
    bytes: int
    text: str

    @classmethod
    def kib(cls, kib: int) -> SizeLimit:
        return cls(kib * KIB, f"{kib} KiB")

    @classmethod
    def upload_mib(cls, mib: int) -> SizeLimit:
        """An upload of a file of at most ``mib`` MiB; the body may hold MULTIPART_SLACK more."""
        return cls(mib * MIB + MULTIPART_SLACK, f"{mib} MiB")


class BodyLimit:
    """ASGI middleware: request bodies above ``limit`` get 413 before anything parses them.

    Paths in ``uploads`` (the admin's task upload) get ``upload_limit`` instead.
    A declared Content-Length is checked up front (one of more than
    CONTENT_LENGTH_DIGITS digits is too large, as h11 holds); a chunked body is counted as
    it arrives and cut off at the limit. The 413 states the limit as its option
    does (``max_body_kb`` in KiB, ``max_upload_mb`` in MiB).
    """

    def __init__(self, app, limit: SizeLimit, upload_limit: SizeLimit,
                 uploads: tuple[str, ...] = ("/admin/import",)):
        self.app, self.limit, self.upload_limit, self.uploads = app, limit, upload_limit, uploads

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.upload_limit if scope["path"] in self.uploads else self.limit
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or len(declared) > CONTENT_LENGTH_DIGITS
                                     or int(declared) > limit.bytes):
            response = error_response(Request(scope), 413, _too_large(limit))
            return await response(scope, receive, send)
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.bytes:
                    raise HTTPException(status_code=413, detail=_too_large(limit))
            return message

        await self.app(scope, counted_receive, send)


SERVER_ERROR = ("Something went wrong on the server. Nothing was saved by this request; try again, "
                "and tell the admin if it keeps happening.")


class PlainServerErrors:
    """ASGI middleware: an unexpected exception becomes a plain 500 (the error page, or JSON
    under /api/) that reveals nothing about the server; the exception is re-raised so that
    the server logs its traceback."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            if not started:
                response = error_response(Request(scope), 500, SERVER_ERROR)
                await response(scope, receive, send)
            raise


def _too_large(limit: SizeLimit) -> str:
    return f"request body larger than {limit.text}"


def error_response(request: Request, status: int, message: str):
    """The error as JSON under /api/, else as the error page (never with server details)."""
    if request.url.path.startswith("/api/"):
        return JSONResponse({"detail": message}, status_code=status)
    return render(request, "error.html", status=status, message=message)


class LoginRequired(Exception):
    """No valid session: pages redirect to /login, the API answers 401."""


def store_of(request: Request) -> Store:
    return request.app.state.store


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page from ``templates/name``; all values are HTML-escaped by Jinja2."""
    viewer = context.setdefault("viewer", getattr(request.state, "viewer", None))
    context.setdefault("csrf_token", viewer.csrf_token if viewer else "")
    html = templates.get_template(name).render(request=request, **context)
    return HTMLResponse(html, status_code=status)


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def current_viewer(request: Request) -> Viewer:
    """The logged-in user (dependency); raises ``LoginRequired`` without a valid session."""
    with store_of(request).tx(read_only=True) as s:
        viewer = load_viewer(s, request.cookies.get(SESSION_COOKIE))
    if viewer is None:
        raise LoginRequired()
    request.state.viewer = viewer
    return viewer


def admin_viewer(viewer: Viewer = Depends(current_viewer)) -> Viewer:
    """The logged-in user if they are an admin; 403 otherwise."""
    if not viewer.is_admin:
        raise HTTPException(status_code=403, detail="admins only")
    return viewer


async def read_form(request: Request):
    """The posted form; 400 when a urlencoded body is not valid UTF-8.

    Browsers percent-encode UTF-8. Starlette would turn invalid bytes into
    U+FFFD (or Latin-1), so the raw body is decoded strictly first. (The only
    multipart form, the admin's upload, takes no free text besides the file,
    which the importer decodes strictly itself.)
    """
    if request.headers.get("content-type", "").split(";")[0].strip() == "application/x-www-form-urlencoded":
        body = await request.body()
        try:
            parse_qsl(body.decode("ascii"), keep_blank_values=True, encoding="utf-8", errors="strict")
        except (UnicodeDecodeError, ValueError):
            raise HTTPException(status_code=400, detail="the form is not valid UTF-8") from None
    return await request.form(max_part_size=4 * 1024 * 1024)


async def form_csrf(request: Request, viewer: Viewer = Depends(current_viewer)):
    """The posted form, after checking its ``csrf_token`` against the session's."""
    return await _checked_form(request, viewer)


async def admin_form_csrf(request: Request, viewer: Viewer = Depends(admin_viewer)):
    """``form_csrf`` for admin routes: the role is checked (403) before the body is read."""
    return await _checked_form(request, viewer)


async def _checked_form(request: Request, viewer: Viewer):
    form = await read_form(request)
    if not same(form.get("csrf_token"), viewer.csrf_token):
        raise HTTPException(status_code=403, detail="missing or wrong CSRF token; reload the page")
    return form


async def json_csrf(request: Request, viewer: Viewer = Depends(current_viewer)) -> Any:
    """The posted JSON body, after checking the ``X-CSRF-Token`` header."""
    if not same(request.headers.get("x-csrf-token"), viewer.csrf_token):
        raise HTTPException(status_code=403, detail="missing or wrong X-CSRF-Token header")
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise HTTPException(status_code=415, detail="send application/json")
    try:
        return await request.json()
    except RecursionError:
        raise HTTPException(status_code=400, detail="JSON nested too deeply") from None
    except ValueError:
        raise HTTPException(status_code=400, detail="invalid JSON (or not UTF-8)") from None


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"
