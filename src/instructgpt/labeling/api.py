"""JSON API for scripts and load tests: the same operations as the pages.

State-changing calls need the ``X-CSRF-Token`` header (from ``GET /api/me``).
Rankings, Likert scores and flags are by DISPLAY position, as the responses
are listed by ``GET /api/assignments/{id}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from .labels import Submission, new_request_id, submit_label
from .security import Viewer
from .tasks import (
    API_PAGE_MAX,
    MY_TASKS_PAGE,
    AssignmentPage,
    Cursor,
    Invalid,
    assignment_page,
    assignments_after,
    check_cursor,
    check_page,
    claim_tasks,
    open_assignment,
)
from .web import Id, current_viewer, json_csrf, store_of

router = APIRouter(prefix="/api")


def _list(value: Any, name: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise Invalid(f"{name}: expected an array")
    return value


def submission_from_json(body: Any) -> Submission:
    """A ``Submission`` from ``{"request_id", "kind", ...}``; types are checked here."""
    if not isinstance(body, dict):
        raise Invalid("expected a JSON object")
    kind = body.get("kind")
    if kind not in ("demonstration", "rank", "skip"):
        raise Invalid("kind: expected demonstration, rank or skip")
    text_fields = {}
    for name in ("request_id", "response", "comment", "skip_reason"):
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise Invalid(f"{name}: expected a string")
        text_fields[name] = value
    ranking = [_list(g, "ranking group") for g in _list(body.get("ranking"), "ranking")]
    flags = [[str(f) for f in _list(g, "flags entry")] for g in _list(body.get("flags"), "flags")]
    return Submission(kind, text_fields["request_id"] or "", response=text_fields["response"],
                      ranking=ranking, likert=_list(body.get("likert"), "likert"), flags=flags,
                      comment=text_fields["comment"], skip_reason=text_fields["skip_reason"])


@router.get("/me")
def me(viewer: Viewer = Depends(current_viewer)):
    return {"username": viewer.username, "role": viewer.role, "held_out": viewer.held_out,
            "csrf_token": viewer.csrf_token}


@router.get("/assignments")
def assignments(request: Request, viewer: Viewer = Depends(current_viewer)):
    """One page of your assignments (pending first, then newest first; ``?per_page=M``): the first, page ``N``
    (``?page=N``) or the one after a cursor (``?after=C``, from ``next``), the counts of all of them, and ``next``:
    the URL of the rows after this page's last, null when none follow (a page past the last has no rows)."""
    query = request.query_params
    per_page = check_page(query.get("per_page"), "per_page", MY_TASKS_PAGE, API_PAGE_MAX)
    if "after" in query and "page" in query:
        raise Invalid("page, after: expected one of them, got both")
    if "after" in query:
        mine = assignments_after(store_of(request), viewer.user_id, check_cursor(query["after"]), per_page)
    else:
        mine = assignment_page(store_of(request), viewer.user_id, check_page(query.get("page")), per_page,
                               past_last_shows_last=False)
    return {"assignments": [{"id": r.id, "task_id": r.task_id, "kind": r.kind, "status": r.status}
                            for r in mine.rows],
            "page": mine.page, "per_page": per_page, "pages": mine.pages, "total": mine.total,
            "pending": mine.pending, "next": _next_page(mine, per_page)}


def _next_page(mine: AssignmentPage, per_page: int) -> str | None:
    """The URL of the rows after ``mine``'s last in ``GET /api/assignments``, or None when none follow."""
    if not mine.more:
        return None
    return f"/api/assignments?after={Cursor.of(mine.rows[-1])}" + \
        (f"&per_page={per_page}" if per_page != MY_TASKS_PAGE else "")


@router.post("/claim")
def claim(request: Request, body=Depends(json_csrf), viewer: Viewer = Depends(current_viewer)):
    n = body.get("n", request.app.state.cfg.claim_batch) if isinstance(body, dict) else None
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 100:
        raise Invalid("n: expected an integer from 1 to 100")
    policy = request.app.state.claims
    return {"assignment_ids": claim_tasks(store_of(request), viewer.user_id, n, policy),
            "max_pending": policy.max_pending}


@router.get("/assignments/{assignment_id}")
def assignment(request: Request, assignment_id: Id, viewer: Viewer = Depends(current_viewer)):
    v = open_assignment(store_of(request), viewer.user_id, assignment_id)
    label = dict(v.label, created_at=v.label["created_at"].isoformat() + "Z") if v.label else None
    return {"id": v.assignment_id, "task_id": v.task_id, "kind": v.kind, "status": v.status,
            "prompt": v.prompt, "prompt_id": v.prompt_id, "responses": v.responses,
            "request_id": new_request_id(), "label": label}


@router.post("/assignments/{assignment_id}/label")
def label(request: Request, assignment_id: Id, body=Depends(json_csrf),
          viewer: Viewer = Depends(current_viewer)):
    saved = submit_label(store_of(request), viewer.user_id, assignment_id, submission_from_json(body),
                         request.app.state.claims)
    return JSONResponse({"label_id": saved.label_id, "assignment_id": saved.assignment_id,
                         "duplicate": saved.duplicate, "saved": True},
                        status_code=200 if saved.duplicate else 201)
