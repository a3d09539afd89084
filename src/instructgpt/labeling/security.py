"""Passwords, login sessions, CSRF tokens and the login rate limiter.

- Passwords are hashed with argon2id (argon2-cffi's defaults: t=3, m=64 MiB, p=4).
- A session is a random 256-bit token in an HttpOnly, SameSite=Strict (and, unless
  told otherwise, Secure) cookie; the database keeps only its SHA-256.
- Each session has its own CSRF token, sent in every form (``csrf_token``) and as
  the ``X-CSRF-Token`` header of every state-changing JSON call.
- Before login there is no session, so the login and invite forms use a signed
  double-submit token: a random cookie value plus its HMAC under the server key.
- ``RateLimiter``: at most N failed logins per window, per username and per IP.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from .tables import AppSetting, User, WebSession, utcnow

SESSION_COOKIE = "igpt_session"
PRELOGIN_COOKIE = "igpt_prelogin"
SESSION_TTL = timedelta(hours=12)
USERNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{2,64}$")
MIN_PASSWORD = 8

_hasher = PasswordHasher()  # argon2id
# Verified against when a username does not exist, so both cases take as long.
_DUMMY_HASH = _hasher.hash("not a real password, only for timing")


class AuthError(ValueError):
    """A bad username, password or token (the message is safe to show)."""


# ---------------------------------------------------------------- passwords

def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` (with its salt and parameters)."""
    check_password_strength(password)
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches ``stored_hash``; constant-ish time either way."""
    try:
        return _hasher.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AuthError(f"passwords have at least {MIN_PASSWORD} characters")


def check_username(username: str) -> str:
    username = username.strip()
    if not USERNAME_RE.match(username):
        raise AuthError("usernames are 2-64 letters, digits or . _ @ -")
    return username


# ---------------------------------------------------------------- tokens

def new_token() -> str:
    """A random URL-safe token with 256 bits of entropy."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What the database stores for a session or invite token."""
    return hashlib.sha256(token.encode()).hexdigest()


def same(a: str | None, b: str | None) -> bool:
    """Constant-time string comparison; False when either is missing."""
    return bool(a) and bool(b) and hmac.compare_digest(str(a).encode(), str(b).encode())


def server_key(session: Session) -> bytes:
    """The server's secret key, created on first use and kept in ``app_settings``."""
    row = session.get(AppSetting, "secret_key")
    if row is None:
        row = AppSetting(key="secret_key", value=secrets.token_hex(32))
        session.add(row)
        session.flush()
    return bytes.fromhex(row.value)


def prelogin_token(key: bytes, cookie_value: str) -> str:
    """The form token that goes with a pre-login cookie (signed double submit)."""
    return hmac.new(key, b"prelogin:" + cookie_value.encode(), hashlib.sha256).hexdigest()


def check_prelogin(key: bytes, cookie_value: str | None, form_value: str | None) -> bool:
    return bool(cookie_value) and same(prelogin_token(key, cookie_value or ""), form_value)


# ---------------------------------------------------------------- sessions

@dataclass(frozen=True)
class Viewer:
    """The logged-in user of one request."""
    user_id: int
    username: str
    role: str
    held_out: bool
    csrf_token: str
    session_id: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def start_session(session: Session, user: User) -> str:
    """Create a login session for ``user``; returns the cookie token (shown once)."""
    token = new_token()
    now = utcnow()
    session.execute(delete(WebSession).where(WebSession.expires_at < now))  # tidy up old sessions
    session.add(WebSession(id=token_hash(token), user_id=user.id, csrf_token=new_token(),
                           created_at=now, expires_at=now + SESSION_TTL))
    return token


def load_viewer(session: Session, token: str | None) -> Viewer | None:
    """The viewer for a session cookie, or None if missing, expired or disabled."""
    if not token or len(token) > 128:
        return None
    row = session.execute(
        select(WebSession, User).join(User, User.id == WebSession.user_id)
        .where(WebSession.id == token_hash(token))
    ).first()
    if row is None:
        return None
    ws, user = row
    if ws.expires_at < utcnow() or not user.active:
        return None
    return Viewer(user.id, user.username, user.role, user.held_out, ws.csrf_token, ws.id)


def end_session(session: Session, token: str | None) -> None:
    if token:
        session.execute(delete(WebSession).where(WebSession.id == token_hash(token)))


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The active user with this username and password, else None."""
    user = session.scalar(select(User).where(User.username == username.strip()))
    ok = verify_password(user.password_hash if user else None, password)
    return user if ok and user is not None and user.active else None


# ---------------------------------------------------------------- rate limiting

class RateLimiter:
    """Counts failures per key in a sliding window (in memory, one server process).

    ``blocked(key)`` is True once ``limit`` failures happened within ``window`` seconds.
    """

    def __init__(self, limit: int = 5, window: float = 60.0, clock=time.monotonic):
        self.limit, self.window, self.clock = limit, window, clock
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._events.setdefault(key, deque())
        while q and q[0] <= now - self.window:
            q.popleft()
        return q

    def blocked(self, *keys: str) -> bool:
        now = self.clock()
        with self._lock:
            return any(len(self._recent(k, now)) >= self.limit for k in keys)

    def fail(self, *keys: str) -> None:
        now = self.clock()
        with self._lock:
            for k in keys:
                self._recent(k, now).append(now)
            if len(self._events) > 100_000:  # bound memory under a flood of names
                self._events = {k: q for k, q in self._events.items() if self._recent(k, now)}

    def reset(self, *keys: str) -> None:
        with self._lock:
            for k in keys:
                self._events.pop(k, None)
