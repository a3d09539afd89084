"""Log in, log out, accept an invite.

Before login there is no session, so these forms carry a signed double-submit
token (``security.prelogin_token``) tied to a random pre-login cookie.

A login attempt is counted (``LoginLimiter.reserve``) before its password is
checked: from a browser holding a device cookie for that user name (set at
each successful login) under that device alone, else under its client address
and the user name (``security.login_keys``): others' failures never lock a
labeler out of a browser they have logged in with, and the argon2id work of logins and invites runs at most
``login_concurrency`` at a time per process (each takes 64 MiB), so a burst
of anonymous requests can neither slip past the limit nor exhaust memory.
An invite POST is counted under the client IP's key of the same limiter (a
wrong token or a refused account is a failure) and its token is checked,
read only, before any password is hashed. A password longer than
``MAX_PASSWORD`` is refused with a message, never cut short.
"""

from __future__ import annotations

import asyncio
import random
import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from . import accounts
from .security import (
    DEVICE_COOKIE,
    DEVICE_TTL,
    PRELOGIN_COOKIE,
    SESSION_COOKIE,
    SESSION_TTL,
    AuthError,
    authenticate,
    check_password_length,
    check_prelogin,
    device_cookie,
    end_session,
    login_keys,
    new_token,
    prelogin_token,
    start_session,
    trusted_device,
)
from .tables import User
from .web import client_ip, form_csrf, read_form, redirect, render, store_of

router = APIRouter()


def _cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="strict",
                        secure=request.app.state.cfg.secure_cookies)


def _prelogin_page(request: Request, template: str, status: int = 200, **context) -> Response:
    """Render a pre-login form with its CSRF token (setting the cookie if needed)."""
    cookie = request.cookies.get(PRELOGIN_COOKIE)
    fresh = not cookie or len(cookie) > 128
    if fresh:
        cookie = new_token()
    token = prelogin_token(request.app.state.secret, cookie)
    response = render(request, template, status=status, csrf_token=token, viewer=None, **context)
    if fresh:
        _cookie(request, response, PRELOGIN_COOKIE, cookie, max_age=3600)
    return response


async def _prelogin_form(request: Request):
    """The posted pre-login form, after the double-submit CSRF check (else 403)."""
    form = await read_form(request)
    if not check_prelogin(request.app.state.secret, request.cookies.get(PRELOGIN_COOKIE),
                          form.get("csrf_token")):
        return None
    return form


def _logged_in(request: Request, user_id: int, role: str, username: str) -> Response:
    """The redirect after a login: a session cookie, and a fresh device cookie for this user name."""
    with store_of(request).tx() as s:
        token = start_session(s, s.get(User, user_id))
    response = redirect("/admin" if role == "admin" else "/")
    _cookie(request, response, SESSION_COOKIE, token, max_age=int(SESSION_TTL.total_seconds()))
    _cookie(request, response, DEVICE_COOKIE, device_cookie(request.app.state.secret, username),
            max_age=int(DEVICE_TTL.total_seconds()))
    response.delete_cookie(PRELOGIN_COOKIE, path="/")
    return response


@router.get("/login")
def login_page(request: Request):
    return _prelogin_page(request, "login.html", error=None, username="")


@router.post("/login")
async def login(request: Request):
    form = await _prelogin_form(request)
    if form is None:
        return render(request, "error.html", status=403, viewer=None,
                      message="The form expired (missing or wrong CSRF token). Reload the page and try again.")
    username, password = str(form.get("username", ""))[:200], str(form.get("password", ""))
    try:
        check_password_length(password)  # no account has a longer one: refused without a check
    except AuthError as e:
        return _prelogin_page(request, "login.html", status=400, username=username, error=str(e))
    device = trusted_device(request.app.state.secret, request.cookies.get(DEVICE_COOKIE), username)
    keys = login_keys(username, client_ip(request), device)
    account_key = keys[-1]   # the user name's key, or the trusted device's
    limiter = request.app.state.limiter
    reservation = await _reserve(limiter, *keys)  # counted before the check
    if reservation.attempt is None:
        response = _prelogin_page(request, "login.html", status=429, username=username,
                                  error="Too many failed logins. Wait a minute and try again, or ask an admin to "
                                        "lift the lockout. (Others' failed attempts do not hold up a browser you "
                                        "have logged in with before.)")
        response.headers["Retry-After"] = str(int(limiter.window))
        return response
    attempt, user = reservation.attempt, None
    try:
        user = await password_work(request, _check_login, request, username, password)
    finally:
        if user is None:
            await run_in_threadpool(limiter.fail, attempt)  # it stays counted
        else:
            await run_in_threadpool(limiter.forgive, attempt, account_key)
    if user is None:
        return _prelogin_page(request, "login.html", status=401, username=username,
                              error="Wrong username or password.")
    return await run_in_threadpool(_logged_in, request, user.id, user.role, user.username)


async def _reserve(limiter, *keys: str, patience: float = 30.0):
    """``limiter.reserve(keys)``, waiting (with backoff) while attempts in flight fill the allowance."""
    deadline = time.monotonic() + patience
    delay = 0.05
    while True:
        reservation = await run_in_threadpool(limiter.reserve, *keys)
        if not reservation.busy or time.monotonic() > deadline:
            return reservation
        await asyncio.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.5)


async def password_work(request: Request, fn, *args):
    """``fn(*args)`` in a worker thread, at most ``login_concurrency`` at once (argon2id: 64 MiB each)."""
    async with request.app.state.password_checks:
        return await run_in_threadpool(fn, *args)


def _check_login(request: Request, username: str, password: str):
    with store_of(request).tx(read_only=True) as s:
        return authenticate(s, username, password)


@router.post("/logout")
def logout(request: Request, form=Depends(form_csrf)):
    with store_of(request).tx() as s:
        end_session(s, request.cookies.get(SESSION_COOKIE))
    response = redirect("/login")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/invite/{token}")
def invite_page(request: Request, token: str):
    if not accounts.invite_is_open(store_of(request), token):
        return render(request, "error.html", status=404, viewer=None,
                      message="This invite link is invalid, already used or expired.")
    return _prelogin_page(request, "invite.html", token=token, error=None, username="")


@router.post("/invite/{token}")
async def accept_invite(request: Request, token: str):
    form = await _prelogin_form(request)
    if form is None:
        return render(request, "error.html", status=403, viewer=None,
                      message="The form expired (missing or wrong CSRF token). Reload the page and try again.")
    username, password = str(form.get("username", "")), str(form.get("password", ""))
    if password != form.get("password2"):
        return _prelogin_page(request, "invite.html", status=400, token=token, username=username,
                              error="The two passwords differ.")
    limiter = request.app.state.limiter
    reservation = await _reserve(limiter, f"ip:{client_ip(request)}")  # counted before any check
    if reservation.attempt is None:
        response = _prelogin_page(request, "invite.html", status=429, token=token, username=username,
                                  error="Too many failed attempts. Wait a minute and try again.")
        response.headers["Retry-After"] = str(int(limiter.window))
        return response
    user = None
    try:
        if not await run_in_threadpool(accounts.invite_is_open, store_of(request), token):
            return render(request, "error.html", status=404, viewer=None,
                          message="This invite link is invalid, already used or expired.")
        user = await password_work(request, accounts.accept_invite, store_of(request), token, username, password)
    except AuthError as e:
        return _prelogin_page(request, "invite.html", status=400, token=token, username=username, error=str(e))
    finally:
        await run_in_threadpool(limiter.fail if user is None else limiter.forgive, reservation.attempt)
    return await run_in_threadpool(_logged_in, request, user.id, user.role, user.username)
