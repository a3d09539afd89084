"""Passwords, login sessions, CSRF tokens and the login rate limiter.

- Passwords are hashed with argon2id (argon2-cffi's defaults: t=3, m=64 MiB, p=4).
- A session is a random 256-bit token in an HttpOnly, SameSite=Strict (and, unless
  told otherwise, Secure) cookie; the database keeps only its SHA-256.
- Each session has its own CSRF token, sent in every form (``csrf_token``) and as
  the ``X-CSRF-Token`` header of every state-changing JSON call.
- Before login there is no session, so the login and invite forms use a signed
  double-submit token: a random cookie value plus its HMAC under the server key.
- ``LoginLimiter``: at most N login attempts per window under each of an attempt's
  keys, counted in the database before the password is checked (see its docstring).
  A login from a browser that has logged in as that user before (a valid device
  cookie) counts under that device alone; from any other browser, under its
  client address and the user name (``login_keys``). So others' failures lock
  out only the user's untrusted browsers, never a browser they logged in with.
  ``LoginLimiter.lockouts`` lists the keys locked now and ``LoginLimiter.lift``
  forgets one key's failures (the admin page and ``instructgpt label unlock``).
  The server records its limits in ``app_settings`` when it starts
  (``record_login_limits``), so ``instructgpt label lockouts`` judges the failures by
  the same limits (``recorded_login_limits``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session

from .store import Store
from .tables import AppSetting, LoginAttempt, User, WebSession, utcnow

SESSION_COOKIE = "igpt_session"
PRELOGIN_COOKIE = "igpt_prelogin"
DEVICE_COOKIE = "igpt_device"
SESSION_TTL = timedelta(hours=12)
DEVICE_TTL = timedelta(days=30)   # a device cookie vouches for its browser this long after its last login
USERNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{2,64}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1000   # characters; longer ones are refused everywhere (never cut short)
LOCK_KINDS = ("user", "ip", "device")   # what a rate-limit key counts under: "<kind>:<name>"
SECRET_KEY = "secret_key"   # app_settings: the server's secret key (hex)
LOGIN_LIMIT_KEY, LOGIN_WINDOW_KEY = "login_limit", "login_window"   # app_settings: the server's limits at its start

log = logging.getLogger("instructgpt.labeling")   # the server's log: who lifted which lockout

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
    """``AuthError`` unless the password has MIN_PASSWORD to MAX_PASSWORD characters.

    Every way to set a password (invite, create_user, set_password) checks
    this, and login refuses a longer one with the same message, so no password
    is ever cut short.
    """
    if len(password) < MIN_PASSWORD:
        raise AuthError(f"passwords have at least {MIN_PASSWORD} characters")
    check_password_length(password)


def check_password_length(password: str) -> None:
    """``AuthError`` if the password has more than MAX_PASSWORD characters."""
    if len(password) > MAX_PASSWORD:
        raise AuthError(f"passwords have at most {MAX_PASSWORD} characters (this one has {len(password)})")


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
    """The server's secret key, created on first use and kept in ``app_settings``.

    Created by an insert that does nothing when the key is there (waiting for another process's uncommitted
    one), then read: servers starting at once on a new database all get the first committed key.
    """
    value = session.scalar(select(AppSetting.value).where(AppSetting.key == SECRET_KEY))
    if value is None:
        stmt = _insert(session)(AppSetting).values(key=SECRET_KEY, value=secrets.token_hex(32))
        session.execute(stmt.on_conflict_do_nothing(index_elements=[AppSetting.key]))
        value = session.scalar(select(AppSetting.value).where(AppSetting.key == SECRET_KEY))
    return bytes.fromhex(value)


def _insert(session: Session):
    """The ``insert`` of the session's dialect, which has ``on_conflict_do_*`` (PostgreSQL or SQLite)."""
    if session.bind.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def prelogin_token(key: bytes, cookie_value: str) -> str:
    """The form token that goes with a pre-login cookie (signed double submit)."""
    return hmac.new(key, b"prelogin:" + cookie_value.encode(), hashlib.sha256).hexdigest()


