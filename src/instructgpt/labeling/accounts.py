"""Users and invites: creating admins and labelers, invite links, held-out marking.

Changing a password or deactivating a user ends every session of that user
(reactivating does not bring them back), and deactivation releases the
user's pending tasks to the pool, as does changing their held-out mark (a
claim keeps the mark it was made under; see ``tasks``).

Usernames are unique regardless of case: "Alice" cannot be created beside
"alice" (existing accounts keep their names and log in as before).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from .security import (
    AuthError,
    check_password_strength,
    check_username,
    hash_password,
    new_token,
    revoke_sessions,
    token_hash,
)
from .store import Store
from .tables import ROLES, Invite, User, utcnow
from .tasks import MAX_ID, release_user_tasks

INVITE_TTL = timedelta(days=7)
INVITE_CLOSED = "this invite link is invalid, used or expired"


@dataclass(frozen=True)
class UserInfo:
    id: int
    username: str
    role: str
    held_out: bool
    active: bool


def _info(u: User) -> UserInfo:
    return UserInfo(u.id, u.username, u.role, u.held_out, u.active)


def _check_name_free(s, username: str) -> None:
    """``AuthError`` if a user of this name exists in any letter case (in the caller's write transaction).

    On PostgreSQL a transaction-scoped advisory lock on the lower-cased name
    serialises two creations of the same name; SQLite serialises writers anyway.
    """
    folded = username.lower()
    if s.bind.dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": "username:" + folded})
    taken = s.scalar(select(User.username).where(func.lower(User.username) == folded).limit(1))
    if taken is not None:
        raise AuthError(f"the username {username!r} is taken" if taken == username else
                        f"the username {username!r} is taken (as {taken!r}: names differing only in "
                        f"upper/lower case are the same name)")


def create_user(store: Store, username: str, password: str, role: str = "labeler",
                held_out: bool = False, password_hash: str | None = None) -> UserInfo:
    """A new account; ``AuthError`` if the name is taken or the input is invalid.

    ``password_hash`` (an argon2 hash made earlier) skips hashing, for bulk set-up.
    """
    if role not in ROLES:
        raise AuthError(f"role must be one of {', '.join(ROLES)}")
    username = check_username(username)
    pw_hash = password_hash or hash_password(password)
    try:
        with store.tx() as s:
            _check_name_free(s, username)
            user = User(username=username, password_hash=pw_hash, role=role, held_out=held_out)
            s.add(user)
            s.flush()
            return _info(user)
    except IntegrityError:
        raise AuthError(f"the username {username!r} is taken") from None


def set_password(store: Store, username: str, password: str) -> int:
    """Change a password and end the user's sessions; returns how many sessions ended."""
    pw_hash = hash_password(password)
    with store.tx() as s:
        user = s.scalar(select(User).where(User.username == username))
        if user is None:
            raise AuthError(f"no user {username!r}")
        user.password_hash = pw_hash
        return revoke_sessions(s, user.id)


def list_users(store: Store) -> list[UserInfo]:
    with store.tx(read_only=True) as s:
        return [_info(u) for u in s.scalars(select(User).order_by(User.role, User.username))]


def update_user(store: Store, user_id: int, *, held_out: bool | None = None,
                active: bool | None = None) -> UserInfo:
    """Mark a user held-out (labels go to evaluation only) or (de)activate them.

    Deactivating ends the user's sessions and releases their pending tasks.
    Changing the held-out mark releases their pending tasks too: a claim's
    mark is fixed when it is made (its slot, and where the export files its
    label), so none stays pending under the old one. Labels already given
    stay where they were.
    """
    with store.tx() as s:
        # FOR UPDATE: a concurrent claim (which locks the user row) sees the new mark or is released
        user = s.get(User, user_id, with_for_update=True) if 0 < user_id <= MAX_ID else None
        if user is None:
            raise AuthError("no such user")
        if held_out is not None and held_out != user.held_out:
            user.held_out = held_out
            release_user_tasks(s, user.id, "admin")
        if active is not None:
            if not active and user.role == "admin" and _active_admins(s) <= 1:
                raise AuthError("the last active admin cannot be deactivated")
            user.active = active
            if not active:
                revoke_sessions(s, user.id)
                release_user_tasks(s, user.id, "deactivated")
        return _info(user)


def _active_admins(s) -> int:
    return s.scalar(select(func.count()).select_from(User).where(User.role == "admin", User.active))


def create_invite(store: Store, created_by: int | None = None, role: str = "labeler",
                  held_out: bool = False, ttl: timedelta = INVITE_TTL) -> str:
    """A one-time invite token (only its hash is stored); put it in ``/invite/<token>``."""
    if role not in ROLES:
        raise AuthError(f"role must be one of {', '.join(ROLES)}")
    token = new_token()
    now = utcnow()
    with store.tx() as s:
        s.add(Invite(token_hash=token_hash(token), role=role, held_out=held_out,
                     created_by=created_by, created_at=now, expires_at=now + ttl))
    return token


def invite_is_open(store: Store, token: str) -> bool:
    """Whether ``token`` is an invite that is neither used nor expired (read only)."""
    with store.tx(read_only=True) as s:
        return _open_invite(s, token, lock=False) is not None


def _open_invite(s, token: str, lock: bool = True) -> Invite | None:
    if not token or len(token) > 128:
        return None
    query = select(Invite).where(Invite.token_hash == token_hash(token))
    inv = s.scalar(query.with_for_update() if lock else query)
    if inv is None or inv.used_at is not None or inv.expires_at < utcnow():
        return None
    return inv


def accept_invite(store: Store, token: str, username: str, password: str) -> UserInfo:
    """Create the invited account; the token cannot be used again.

    The token is checked (read only) before the password is hashed, so a
    wrong token costs no argon2 work; it is checked again, locked, when the
    account is created.
    """
    username = check_username(username)
    check_password_strength(password)
    if not invite_is_open(store, token):
        raise AuthError(INVITE_CLOSED)
    pw_hash = hash_password(password)
    try:
        with store.tx() as s:
            inv = _open_invite(s, token)
            if inv is None:
                raise AuthError(INVITE_CLOSED)
            _check_name_free(s, username)
            user = User(username=username, password_hash=pw_hash, role=inv.role, held_out=inv.held_out)
            s.add(user)
            s.flush()
            inv.used_at, inv.user_id = utcnow(), user.id
            return _info(user)
    except IntegrityError:
        raise AuthError(f"the username {username!r} is taken") from None
