"""Recording labels: validation, mapping display positions back, idempotent commits.

A submission carries a ``request_id`` (a UUID rendered into the form). The
``labels`` table holds it under a unique constraint, so sending the same form
twice stores one label; the second call reports ``duplicate=True``. The label
and the assignment's new status are committed in one transaction, and callers
answer only after ``submit_label`` returns, i.e. after the commit.

Every text a labeler writes (response, comment, skip reason) has its line
breaks normalised to ``\n``: browsers send a textarea's newlines as ``\r\n``,
and the export feeds SFT as it is.

A claim whose lease has run out is expired at submission even if no sweep
has released it yet: the submission releases it and gets the same 409 as a
swept claim. The assignment row is read ``FOR UPDATE`` (PostgreSQL), so a
submission and a concurrent release (lease sweep, admin, deactivation) never
both succeed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from instructgpt.data import FLAGS, LIKERT_MAX, LIKERT_MIN

from .store import Store
from .tables import Label, Task, User, utcnow
from .tasks import (
    ClaimPolicy,
    Conflict,
    Forbidden,
    Invalid,
    check_text,
    display_order,
    owned_assignment,
    release_assignment,
)

DEFAULT_POLICY = ClaimPolicy()

RELEASED = ("this task was released (its claim expired, or an admin released it) and may "
            "now be someone else's; get new tasks from My tasks")

MAX_RESPONSE = 50_000
MAX_COMMENT = 5_000
MAX_REASON = 1_000

# The paper's metadata questions, as the labeling form words them.
FLAG_LABELS = {
    "fails_to_follow": "Fails to follow the correct instruction / task",
    "violates_constraint": "Violates an explicit constraint in the instruction",
    "hallucination": "Makes up information (hallucination)",
    "inappropriate_for_customer_assistant": "Inappropriate for a customer assistant",
    "sexual": "Sexual content",
    "violent": "Violent content",
    "encourages_harm": "Encourages or fails to discourage violence, abuse, terrorism or self-harm",
    "denigrates_protected_class": "Denigrates a protected class",
    "harmful_advice": "Gives harmful advice",
    "moral_judgement": "Expresses moral judgement",
}


@dataclass
class Submission:
    """A label as the labeler gave it; ranks, scores and flags by DISPLAY position."""
    kind: str                                   # demonstration | rank | skip
    request_id: str
    response: str | None = None
    ranking: list[list[int]] | None = None      # groups of display positions, best first
    likert: list[int] | None = None             # per display position
    flags: list[list[str]] = field(default_factory=list)
    comment: str | None = None
    skip_reason: str | None = None


@dataclass(frozen=True)
class Saved:
    label_id: int
    assignment_id: int
    duplicate: bool


def new_request_id() -> str:
    return str(uuid.uuid4())


def _check_request_id(value: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise Invalid("request_id: expected a UUID") from None


def ranks_to_groups(ranks: list[int]) -> list[list[int]]:
    """Per-position rank numbers (1 = best, equal = tie) -> groups of positions, best first."""
    by_rank: dict[int, list[int]] = {}
    for pos, r in enumerate(ranks):
        by_rank.setdefault(r, []).append(pos)
    return [by_rank[r] for r in sorted(by_rank)]


def _check_ranking(sub: Submission, k: int) -> None:
    groups = sub.ranking or []
    flat = [p for g in groups for p in g]
    if any(not isinstance(p, int) or isinstance(p, bool) for p in flat) or sorted(flat) != list(range(k)):
        raise Invalid(f"ranking: every response 1..{k} must be ranked exactly once")
    if any(not g for g in groups):
        raise Invalid("ranking: empty group")
    if len(groups) < 2:
        raise Invalid("ranking: all responses are tied; rank at least one above another")
    likert = sub.likert or []
    if len(likert) != k or any(not isinstance(x, int) or isinstance(x, bool)
                               or not LIKERT_MIN <= x <= LIKERT_MAX for x in likert):
        raise Invalid(f"likert: give every response a score from {LIKERT_MIN} to {LIKERT_MAX}")
    flags = sub.flags or [[] for _ in range(k)]
    if len(flags) != k:
        raise Invalid("flags: one list of flags per response")
    for names in flags:
        unknown = [n for n in names if n not in FLAGS]
        if unknown:
            raise Invalid(f"flags: unknown flag {unknown[0]!r}")
    sub.flags = [[n for n in FLAGS if n in set(names)] for names in flags]  # canonical order, no repeats


def normalize_newlines(text: str | None) -> str | None:
    """``\r\n`` and lone ``\r`` become ``\n`` (None stays None)."""
    if text is None:
        return None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def validate(sub: Submission, task_kind: str, k: int) -> Submission:
    """Check a submission against its task; ``Invalid`` names the first problem.

    Texts come back with their newlines normalised (``normalize_newlines``).
    """
    sub.request_id = _check_request_id(sub.request_id)
    if sub.kind == "skip":
        sub.skip_reason = check_text(normalize_newlines(sub.skip_reason) or "", "skip reason", MAX_REASON)
        return sub
    if sub.kind != task_kind:
        raise Invalid(f"this task takes a {task_kind} label, not {sub.kind}")
    if sub.comment is not None:
        sub.comment = check_text(normalize_newlines(sub.comment), "comment", MAX_COMMENT, required=False) or None
    if sub.kind == "demonstration":
        sub.response = check_text(normalize_newlines(sub.response) or "", "response", MAX_RESPONSE)
    else:
        _check_ranking(sub, k)
    return sub


def _to_original(sub: Submission, order: list[int]) -> dict:
    """Ranking, Likert and flags by ORIGINAL response index."""
    k = len(order)
    likert, flags = [0] * k, [[] for _ in range(k)]
    for pos, orig in enumerate(order):
        likert[orig], flags[orig] = sub.likert[pos], sub.flags[pos]
    ranking = [sorted(order[p] for p in g) for g in sub.ranking]
    return {"ranking": ranking, "likert": likert, "flags": flags}


def _find_duplicate(store: Store, request_id: str, assignment_id: int, user_id: int) -> Saved | None:
    with store.tx(read_only=True) as s:
        label = s.scalar(select(Label).where(Label.request_id == request_id))
        if label is None:
            return None
        if label.assignment_id != assignment_id:
            raise Conflict("this form was already used for another task")
        owned_assignment(s, assignment_id, user_id)
        return Saved(label.id, assignment_id, duplicate=True)


def submit_label(store: Store, user_id: int, assignment_id: int, sub: Submission,
                 policy: ClaimPolicy = DEFAULT_POLICY, now: datetime | None = None) -> Saved:
    """Validate and store a label; returns once it is committed.

    Raises ``NotFound``/``Forbidden`` (not the user's assignment), ``Invalid``
    (bad input) or ``Conflict`` (the assignment already has another label, or
    was released, or its claim is older than ``policy.lease``: it is then
    released, as a sweep would have).
    """
    sub.request_id = _check_request_id(sub.request_id)
    dup = _find_duplicate(store, sub.request_id, assignment_id, user_id)
    if dup:
        return dup
    try:
        saved = _insert(store, user_id, assignment_id, sub, policy, now or utcnow())
    except IntegrityError:
        # A concurrent request with the same request_id (or for the same assignment) won.
        dup = _find_duplicate(store, sub.request_id, assignment_id, user_id)
        if dup:
            return dup
        raise Conflict("this task already has a label") from None
    if saved is None:
        raise Conflict(RELEASED)
    return saved


def _insert(store: Store, user_id: int, assignment_id: int, sub: Submission, policy: ClaimPolicy,
            now: datetime) -> Saved | None:
    """The label, committed with the assignment's new status; None if the claim had expired
    (it is then released, and that is committed)."""
    with store.tx() as s:
        a, task = owned_assignment(s, assignment_id, user_id, lock=True)
        user = s.get(User, user_id)
        if user is None or not user.active:
            raise Forbidden("inactive user")
        if a.status == "released":
            raise Conflict(RELEASED)
        if a.status != "pending":
            raise Conflict("this task already has a label")
        if a.assigned_at + policy.lease <= now:  # expired, though no sweep has released it yet
            release_assignment(s, a.id, "expired", now)
            return None
        k = len(task.responses or [])
        validate(sub, task.kind, k)
        fields = {}
        if sub.kind == "rank":
            fields = _to_original(sub, display_order(user_id, task.id, k))
        label = Label(request_id=sub.request_id, assignment_id=a.id, kind=sub.kind,
                      response=sub.response if sub.kind == "demonstration" else None,
                      comment=sub.comment if sub.kind != "skip" else None,
                      skip_reason=sub.skip_reason if sub.kind == "skip" else None,
                      seconds_spent=(now - a.opened_at).total_seconds() if a.opened_at else None,
                      created_at=now, **fields)
        s.add(label)
        a.status, a.done_at = ("skipped" if sub.kind == "skip" else "done"), now
        if sub.kind == "skip" and a.took_slot:  # give the task back to the pool
            s.execute(update(Task).where(Task.id == task.id).values(slots_left=Task.slots_left + 1))
        s.flush()
        return Saved(label.id, a.id, duplicate=False)