def check_prelogin(key: bytes, cookie_value: str | None, form_value: str | None) -> bool:
    return bool(cookie_value) and same(prelogin_token(key, cookie_value or ""), form_value)


# ---------------------------------------------------------------- device cookies

def _device_mac(key: bytes, username: str, device: str, issued: int) -> str:
    message = f"device:{username.strip().lower()}:{device}:{issued}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def device_cookie(key: bytes, username: str, now=None) -> str:
    """A new device cookie value for a browser that has just logged in as ``username``.

    ``<device id>.<issued, epoch seconds>.<HMAC of user name, id and time>``: only
    the server can make one, and it vouches for one user name.
    """
    device, issued = secrets.token_hex(16), int((now or utcnow()).replace(tzinfo=UTC).timestamp())
    return f"{device}.{issued}.{_device_mac(key, username, device, issued)}"


def trusted_device(key: bytes, cookie: str | None, username: str, now=None) -> str | None:
    """The device id of ``cookie`` if it vouches for ``username`` and is at most DEVICE_TTL old, else None."""
    parts = (cookie or "").split(".")
    if len(cookie or "") > 200 or len(parts) != 3 or not (parts[1].isascii() and parts[1].isdigit()):
        return None
    device, issued, mac = parts[0], int(parts[1]), parts[2]
    age = (now or utcnow()).replace(tzinfo=UTC).timestamp() - issued
    if not 0 <= age <= DEVICE_TTL.total_seconds():
        return None
    return device if same(_device_mac(key, username, device, issued), mac) else None


def login_keys(username: str, address: str, device: str | None) -> tuple[str, ...]:
    """The rate-limit keys of a login: its trusted device alone, else its client address and user name.

    ``device:<id>`` (a browser that logged in as this user before) bounds that
    browser's guesses at that name, and nothing else counts: failures of others,
    from other addresses or from the same one (an office behind one NAT address),
    never lock a user out of a browser they have logged in with. Every other
    browser counts under ``ip:<address>``, which bounds the guesses from one
    address across user names, and ``user:<name>``, which bounds the guesses at
    one account from everywhere.
    """
    if device:
        return (f"device:{device}",)
    return f"ip:{address}", user_key(username)


def user_key(username: str) -> str:
    """The rate-limit key of a user name (case and surrounding blanks do not count)."""
    return f"user:{username.strip().lower()}"


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


def revoke_sessions(session: Session, user_id: int) -> int:
    """Log ``user_id`` out everywhere (password reset, deactivation); returns how many sessions ended."""
    return session.execute(delete(WebSession).where(WebSession.user_id == user_id)).rowcount


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The active user with this username and password, else None."""
    user = session.scalar(select(User).where(User.username == username.strip()))
    ok = verify_password(user.password_hash if user else None, password)
    return user if ok and user is not None and user.active else None


# ---------------------------------------------------------------- rate limiting

@dataclass(frozen=True)
class Reservation:
    """The limiter's answer to a login attempt."""
    attempt: str | None = None  # the attempt's id: check the password, then ``fail`` or ``forgive`` it
    blocked: bool = False       # failures reached the limit: refuse (429)
    # neither: attempts in flight fill the allowance; ask again when they have ended

    @property
    def busy(self) -> bool:
        return self.attempt is None and not self.blocked


@dataclass(frozen=True)
class Lockout:
    """A rate-limit key whose failed logins fill its allowance now."""
    key: str                  # "user:<name>", "ip:<address>" or "device:<id>"
    failures: int             # failed attempts under it within the window
    until: datetime           # when enough of them age out of the window to let a login through
    user_names: tuple[str, ...] = ()   # an address's lockout: the user names its failures tried

    @property
    def kind(self) -> str:
        return self.key.partition(":")[0]

    @property
    def name(self) -> str:
        return self.key.partition(":")[2]


def check_lock_key(key: str) -> str:
    """``key`` if it names a rate-limit key (``<kind>:<name>``, kind one of LOCK_KINDS), else ``AuthError``."""
    kind, colon, name = key.partition(":")
    if kind not in LOCK_KINDS or not colon or not name or len(key) > 255:
        raise AuthError(f"lockout key {key[:80]!r}: expected user:<name>, ip:<address> or device:<id>")
    return key


