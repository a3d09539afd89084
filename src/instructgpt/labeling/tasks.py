"""Tasks: importing them, handing them out to labelers, and showing them.

A task is either a prompt to write a demonstration for, or a prompt with K
responses to rank. Each task wants ``target_labels`` labels: 1, or
``overlap_k`` for the ``overlap_fraction`` share of tasks picked for overlap
(so that agreement between labelers can be measured). ``slots_left`` counts
the claims still open; claiming decrements it with a conditional UPDATE, which
is atomic on SQLite and PostgreSQL alike, so a task is never over-assigned.

Concurrent claimers: on PostgreSQL the candidate tasks are read with
``SELECT ... FOR UPDATE SKIP LOCKED``, so each claimer locks its own rows and
skips the ones another claimer is taking (without it, every claimer read the
same candidates and the losers of each race got nothing). SQLite has one
writer at a time (``BEGIN IMMEDIATE``), so claims never overlap there.

A claim is a lease (``ClaimPolicy.lease``): a pending assignment older than
that is released and its slot goes back to the pool. Deactivating a labeler
and the admin's "release" do the same at once. A labeler holds at most
``ClaimPolicy.max_pending`` pending tasks.

Held-out labelers label on top of that: their claims take no slot, and they
are offered tasks that already have labels first, so their agreement with the
training labelers can be measured: the tasks with the most training claims
(``target_labels - slots_left``, pending or done) first, then by id, the order of
the index ``ix_tasks_held_out``. Whether a claim is held out is fixed when it
is made (``Assignment.took_slot`` is False exactly for a held-out claim) and the
export files a label by it; changing a labeler's held-out mark releases their
pending claims, so every claim keeps the mark it was made under.

A task keeps the split of its prompt (``meta["split"]``: train, valid or test;
see ``task_split``) and, for a prompt given as chat messages, its turns
(``meta["prompt_turns"]``; ``prompt`` holds their plain transcript for display).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update

from instructgpt import data

from .store import Store
from .tables import (
    ASSIGNMENT_STATES,
    CLAIM_ORDER,
    HELD_OUT_ORDER,
    OPEN_TASK,
    Assignment,
    Label,
    Task,
    User,
    utcnow,
)

K_MIN, K_MAX = 4, 9            # responses per ranking task (the paper's K = 4..9)
MAX_TEXT = 100_000             # characters in one prompt or response
MAX_PROMPT_ID = 255            # characters in a prompt id (the column's width)
MAX_OVERLAP_K = 50             # labelers per overlapping task, at most
MAX_ID = 2**63 - 1             # ids above this are not ids (and overflow the database driver)
TURNS_KEY = "prompt_turns"     # task meta: the prompt's chat messages, when it was given so
MY_TASKS_PAGE = 50             # assignments per page of a labeler's "My tasks" (and of GET /api/assignments)
API_PAGE_MAX = 500             # assignments per page of GET /api/assignments, at most (its per_page)


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
    scrubbed: dict[str, int] = field(default_factory=dict)   # rank imports: PII found in prompts, per kind

    def describe(self) -> str:
        text = (f"{self.kind}: read {self.read}, added {self.added} tasks "
                f"({self.overlapping} with overlap), {self.existing} already imported")
        if self.scrubbed:
            text += "; PII scrubbed from prompts: " + ", ".join(f"{n} {k}" for k, n in sorted(self.scrubbed.items()))
        removed = {why: n for why, n in (self.curation.get("removed") or {}).items()
                   if n and why != "already_curated"}  # counted as already imported
        if removed:
            text += "; curation removed " + ", ".join(f"{n} ({why})" for why, n in removed.items())
        return text


def content_hash(kind: str, prompt_id: str, prompt: str, responses: list[str] | None) -> str:
    """Identity of a task's content: importing the same task twice adds it once."""
    blob = json.dumps([kind, prompt_id, prompt, responses], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def task_split(task: Task) -> str:
    """The split of a task's prompt: ``meta["split"]``, or train when the import gave none."""
    return (task.meta or {}).get("split") or "train"


def task_turns(task: Task) -> list[dict[str, Any]] | None:
    """The chat messages of a task's prompt, or None for a plain-text prompt."""
    return (task.meta or {}).get(TURNS_KEY)


def check_overlap(fraction: float, k: int) -> None:
    """``ValueError`` unless 0 <= fraction <= 1 and 2 <= k <= MAX_OVERLAP_K (k an integer)."""
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"overlap_fraction must be a number in [0, 1], got {fraction}")
    if not isinstance(k, int) or isinstance(k, bool) or not 2 <= k <= MAX_OVERLAP_K:
        raise ValueError(f"overlap_k must be an integer from 2 to {MAX_OVERLAP_K}, got {k}")


