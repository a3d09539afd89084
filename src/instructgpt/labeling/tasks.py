"""Tasks: importing them, handing them out to labelers, and showing them.

A task is either a prompt to write a demonstration for, or a prompt with K
responses to rank. Each task wants ``target_labels`` labels: 1, or
``overlap_k`` for the ``overlap_fraction`` share of tasks picked for overlap
(so that agreement between labelers can be measured). ``slots_left`` counts
the claims still open; claiming decrements it with a conditional UPDATE, which
is atomic on SQLite and PostgreSQL alike, so a task is never over-assigned.

Held-out labelers label on top of that: their claims take no slot, and they
are offered tasks that already have labels first, so their agreement with the
training labelers can be measured.
"""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update

from instructgpt import data

from .models import Assignment, Label, Task, User, utcnow
from .store import Store

K_MIN, K_MAX = 4, 9            # responses per ranking task (the paper's K = 4..9)
MAX_TEXT = 100_000             # characters in one prompt or response


class TaskError(Exception):
    """Base of the errors the web layer turns into HTTP statuses."""
    status = 400


class NotFound(TaskError):
    status = 404


class Forbidden(TaskError):
    status = 403


class Conflict(TaskError):
    status = 409


class Invalid(TaskError):
    status = 422


# ---------------------------------------------------------------- importing

@dataclass
class ImportResult:
    kind: str
    read: int = 0          # records read from the file
    added: int = 0         # new tasks
    existing: int = 0      # already imported before (same content)
    overlapping: int = 0   # new tasks that want overlap_k labels
    curation: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        text = (f"{self.kind}: read {self.read}, added {self.added} tasks "
                f"({self.overlapping} with overlap), {self.existing} already imported")
        removed = {why: n for why, n in (self.curation.get("removed") or {}).items() if n}
        if removed:
            text += "; curation removed " + ", ".join(f"{n} ({why})" for why, n in removed.items())
        return text


