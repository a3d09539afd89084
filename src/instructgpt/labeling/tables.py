"""The SQL tables of the labeling database (SQLAlchemy declarative classes).

Not to be confused with ``instructgpt.models`` (the neural models).

Tables (see docs/labeling.md for the full description):

- ``users``: admins and labelers; ``held_out`` labelers feed evaluation only.
- ``invites``: one-time invite tokens (only their SHA-256 is stored).
- ``web_sessions``: login sessions (token SHA-256, CSRF token, expiry).
- ``tasks``: a prompt to demonstrate, or a prompt with K responses to rank.
- ``assignments``: a task given to one labeler (at most once per labeler). A
  pending claim is ``released`` when its lease runs out, when the labeler is
  deactivated, or when an admin releases it; its slot goes back to the pool.
- ``labels``: what a labeler submitted for an assignment; ``request_id`` is
  the per-form UUID that makes resubmission idempotent.
- ``login_attempts``: recent login attempts per user name (or trusted device) and per client IP
  (the rate limiter; in the database so that several server processes share it).
- ``app_settings``: key/value pairs (the server's secret key; the login limits it last started with).

Times are naive UTC ``datetime`` values (the same on SQLite and PostgreSQL).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    literal_column,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ROLES = ("admin", "labeler")
TASK_KINDS = ("demonstration", "rank")
LABEL_KINDS = ("demonstration", "rank", "skip")
ASSIGNMENT_STATES = ("pending", "done", "skipped", "released")
RELEASE_REASONS = ("expired", "deactivated", "admin")

# Deterministic constraint names, so Alembic migrations can refer to them.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time as naive UTC (what every timestamp column holds)."""
    return datetime.now(UTC).replace(tzinfo=None)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (CheckConstraint(_in("role", ROLES), name="role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="labeler")
    held_out: Mapped[bool] = mapped_column(Boolean, default=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Invite(Base):
    __tablename__ = "invites"
    __table_args__ = (CheckConstraint(_in("role", ROLES), name="role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="labeler")
    held_out: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    used_at: Mapped[datetime | None] = mapped_column(DateTime)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class WebSession(Base):
    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the cookie token
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime)


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint(_in("kind", TASK_KINDS), name="kind"),
        UniqueConstraint("content_hash"),
        Index("ix_tasks_open", "kind", "slots_left"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    prompt_id: Mapped[str] = mapped_column(String(255))
    prompt: Mapped[str] = mapped_column(Text)
    responses: Mapped[list | None] = mapped_column(JSON)   # rank tasks: K strings, original order
    meta: Mapped[dict] = mapped_column(JSON, default=dict)
    content_hash: Mapped[str] = mapped_column(String(64))   # re-importing a file adds nothing
    target_labels: Mapped[int] = mapped_column(Integer, default=1)
    slots_left: Mapped[int] = mapped_column(Integer, default=1)  # claims still open
    batch: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


# The claim order (tasks.claim_tasks): open tasks only, those others have started first, then by id.
# A claim reads the first few entries instead of sorting every open task.
CLAIM_ORDER = ((Task.slots_left < Task.target_labels).self_group().desc(), Task.id)
OPEN_TASK = Task.slots_left > literal_column("0")   # a literal, so the planner can match the partial index
Index("ix_tasks_claim", *CLAIM_ORDER, sqlite_where=OPEN_TASK, postgresql_where=OPEN_TASK)

# The held-out claim order (tasks.claim_tasks): every task, those with the most training labelers' claims
# (target_labels - slots_left: pending or done, not skipped or released) first, then by id.
HELD_OUT_ORDER = ((Task.target_labels - Task.slots_left).self_group().desc(), Task.id)
Index("ix_tasks_held_out", *HELD_OUT_ORDER)


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (
        CheckConstraint(_in("status", ASSIGNMENT_STATES), name="status"),
        UniqueConstraint("task_id", "user_id"),
        Index("ix_assignments_user_status", "user_id", "status"),
        Index("ix_assignments_status_assigned", "status", "assigned_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    assigned_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    opened_at: Mapped[datetime | None] = mapped_column(DateTime)
    done_at: Mapped[datetime | None] = mapped_column(DateTime)
    # False exactly for a held-out labeler's claim, fixed when the claim is made: the export and
    # the agreement figures file its label by it (changing a labeler's mark releases pending claims).
    took_slot: Mapped[bool] = mapped_column(Boolean, default=True)
    released_at: Mapped[datetime | None] = mapped_column(DateTime)
    release_reason: Mapped[str | None] = mapped_column(String(16))  # RELEASE_REASONS


class Label(Base):
    __tablename__ = "labels"
    __table_args__ = (
        CheckConstraint(_in("kind", LABEL_KINDS), name="kind"),
        UniqueConstraint("request_id"),
        UniqueConstraint("assignment_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[str] = mapped_column(String(36))
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    response: Mapped[str | None] = mapped_column(Text)      # demonstration
    ranking: Mapped[list | None] = mapped_column(JSON)      # groups of ORIGINAL indices, best first
    likert: Mapped[list | None] = mapped_column(JSON)       # per original index, 1-7
    flags: Mapped[list | None] = mapped_column(JSON)        # per original index, FLAGS names
    comment: Mapped[str | None] = mapped_column(Text)
    skip_reason: Mapped[str | None] = mapped_column(Text)
    seconds_spent: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class LoginAttempt(Base):
    """One login attempt under one key; an attempt writes a row per key (user name or device, IP).

    A row is in flight until its password check ends: a failure marks it
    ``failed``, a success deletes it.
    """
    __tablename__ = "login_attempts"
    __table_args__ = (Index("ix_login_attempts_key_at", "key", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(255))      # "user:<name>", "device:<id>" or "ip:<address>"
    attempt: Mapped[str] = mapped_column(String(32))   # shared by the rows of one attempt
    failed: Mapped[bool] = mapped_column(Boolean, default=False)  # False: its password is being checked
    at: Mapped[datetime] = mapped_column(DateTime, index=True)


class AppSetting(Base):
    __tablename__ = "app_settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