def _overlap_set(hashes: list[str], fraction: float) -> set[str]:
    """round(fraction * n) of the hashes, chosen deterministically (by a second hash)."""
    if not (isinstance(fraction, (int, float)) and math.isfinite(fraction) and 0.0 <= fraction <= 1.0):
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


def _row_split(row: dict[str, Any]) -> str:
    """The split a task row files its labels under (``task_split`` of the task it becomes)."""
    return (row["meta"] or {}).get("split") or "train"


def _check_prompts_agree(s, rows: list[dict[str, Any]], sources: list[str]) -> None:
    """``DataError`` naming the record unless each row's ``prompt_id`` names one prompt in one split:
    the text and split that earlier tasks of that id (any kind, any import) have, and that earlier rows
    of this import give it. A later round's samples of a test prompt filed as train would reach the
    training files; samples of a raw prompt the app imported scrubbed of PII would bring the PII back."""
    ids = sorted({r["prompt_id"] for r in rows})
    known: dict[str, tuple[str, str, str]] = {}   # prompt_id -> (text, split, where it was given)
    for i in range(0, len(ids), 500):
        for pid, text, meta in s.execute(select(Task.prompt_id, Task.prompt, Task.meta)
                                         .where(Task.prompt_id.in_(ids[i:i + 500])).order_by(Task.id)):
            known.setdefault(pid, (text, (meta or {}).get("split") or "train", "an earlier import"))
    for row, source in zip(rows, sources):
        split, pid = _row_split(row), row["prompt_id"]
        text, first, where = known.setdefault(pid, (row["prompt"], split, source))
        if row["prompt"] != text:
            raise data.DataError(f"{source}: prompt: prompt {pid!r} has another text in {where}; one id names "
                                 f"one prompt (the app keeps prompts as curated, PII scrubbed: sample from "
                                 f"the curated prompts, or give this prompt its own id)")
        if split != first:
            named = bool((row["meta"] or {}).get("split"))
            given = split if named else f"{split} (none given)"
            raise data.DataError(f"{source}: split: {given}, but prompt {pid!r} is a {first} prompt in {where}; "
                                 f"the tasks of one prompt keep its split ({_split_advice(first, split, named)})")


def _split_advice(first: str, given: str, named: bool) -> str:
    """What to do when a row gives prompt ``first``'s tasks another split. Held-out labels (an evaluation's
    test tasks) of a prompt the app trains on must not be refiled as train: they would reach the training
    files, and the evaluation would be judged on training prompts."""
    if first == "train" and named and given != "train":
        return (f"its {given} labels would be filed with its training ones: evaluate on prompts the app does "
                f"not hold for training, or import these tasks into a database of their own with --db")
    return f"give \"split\": \"{first}\""


def _add_tasks(store: Store, rows: list[dict[str, Any]], result: ImportResult,
               overlap_fraction: float, overlap_k: int, batch: str) -> ImportResult:
    """Insert task rows (dicts with kind, prompt_id, prompt, responses, meta, source), skipping known ones.

    ``source`` (``file:line``) names the row in errors and is not stored. Every row's prompt must keep
    the text and split its earlier tasks have (``_check_prompts_agree``).
    """
    check_overlap(overlap_fraction, overlap_k)
    sources = [row.pop("source") for row in rows]
    for row in rows:
        row["content_hash"] = content_hash(row["kind"], row["prompt_id"], row["prompt"], row["responses"])
    with store.tx() as s:
        _check_prompts_agree(s, rows, sources)
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