def content_hash(kind: str, prompt_id: str, prompt: str, responses: list[str] | None) -> str:
    """Identity of a task's content: importing the same task twice adds it once."""
    blob = json.dumps([kind, prompt_id, prompt, responses], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _overlap_set(hashes: list[str], fraction: float) -> set[str]:
    """round(fraction * n) of the hashes, chosen deterministically (by a second hash)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"overlap_fraction must be in [0, 1], got {fraction}")
    n = round(fraction * len(hashes))
    ranked = sorted(hashes, key=lambda h: hashlib.sha256(f"overlap:{h}".encode()).hexdigest())
    return set(ranked[:n])


def check_text(value: str, name: str, max_len: int = MAX_TEXT, required: bool = True) -> str:
    """``value`` unchanged if it is storable text; ``Invalid`` otherwise."""
    if not isinstance(value, str):
        raise Invalid(f"{name}: expected text")
    if required and not value.strip():
        raise Invalid(f"{name}: empty")
    if len(value) > max_len:
        raise Invalid(f"{name}: longer than {max_len} characters")
    if "\x00" in value:
        raise Invalid(f"{name}: contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid(f"{name}: not valid Unicode (lone surrogate)") from None
    return value


def _add_tasks(store: Store, rows: list[dict[str, Any]], result: ImportResult,
               overlap_fraction: float, overlap_k: int, batch: str) -> ImportResult:
    """Insert task rows (dicts with kind, prompt_id, prompt, responses, meta), skipping known ones."""
    if overlap_k < 2 and overlap_fraction > 0:
        raise ValueError("overlap_k must be at least 2")
    for row in rows:
        row["content_hash"] = content_hash(row["kind"], row["prompt_id"], row["prompt"], row["responses"])
    with store.tx() as s:
        hashes = [r["content_hash"] for r in rows]
        known: set[str] = set()
        for i in range(0, len(hashes), 500):
            known |= set(s.scalars(select(Task.content_hash).where(Task.content_hash.in_(hashes[i:i + 500]))))
        fresh, seen = [], set()
        for r in rows:
            if r["content_hash"] not in known and r["content_hash"] not in seen:
                seen.add(r["content_hash"])
                fresh.append(r)
        overlap = _overlap_set([r["content_hash"] for r in fresh], overlap_fraction)
        for r in fresh:
            target = overlap_k if r["content_hash"] in overlap else 1
            s.add(Task(**r, target_labels=target, slots_left=target, batch=batch))
    result.added, result.existing = len(fresh), len(rows) - len(fresh)
    result.overlapping = len(overlap)
    return result


def import_prompts(store: Store, path: str | Path, *, overlap_fraction: float = 0.0, overlap_k: int = 2,
                   curate_cfg: Any = None, splits: tuple[str, ...] = data.SPLITS,
                   batch: str = "") -> ImportResult:
    """Demonstration tasks from a prompts JSONL file, after ``curate_prompts``.

    Curation scrubs PII, removes near-duplicates and caps prompts per user; the
    prompts of the chosen ``splits`` become tasks (their split goes to ``meta``).
    """
    from instructgpt.curate import CurateConfig, curate_prompts

    prompts = data.load_prompts(path)
    curated = curate_prompts(prompts, curate_cfg or CurateConfig())
    rows = []
    for split in splits:
        for p in curated.split(split):
            check_text(p.text, f"{p.source}: text")
            rows.append({"kind": "demonstration", "prompt_id": str(p.id), "prompt": p.text,
                         "responses": None,
                         "meta": {"split": split, "user_id": p.user_id, "use_case": p.use_case}})
    result = ImportResult("prompts", read=len(prompts), curation=curated.summary())
    return _add_tasks(store, rows, result, overlap_fraction, overlap_k, batch or Path(path).name)


def read_rank_tasks(path: str | Path, k_min: int = K_MIN, k_max: int = K_MAX) -> list[dict[str, Any]]:
    """Ranking-task rows ``{"prompt", "prompt_id"?, "responses": [K strings]}`` from JSONL.

    Errors are ``DataError("file:line: field: what")``. A missing ``prompt_id``
    is derived from the prompt text, so it is stable across imports.
    """
    rows = []
    for source, obj in data.read_jsonl(path):
        prompt = obj.get("prompt")
        if isinstance(prompt, list):
            prompt = data.render_messages(prompt, source=source)
        if not isinstance(prompt, str) or not prompt.strip():
            raise data.DataError(f"{source}: prompt: expected non-empty text")
        responses = obj.get("responses")
        # "" is an empty response (the model stopped at once; ``instructgpt sample`` writes it so)
        if not isinstance(responses, list) or not all(isinstance(r, str) and (r.strip() or not r) for r in responses):
            raise data.DataError(f"{source}: responses: expected an array of strings, each non-empty or \"\"")
        if not k_min <= len(responses) <= k_max:
            raise data.DataError(f"{source}: responses: K={len(responses)}; ranking tasks need {k_min} to {k_max}")
        pid = obj.get("prompt_id")
        if pid is None:
            pid = "sha256:" + hashlib.sha256(prompt.encode()).hexdigest()[:16]
        if not isinstance(pid, (str, int)) or isinstance(pid, bool) or not str(pid).strip():
            raise data.DataError(f"{source}: prompt_id: expected a non-empty string or integer")
        try:
            for i, text in enumerate([prompt, *responses]):
                check_text(text, "prompt" if i == 0 else f"responses[{i - 1}]", required=i == 0)
        except Invalid as e:
            raise data.DataError(f"{source}: {e}") from None
        meta = {k: v for k, v in obj.items() if k not in ("prompt", "prompt_id", "responses")}
        rows.append({"kind": "rank", "prompt_id": str(pid), "prompt": prompt,
                     "responses": list(responses), "meta": meta})
    return rows


def import_rank_tasks(store: Store, path: str | Path, *, overlap_fraction: float = 0.0,
                      overlap_k: int = 2, batch: str = "") -> ImportResult:
    """Ranking tasks from the JSONL that ``instructgpt sample`` writes."""
    rows = read_rank_tasks(path)
    result = ImportResult("rank", read=len(rows))
    return _add_tasks(store, rows, result, overlap_fraction, overlap_k, batch or Path(path).name)


def import_file(store: Store, kind: str, path: str | Path, **kwargs: Any) -> ImportResult:
    """``kind`` is ``prompts`` (demonstration tasks) or ``rank``."""
    if kind == "prompts":
        return import_prompts(store, path, **kwargs)
    if kind == "rank":
        return import_rank_tasks(store, path, **kwargs)
    raise ValueError(f"unknown import kind {kind!r} (expected prompts or rank)")


def import_bytes(store: Store, kind: str, content: bytes, filename: str, **kwargs: Any) -> ImportResult:
    """``import_file`` for an uploaded file."""
    safe = "".join(c for c in Path(filename or "upload.jsonl").name if c.isalnum() or c in "._-")[:100]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / (safe or "upload.jsonl")
        path.write_bytes(content)
        result = import_file(store, kind, path, batch=safe, **kwargs)
    return result


# ---------------------------------------------------------------- handing out

def claim_tasks(store: Store, user_id: int, n: int = 10) -> list[int]:
    """Assign up to ``n`` more tasks to a user; returns the new assignment ids."""
    n = max(1, min(int(n), 100))
    with store.tx() as s:
        # Lock the user row: one claim per user at a time (a no-op on SQLite,
        # where BEGIN IMMEDIATE already serialises writers).
        user = s.scalar(select(User).where(User.id == user_id).with_for_update())
        if user is None or not user.active:
            raise Forbidden("inactive user")
        mine = select(Assignment.task_id).where(Assignment.user_id == user_id)
        query = select(Task.id).where(Task.id.not_in(mine))
        if user.held_out:
            labelled = (select(func.count()).select_from(Assignment)
                        .where(Assignment.task_id == Task.id).scalar_subquery())
            query = query.order_by(labelled.desc(), Task.id)
        else:
            partly_taken = Task.slots_left < Task.target_labels
            query = query.where(Task.slots_left > 0).order_by(partly_taken.desc(), Task.id)
        new = []
        for task_id in s.scalars(query.limit(n * 4)).all():
            if not user.held_out and not _take_slot(s, task_id):
                continue  # another labeler took the last slot meanwhile
            a = Assignment(task_id=task_id, user_id=user_id)
            s.add(a)
            s.flush()
            new.append(a.id)
            if len(new) >= n:
                break
        return new


def _take_slot(s, task_id: int) -> bool:
    res = s.execute(update(Task).where(Task.id == task_id, Task.slots_left > 0)
                    .values(slots_left=Task.slots_left - 1))
    return res.rowcount == 1


def display_order(user_id: int, task_id: int, k: int) -> list[int]:
    """``order[p]`` = original index of the response shown at position ``p``.

    Random per (labeler, task) but deterministic, so a reload shows the same order.
    """
    seed = int.from_bytes(hashlib.sha256(f"order:{user_id}:{task_id}".encode()).digest()[:8], "big")
    order = list(range(k))
    random.Random(seed).shuffle(order)
    return order


@dataclass
class TaskView:
    """What one labeler sees of one assignment (responses in their display order)."""
    assignment_id: int
    task_id: int
    kind: str
    status: str
    prompt: str
    prompt_id: str
    responses: list[str]            # display order
    label: dict[str, Any] | None    # the saved label, in display positions, if any


@dataclass
class AssignmentRow:
    id: int
    task_id: int
    kind: str
    status: str
    prompt_preview: str
    assigned_at: Any
    done_at: Any


def owned_assignment(s, assignment_id: int, user_id: int) -> tuple[Assignment, Task]:
    """The assignment and its task; ``NotFound``/``Forbidden`` unless it is the user's."""
    a = s.get(Assignment, assignment_id)
    if a is None:
        raise NotFound("no such assignment")
    if a.user_id != user_id:
        raise Forbidden("this assignment belongs to another labeler")
    return a, s.get(Task, a.task_id)


def open_assignment(store: Store, user_id: int, assignment_id: int) -> TaskView:
    """The task view of an assignment; the first view starts its timer."""
    with store.tx(read_only=True) as s:
        a, task = owned_assignment(s, assignment_id, user_id)
        order = display_order(user_id, task.id, len(task.responses or []))
        label = s.scalar(select(Label).where(Label.assignment_id == a.id))
        view = TaskView(
            assignment_id=a.id, task_id=task.id, kind=task.kind, status=a.status,
            prompt=task.prompt, prompt_id=task.prompt_id,
            responses=[task.responses[i] for i in order] if task.responses else [],
            label=label_in_display(label, order) if label else None,
        )
        first_view = a.opened_at is None and a.status == "pending"
    if first_view:
        with store.tx() as s:
            s.execute(update(Assignment).where(Assignment.id == assignment_id, Assignment.opened_at.is_(None))
                      .values(opened_at=utcnow()))
    return view


def label_in_display(label: Label, order: list[int]) -> dict[str, Any]:
    """A saved label with response indices turned back into display positions."""
    pos = {orig: p for p, orig in enumerate(order)}
    out: dict[str, Any] = {"kind": label.kind, "created_at": label.created_at,
                           "response": label.response, "comment": label.comment,
                           "skip_reason": label.skip_reason}
    if label.ranking:
        out["ranking"] = [sorted(pos[i] for i in g) for g in label.ranking]
        out["likert"] = [label.likert[order[p]] for p in range(len(order))] if label.likert else None
        out["flags"] = [label.flags[order[p]] for p in range(len(order))] if label.flags else None
    return out


def list_assignments(store: Store, user_id: int) -> list[AssignmentRow]:
    """A user's own assignments, pending first."""
    with store.tx(read_only=True) as s:
        rows = s.execute(
            select(Assignment, Task.kind, Task.prompt).join(Task, Task.id == Assignment.task_id)
            .where(Assignment.user_id == user_id)
            .order_by((Assignment.status == "pending").desc(), Assignment.id)
        ).all()
        return [AssignmentRow(a.id, a.task_id, kind, a.status, prompt[:160], a.assigned_at, a.done_at)
                for a, kind, prompt in rows]


def next_pending(store: Store, user_id: int) -> int | None:
    with store.tx(read_only=True) as s:
        return s.scalar(select(Assignment.id).where(Assignment.user_id == user_id,
                                                    Assignment.status == "pending")
                        .order_by(Assignment.id).limit(1))