class LoginLimiter:
    """At most ``limit`` failed or in-flight login attempts per key in a window.

    A login's keys are ``login_keys``: its trusted device, or else its client
    address and user name. An invite counts under the client address alone.

    The attempts live in the ``login_attempts`` table, so every server process
    sees the same counts. ``reserve(keys)`` checks and records in one
    transaction, BEFORE the password is verified, so a burst of concurrent
    attempts cannot all pass the check before any is counted. The transaction
    is serialised per key (SQLite: ``BEGIN IMMEDIATE``, one writer at a time;
    PostgreSQL: a transaction-scoped advisory lock per key, in sorted order).

    After the check, ``fail`` keeps the attempt counted as a failure and
    ``forgive`` forgets it (a successful login also forgets the earlier
    failures of its user name or device, not those of other attempts still in flight). So at
    most ``limit`` wrong passwords are checked per key and window, however
    many arrive at once; a right one among the first ``limit`` gets in. While attempts in flight fill the allowance the answer is
    "busy" rather than "blocked": many right passwords at once from one
    address (an office behind NAT) wait their turn instead of being refused.
    """

    def __init__(self, store: Store, limit: int = 5, window: float = 60.0, clock=utcnow):
        self.store, self.limit, self.window, self.clock = store, limit, window, clock

    def _counts(self, s: Session, keys: tuple[str, ...], cutoff) -> dict[tuple[str, bool], int]:
        """(key, failed) -> attempts within the window."""
        return {(k, bool(failed)): n for k, failed, n in s.execute(
            select(LoginAttempt.key, LoginAttempt.failed, func.count())
            .where(LoginAttempt.key.in_(keys), LoginAttempt.at > cutoff)
            .group_by(LoginAttempt.key, LoginAttempt.failed))}

    def _verdict(self, counts: dict[tuple[str, bool], int], keys: tuple[str, ...]) -> Reservation | None:
        """BLOCKED or BUSY if some key has no room, None if every key has."""
        if any(counts.get((k, True), 0) >= self.limit for k in keys):
            return Reservation(blocked=True)
        if any(counts.get((k, True), 0) + counts.get((k, False), 0) >= self.limit for k in keys):
            return Reservation()
        return None

    def reserve(self, *keys: str) -> Reservation:
        """Record an attempt under every key, unless some key is blocked or busy."""
        keys = tuple(sorted(set(keys)))
        now = self.clock()
        cutoff = now - timedelta(seconds=self.window)
        with self.store.tx(read_only=True) as s:  # refusals (and waiting) take no write lock
            verdict = self._verdict(self._counts(s, keys, cutoff), keys)
        if verdict is not None:
            return verdict
        with self.store.tx() as s:
            if s.bind.dialect.name == "postgresql":
                for k in keys:
                    s.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": k})
            s.execute(delete(LoginAttempt).where(LoginAttempt.at <= cutoff))  # forget old attempts
            verdict = self._verdict(self._counts(s, keys, cutoff), keys)
            if verdict is not None:
                return verdict
            attempt = secrets.token_hex(16)
            s.add_all([LoginAttempt(key=k, attempt=attempt, failed=False, at=now) for k in keys])
            return Reservation(attempt=attempt)

    def fail(self, attempt: str) -> None:
        """The attempt's password was wrong: it stays counted, as a failure."""
        with self.store.tx() as s:
            s.execute(update(LoginAttempt).where(LoginAttempt.attempt == attempt).values(failed=True))

    def forgive(self, attempt: str, *keys: str) -> None:
        """Forget ``attempt`` (it succeeded) and the failures recorded under ``keys``.

        Attempts of others still in flight are not forgiven: they end as failures.
        """
        with self.store.tx() as s:
            s.execute(delete(LoginAttempt).where(LoginAttempt.attempt == attempt))
            if keys:
                s.execute(delete(LoginAttempt).where(LoginAttempt.key.in_(keys), LoginAttempt.failed))

    def blocked(self, *keys: str) -> bool:
        """Whether failures fill the allowance of any key now (read only)."""
        cutoff = self.clock() - timedelta(seconds=self.window)
        with self.store.tx(read_only=True) as s:
            return any(n >= self.limit and failed for (_, failed), n in self._counts(s, keys, cutoff).items())

    def reset(self, *keys: str) -> None:
        """Forget every attempt under ``keys``."""
        with self.store.tx() as s:
            s.execute(delete(LoginAttempt).where(LoginAttempt.key.in_(keys)))

    def lockouts(self) -> list[Lockout]:
        """Every key locked now (failures within the window at the limit or above), most failures first."""
        cutoff = self.clock() - timedelta(seconds=self.window)
        with self.store.tx(read_only=True) as s:
            failed = s.execute(select(LoginAttempt.key, LoginAttempt.at, LoginAttempt.attempt)
                               .where(LoginAttempt.failed, LoginAttempt.at > cutoff)
                               .order_by(LoginAttempt.key, LoginAttempt.at)).all()
            by_key: dict[str, list] = {}
            for key, at, attempt in failed:
                by_key.setdefault(key, []).append((at, attempt))
            locked = {k: rows for k, rows in by_key.items() if len(rows) >= self.limit}
            names = self._names_tried(s, [a for k, rows in locked.items() if k.startswith("ip:") for _, a in rows])
        out = [Lockout(key, len(rows), rows[len(rows) - self.limit][0] + timedelta(seconds=self.window),
                       tuple(sorted({names[a] for _, a in rows if a in names})))
               for key, rows in locked.items()]
        return sorted(out, key=lambda lock: (-lock.failures, lock.key))

    @staticmethod
    def _names_tried(s: Session, attempts: list[str]) -> dict[str, str]:
        """attempt -> the user name it tried (the ``user:`` row written beside its address's row)."""
        names = {}
        for i in range(0, len(attempts), 500):
            rows = s.execute(select(LoginAttempt.attempt, LoginAttempt.key)
                             .where(LoginAttempt.attempt.in_(attempts[i:i + 500]),
                                    LoginAttempt.key.startswith("user:", autoescape=True)))
            names.update((a, key.partition(":")[2]) for a, key in rows)
        return names

    def lift(self, key: str, by: str) -> int:
        """Forget the failed logins under ``key`` (an admin lifting its lockout); returns how many.

        Attempts in flight stay counted. The server's log records who lifted which key.
        """
        check_lock_key(key)
        with self.store.tx() as s:
            n = s.execute(delete(LoginAttempt).where(LoginAttempt.key == key, LoginAttempt.failed)).rowcount
        log.warning("login lockout lifted: %s (%d failed attempts forgotten) by %s", key, n, by)
        return n