def _check_record_text(source: str, optional: set[str] = frozenset(), **fields: str) -> None:
    """``DataError("file:line: field: what")`` unless every field is storable text
    (the ``optional`` ones may be empty)."""
    for name, value in fields.items():
        limit = MAX_PROMPT_ID if name in ("id", "prompt_id", "user_id") else MAX_TEXT
        try:
            check_text(value, name, limit, required=name not in optional)
        except Invalid as e:
            raise data.DataError(f"{source}: {e}") from None


def import_prompts(store: Store, path: str | Path, *, overlap_fraction: float = 0.0, overlap_k: int = 2,
                   curate_cfg: Any = None, splits: tuple[str, ...] = data.SPLITS,
                   batch: str = "") -> ImportResult:
    """Demonstration tasks from a prompts JSONL file, after ``curate_prompts``.

    Curation scrubs PII, removes near-duplicates and caps prompts per user; the
    prompts of the chosen ``splits`` become tasks (their split goes to ``meta``).
    The prompts earlier imports added are curation's ``earlier`` prompts, so its rules
    hold across imports: a prompt imported before is counted as existing, a new one
    repeating an earlier one's prefix is a duplicate, a user's cap counts their earlier
    prompts, and a user keeps their earlier split (a record that names another split
    for such a user is an error).
    """
    from instructgpt.curate import CurateConfig, curate_prompts

    prompts = data.load_prompts(path)
    for p in prompts:
        _check_record_text(p.source, id=str(p.id), text=p.text, user_id=str(p.user_id))
    curated = curate_prompts(prompts, curate_cfg or CurateConfig(), _earlier_prompts(store))
    rows = []
    for split in splits:
        for p in curated.split(split):
            meta = {"split": split, "user_id": p.user_id, "use_case": p.use_case}
            if p.turns:
                meta[TURNS_KEY] = p.turns
            rows.append({"kind": "demonstration", "prompt_id": str(p.id), "prompt": p.text,
                         "responses": None, "meta": meta, "source": p.source or f"prompt {p.id}"})
    result = ImportResult("prompts", read=len(prompts), curation=curated.summary())
    result = _add_tasks(store, rows, result, overlap_fraction, overlap_k, batch or Path(path).name)
    result.existing += result.curation["removed"]["already_curated"]
    return result


def _earlier_prompts(store: Store) -> list[data.Prompt]:
    """The prompts of earlier imports' demonstration tasks (as curated: scrubbed, with their split and, for a
    chat prompt, its turns: curation compares a chat prompt by its turns, not by its transcript)."""
    with store.tx(read_only=True) as s:
        rows = s.execute(select(Task.prompt_id, Task.prompt, Task.meta).where(Task.kind == "demonstration")
                         .order_by(Task.id)).all()
    return [data.Prompt(id=pid, text=text, user_id=str(meta["user_id"]), split=meta["split"],
                        source=f"an earlier import (prompt {pid})", turns=meta.get(TURNS_KEY))
            for pid, text, meta in rows if meta and meta.get("user_id") is not None and meta.get("split")]


