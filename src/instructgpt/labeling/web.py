"""Shared web plumbing: templates, security headers, the current user, CSRF checks.

Every POST route depends on ``form_csrf`` (HTML forms: a ``csrf_token`` field)
or ``json_csrf`` (JSON: an ``X-CSRF-Token`` header); both compare against the
token of the caller's session in constant time and answer 403 otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from instructgpt.data import FLAGS

from .labels import FLAG_LABELS
from .security import SESSION_COOKIE, Viewer, load_viewer, same
from .store import Store

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


async def form_csrf(request: Request, viewer: Viewer = Depends(current_viewer)):
    """The posted form, after checking its ``csrf_token`` against the session's."""
    form = await request.form(max_part_size=4 * 1024 * 1024)
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
    except ValueError:
        raise HTTPException(status_code=400, detail="invalid JSON") from None


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"