def record_login_limits(session: Session, limit: int, window: float) -> None:
    """Keep the limits a server starts with in ``app_settings`` (one upsert per key: the workers of one server
    start at once and write the same values)."""
    for key, value in ((LOGIN_LIMIT_KEY, str(limit)), (LOGIN_WINDOW_KEY, str(float(window)))):
        stmt = _insert(session)(AppSetting).values(key=key, value=value)
        session.execute(stmt.on_conflict_do_update(index_elements=[AppSetting.key], set_={"value": value}))


def recorded_login_limits(session: Session) -> tuple[int, float] | None:
    """(limit, window in seconds) as the server last recorded them at its start; None if no server has started
    since they were recorded. ``ValueError`` naming the ``app_settings`` row if one is not a positive number."""
    rows = dict(session.execute(select(AppSetting.key, AppSetting.value)
                                .where(AppSetting.key.in_((LOGIN_LIMIT_KEY, LOGIN_WINDOW_KEY)))).all())
    if not rows:
        return None
    values = []
    for key, kind in ((LOGIN_LIMIT_KEY, int), (LOGIN_WINDOW_KEY, float)):
        try:
            value = kind(rows[key])
        except (KeyError, ValueError):
            value = None
        if value is None or not (math.isfinite(value) and value > 0):
            raise ValueError(f"app_settings row {key!r}: {rows.get(key, 'missing')!r} is not a positive number "
                             f"(start the server again to record its limits, or give --login-limit and --login-window)")
        values.append(value)
    return values[0], values[1]