def read_rank_tasks(path: str | Path, k_min: int = K_MIN, k_max: int = K_MAX,
                    scrubbed: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Ranking-task rows ``{"prompt", "prompt_id"?, "responses": [K strings], "split"?}`` from JSONL.

    Errors are ``DataError("file:line: field: what")``. A missing ``prompt_id``
    is derived from the prompt text, so it is stable across imports. A prompt
    given as chat messages is checked as ``data.load_rankings`` checks it (a
    user turn is required, a system turn only first) and its turns are kept in
    ``meta`` (``TURNS_KEY``). ``split``, if given, must be one of ``data.SPLITS``. Each row
    also holds its ``source`` (``file:line``), which names it in import errors.

    With ``scrubbed`` (a dict), each prompt is scrubbed of PII as the prompts import scrubs it
    (``curate.scrub_prompt``), and what was found is counted there per kind: samples of a raw
    prompts file then show labelers, and export, the prompt as curated. Responses are kept as written.
    """
    from instructgpt.curate import scrub_prompt
    rows = []
    for source, obj in data.read_jsonl(path):
        prompt, turns = _rank_prompt(obj, source)
        if scrubbed is not None:
            prompt, turns, found = scrub_prompt(prompt, turns, source)
            for kind, n in found.items():
                scrubbed[kind] = scrubbed.get(kind, 0) + n
        responses = obj.get("responses")
        # "" is an empty response (the model stopped at once; ``instructgpt sample`` writes it so)
        if not isinstance(responses, list) or not all(isinstance(r, str) and (r.strip() or not r) for r in responses):
            raise data.DataError(f"{source}: responses: expected an array of strings, each non-empty or \"\"")
        if not k_min <= len(responses) <= k_max:
            raise data.DataError(f"{source}: responses: K={len(responses)}; ranking tasks need {k_min} to {k_max} "
                                 f"(instructgpt sample k={k_min}..{k_max})")
        pid = obj.get("prompt_id")
        if pid is None:
            pid = "sha256:" + hashlib.sha256(prompt.encode()).hexdigest()[:16]
        if not isinstance(pid, (str, int)) or isinstance(pid, bool) or not str(pid).strip():
            raise data.DataError(f"{source}: prompt_id: expected a non-empty string or integer")
        # a response may be "" (the model wrote nothing: `instructgpt sample` keeps it so)
        _check_record_text(source, optional={f"responses[{i}]" for i in range(len(responses))},
                           prompt_id=str(pid), prompt=prompt,
                           **{f"responses[{i}]": r for i, r in enumerate(responses)})
        meta = {k: v for k, v in obj.items() if k not in ("prompt", "prompt_id", "responses")}
        if turns:
            meta[TURNS_KEY] = turns
        rows.append({"kind": "rank", "prompt_id": str(pid), "prompt": prompt,
                     "responses": list(responses), "meta": meta, "source": source})
    return rows


def _rank_prompt(obj: dict[str, Any], source: str) -> tuple[str, list[dict[str, Any]] | None]:
    """(prompt text, turns or None) of a ranking-task row, by the rules of ``data.parse_ranking``."""
    if TURNS_KEY in obj:
        raise data.DataError(f"{source}: {TURNS_KEY}: reserved key (give chat messages as `prompt`)")
    split = obj.get("split")
    if split is not None and split not in data.SPLITS:
        raise data.DataError(f"{source}: split: unknown split {split!r} (expected one of {', '.join(data.SPLITS)})")
    if obj.get("prompt") is None:
        raise data.DataError(f"{source}: prompt: expected non-empty text or an array of chat messages")
    return data.prompt_field(obj, source)  # the same checks and transcript as data.load_rankings


def import_rank_tasks(store: Store, path: str | Path, *, overlap_fraction: float = 0.0,
                      overlap_k: int = 2, curate_cfg: Any = None, batch: str = "") -> ImportResult:
    """Ranking tasks from the JSONL that ``instructgpt sample`` writes; their prompts scrubbed of PII unless
    ``curate_cfg`` (a ``CurateConfig``, as for the prompts import) turns ``scrub_pii`` off."""
    from instructgpt.curate import CurateConfig
    scrub = (curate_cfg or CurateConfig()).scrub_pii
    result = ImportResult("rank")
    rows = read_rank_tasks(path, scrubbed=result.scrubbed if scrub else None)
    result.read = len(rows)
    return _add_tasks(store, rows, result, overlap_fraction, overlap_k, batch or Path(path).name)


def import_file(store: Store, kind: str, path: str | Path, **kwargs: Any) -> ImportResult:
    """``kind`` is ``prompts`` (demonstration tasks) or ``rank``."""
    if kind == "prompts":
        return import_prompts(store, path, **kwargs)
    if kind == "rank":
        return import_rank_tasks(store, path, **kwargs)
    raise ValueError(f"unknown import kind {kind!r} (expected prompts or rank)")


def import_bytes(store: Store, kind: str, content: bytes, filename: str, **kwargs: Any) -> ImportResult:
    """``import_file`` for an uploaded file; errors name it by ``filename``, never by its temporary path."""
    safe = "".join(c for c in Path(filename or "").name if c.isalnum() or c in "._-")[:100]
    if not safe.strip("."):  # "", ".", "..": no name to show
        safe = "upload.jsonl"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upload.jsonl"  # a fixed name: the uploaded one only names it in messages
        path.write_bytes(content)
        try:
            return import_file(store, kind, path, batch=safe, **kwargs)
        except data.DataError as e:
            raise data.DataError(str(e).replace(str(path), safe).replace(tmp, "")) from None


# ---------------------------------------------------------------- handing out

@dataclass(frozen=True)
class ClaimPolicy:
    """How tasks are handed out (``LabelConfig`` sets it for the server)."""
    lease: timedelta = timedelta(hours=12)   # a pending claim is released this long after it was made
    max_pending: int = 30                    # pending tasks one labeler may hold at once


def claim_tasks(store: Store, user_id: int, n: int = 10, policy: ClaimPolicy = ClaimPolicy(),
                now: datetime | None = None) -> list[int]:
    """Assign up to ``n`` more tasks to a user; returns the new assignment ids.

    Expired claims (of anyone) are released first. Fewer than ``n`` come back
    when the pool runs dry or the user reaches ``policy.max_pending``.
    """
    n = max(1, min(int(n), 100))
    now = now or utcnow()
    release_expired(store, policy.lease, now)
    with store.tx() as s:
        # Lock the user row: one claim per user at a time (a no-op on SQLite,
        # where BEGIN IMMEDIATE already serialises writers).
        user = s.scalar(select(User).where(User.id == user_id).with_for_update())
        if user is None or not user.active:
            raise Forbidden("inactive user")
        n = min(n, policy.max_pending - pending_count(s, user_id))
        if n <= 0:
            return []
        query = claimable_by(user_id)
        if user.held_out:  # no slot taken: tasks others labelled come first, nothing to lock
            task_ids = s.scalars(query.order_by(*HELD_OUT_ORDER).limit(n)).all()
        else:
            task_ids = s.scalars(claim_candidates(query, n)).all()
        new = []
        for task_id in task_ids:
            if not user.held_out and not _take_slot(s, task_id):
                continue  # cannot happen with the row locked; kept as a guard
            a = Assignment(task_id=task_id, user_id=user_id, assigned_at=now, took_slot=not user.held_out)
            s.add(a)
            s.flush()
            new.append(a.id)
        return new


def claimable_by(user_id: int):
    """The ids of the tasks ``user_id`` has never been given (a probe of the (task_id, user_id) key per task)."""
    theirs = select(Assignment.id).where(Assignment.task_id == Task.id, Assignment.user_id == user_id)
    return select(Task.id).where(~theirs.exists())


def claim_candidates(query, n: int):
    """``query`` (of task ids) narrowed to open tasks in the claim order, the first ``n``, locked (SKIP LOCKED).

    Open tasks that others have started (overlap) come first, then by id: the order of the partial index
    ``ix_tasks_claim``, so the database reads the first entries of the index instead of sorting every open task.
    """
    return query.where(OPEN_TASK).order_by(*CLAIM_ORDER).limit(n).with_for_update(skip_locked=True)


def pending_count(s, user_id: int) -> int:
    return s.scalar(select(func.count()).select_from(Assignment)
                    .where(Assignment.user_id == user_id, Assignment.status == "pending"))


def _take_slot(s, task_id: int) -> bool:
    res = s.execute(update(Task).where(Task.id == task_id, Task.slots_left > 0)
                    .values(slots_left=Task.slots_left - 1))
    return res.rowcount == 1


def _release(s, assignment_ids: list[int], reason: str, now: datetime) -> int:
    """Release those of ``assignment_ids`` that are still pending; their slots go back to the pool."""
    freed: Counter[int] = Counter()
    released = 0
    for i in range(0, len(assignment_ids), 500):
        rows = s.execute(
            update(Assignment).where(Assignment.id.in_(assignment_ids[i:i + 500]), Assignment.status == "pending")
            .values(status="released", released_at=now, release_reason=reason)
            .returning(Assignment.task_id, Assignment.took_slot)).all()
        released += len(rows)
        freed.update(task_id for task_id, took_slot in rows if took_slot)
    for task_id in sorted(freed):  # one order for everyone: no deadlock between releasers
        s.execute(update(Task).where(Task.id == task_id).values(slots_left=Task.slots_left + freed[task_id]))
    return released


def release_assignment(s, assignment_id: int, reason: str, now: datetime | None = None) -> bool:
    """Release one assignment if it is still pending (in the caller's transaction); whether it was."""
    return _release(s, [assignment_id], reason, now or utcnow()) == 1


def release_expired(store: Store, lease: timedelta, now: datetime | None = None) -> int:
    """Release every pending claim made more than ``lease`` ago; returns how many."""
    now = now or utcnow()
    expired = (Assignment.status == "pending", Assignment.assigned_at <= now - lease)
    with store.tx(read_only=True) as s:  # the common case, nothing expired, takes no write lock
        if s.scalar(select(Assignment.id).where(*expired).limit(1)) is None:
            return 0
    with store.tx() as s:
        # SKIP LOCKED: concurrent sweeps release disjoint sets and never wait on each other.
        ids = s.scalars(select(Assignment.id).where(*expired).with_for_update(skip_locked=True)).all()
        return _release(s, list(ids), "expired", now)


def release_user_tasks(s, user_id: int, reason: str, now: datetime | None = None) -> int:
    """Release every pending task of ``user_id`` (in the caller's transaction); returns how many."""
    ids = s.scalars(select(Assignment.id).where(Assignment.user_id == user_id,
                                                Assignment.status == "pending")).all()
    return _release(s, list(ids), reason, now or utcnow())


def release_pending(store: Store, user_id: int, reason: str = "admin") -> int:
    """An admin's "release": ``user_id``'s pending tasks go back to the pool."""
    with store.tx() as s:
        if s.get(User, user_id) is None:
            raise NotFound("no such user")
        return release_user_tasks(s, user_id, reason)


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
    assigned_at: datetime | None = None
    release_reason: str | None = None  # why a released claim was released


@dataclass
class AssignmentRow:
    id: int
    task_id: int
    kind: str
    status: str
    prompt_preview: str
    assigned_at: Any
    done_at: Any
    release_reason: str | None = None


def owned_assignment(s, assignment_id: int, user_id: int, lock: bool = False) -> tuple[Assignment, Task]:
    """The assignment and its task; ``NotFound``/``Forbidden`` unless it is the user's.

    ``lock=True`` reads the assignment ``FOR UPDATE`` (PostgreSQL; a no-op on
    SQLite, whose writers are serialised): a concurrent release waits for the
    caller's transaction, or the caller reads the row as the release left it.
    """
    if not 0 < assignment_id <= MAX_ID:
        raise NotFound("no such assignment")
    a = s.get(Assignment, assignment_id, with_for_update=lock or None)
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
            assigned_at=a.assigned_at, release_reason=a.release_reason,
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


@dataclass
class AssignmentPage:
    """One page of a labeler's assignments (pending first, then newest first) and the counts of all of them."""
    rows: list[AssignmentRow]
    page: int | None  # 1-based, at most ``pages`` (unless asked for a page past the last); None after a cursor
    pages: int      # at least 1
    pending: int    # pending assignments, on every page
    total: int      # assignments, on every page
    more: bool = False  # whether rows follow the last of ``rows`` (in the same order)


@dataclass(frozen=True)
class Cursor:
    """A position in a labeler's assignment order (pending first, then id descending): that of the last row a
    page gave. As text (``GET /api/assignments?after=``): ``p`` (pending) or ``n`` (not pending), then the id."""
    pending: bool
    id: int

    def __str__(self) -> str:
        return f"{'p' if self.pending else 'n'}{self.id}"

    @classmethod
    def of(cls, row: AssignmentRow) -> Cursor:
        return cls(row.status == "pending", row.id)


def _whole_number(text: str) -> int | None:
    """``text`` as a whole number if it is ASCII digits with at most MAX_ID's count of significant ones, else None:
    int() refuses '²' (a digit to isdigit) and more than 4300 digits (ValueError), and no bigger number is valid."""
    digits = text.lstrip("0") or "0"
    if not (text.isascii() and text.isdigit()) or len(digits) > len(str(MAX_ID)):
        return None
    return int(digits)


def check_page(raw: str | None, name: str = "page", default: int = 1, most: int | None = None) -> int:
    """A query parameter ``name`` (``page``, ``per_page``) as a whole number from 1 to ``most`` (``default`` when
    absent); ``Invalid`` names it otherwise."""
    text = (raw or str(default)).strip()
    number = _whole_number(text) or 0
    if not 1 <= number <= (most or MAX_ID):
        bounds = f"from 1 to {most}" if most else "from 1"
        raise Invalid(f"{name}: expected a whole number {bounds}, got {text[:20]!r}")
    return number


def check_cursor(raw: str, name: str = "after") -> Cursor:
    """A query parameter ``name`` as a ``Cursor`` (the text a ``next`` link gave); ``Invalid`` names it otherwise."""
    text = raw.strip()
    row_id = _whole_number(text[1:]) or 0
    if text[:1] not in ("p", "n") or not 1 <= row_id <= MAX_ID:
        raise Invalid(f"{name}: expected the cursor of a next link (p or n, then an assignment id), "
                      f"got {text[:20]!r}")
    return Cursor(text[0] == "p", row_id)


def _my_counts(s, user_id: int) -> dict[str, int]:
    """A user's assignments by status."""
    return dict(s.execute(select(Assignment.status, func.count()).where(Assignment.user_id == user_id)
                          .group_by(Assignment.status)).all())


def _my_rows(query) -> list[AssignmentRow]:
    """``query`` (a select of ``Assignment``, its task's kind and prompt preview) as ``AssignmentRow``s."""
    return [AssignmentRow(a.id, a.task_id, kind, a.status, preview, a.assigned_at, a.done_at, a.release_reason)
            for a, kind, preview in query.all()]


def _mine(user_id: int):
    """A user's assignments with their task's kind and the first 160 characters of its prompt."""
    return (select(Assignment, Task.kind, func.substr(Task.prompt, 1, 160))
            .join(Task, Task.id == Assignment.task_id).where(Assignment.user_id == user_id))


def assignment_page(store: Store, user_id: int, page: int = 1, per_page: int = MY_TASKS_PAGE,
                    past_last_shows_last: bool = True) -> AssignmentPage:
    """Page ``page`` of a user's own assignments, ``per_page`` to a page. A page past the last shows the last
    (My tasks), or, with ``past_last_shows_last=False``, no rows (the JSON API: a client paging on stops)."""
    with store.tx(read_only=True) as s:
        counts = _my_counts(s, user_id)
        total = sum(counts.values())
        pages = max(1, math.ceil(total / per_page))
        page = min(page, pages) if past_last_shows_last else page
        rows = _my_rows(s.execute(
            _mine(user_id).order_by((Assignment.status == "pending").desc(), Assignment.id.desc())
            .offset((page - 1) * per_page).limit(per_page)))
        return AssignmentPage(rows, page, pages, counts.get("pending", 0), total, more=bool(rows) and page < pages)


def assignments_after(store: Store, user_id: int, after: Cursor, per_page: int = MY_TASKS_PAGE) -> AssignmentPage:
    """The ``per_page`` assignments of a user that follow ``after`` (pending first, then newest first). Keyed on
    the position, not on a count of rows before it, so labeling or claiming between pages moves no row past a
    client paging on: each group is read from the index on (user_id, status), below the cursor's id."""
    with store.tx(read_only=True) as s:
        counts = _my_counts(s, user_id)
        rows: list[AssignmentRow] = []
        if after.pending:
            rows = _my_rows(s.execute(_mine(user_id).where(Assignment.status == "pending", Assignment.id < after.id)
                                      .order_by(Assignment.id.desc()).limit(per_page + 1)))
        if len(rows) <= per_page:
            done = _mine(user_id).where(Assignment.status.in_([st for st in ASSIGNMENT_STATES if st != "pending"]))
            if not after.pending:
                done = done.where(Assignment.id < after.id)
            rows += _my_rows(s.execute(done.order_by(Assignment.id.desc()).limit(per_page + 1 - len(rows))))
        total = sum(counts.values())
        return AssignmentPage(rows[:per_page], None, max(1, math.ceil(total / per_page)), counts.get("pending", 0),
                              total, more=len(rows) > per_page)


def next_pending(store: Store, user_id: int) -> int | None:
    with store.tx(read_only=True) as s:
        return s.scalar(select(Assignment.id).where(Assignment.user_id == user_id,
                                                    Assignment.status == "pending")
                        .order_by(Assignment.id).limit(1))
