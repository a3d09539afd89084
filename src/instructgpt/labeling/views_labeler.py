"""Labeler pages: the task list, claiming tasks, writing, ranking, skipping.

Form fields of the ranking page are by DISPLAY position ``p`` (0-based, in the
order this labeler sees the responses): ``rank_p`` (1 = best; equal numbers
are ties), ``likert_p`` (1-7) and ``flag_p`` (repeated, one per flag name).
The server maps positions back to the original response indices.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from .labels import Submission, new_request_id, ranks_to_groups, submit_label
from .security import Viewer
from .tasks import Invalid, assignment_page, check_page, claim_tasks, next_pending, open_assignment
from .web import Id, current_viewer, form_csrf, redirect, render, store_of

router = APIRouter()
LETTERS = "ABCDEFGHI"
SKIP_REASONS = ("Not in English", "Unclear or incomplete prompt", "Needs expertise I lack",
                "Content I prefer not to label", "Other")


def _int(form, name: str, lo: int, hi: int) -> int:
    try:
        value = int(str(form.get(name, "")).strip())
    except ValueError:
        raise Invalid(f"{name}: expected a number from {lo} to {hi}") from None
    if not lo <= value <= hi:
        raise Invalid(f"{name}: expected a number from {lo} to {hi}")
    return value


def submission_from_form(form) -> Submission:
    """A ``Submission`` from the demonstration or ranking form."""
    kind = str(form.get("kind", ""))
    request_id = str(form.get("request_id", ""))
    if kind == "demonstration":
        return Submission("demonstration", request_id, response=str(form.get("response", "")))
    if kind != "rank":
        raise Invalid("unknown form")
    k = _int(form, "k", 1, 9)
    ranks = [_int(form, f"rank_{p}", 1, k) for p in range(k)]
    likert = [_int(form, f"likert_{p}", 1, 7) for p in range(k)]
    flags = [[str(v) for v in form.getlist(f"flag_{p}")] for p in range(k)]
    return Submission("rank", request_id, ranking=ranks_to_groups(ranks), likert=likert, flags=flags,
                      comment=str(form.get("comment", "")))


def skip_from_form(form) -> Submission:
    reason = str(form.get("reason", "")).strip()
    details = str(form.get("details", "")).strip()
    if not reason:
        raise Invalid("skip reason: choose a reason")
    return Submission("skip", str(form.get("request_id", "")),
                      skip_reason=f"{reason}: {details}" if details else reason)


@router.get("/")
def dashboard(request: Request, viewer: Viewer = Depends(current_viewer)):
    """My tasks: one page of the labeler's assignments (``?page=N``), pending first, then newest first."""
    mine = assignment_page(store_of(request), viewer.user_id, check_page(request.query_params.get("page")))
    policy = request.app.state.claims
    return render(request, "dashboard.html", mine=mine, csrf_token=viewer.csrf_token,
                  batch=request.app.state.cfg.claim_batch, lease=policy.lease, max_pending=policy.max_pending,
                  none_left=request.query_params.get("none") == "1")


@router.post("/claim")
def claim(request: Request, form=Depends(form_csrf), viewer: Viewer = Depends(current_viewer)):
    store = store_of(request)
    claim_tasks(store, viewer.user_id, request.app.state.cfg.claim_batch, request.app.state.claims)
    nxt = next_pending(store, viewer.user_id)
    return redirect(f"/a/{nxt}" if nxt else "/?none=1")


@router.get("/a/{assignment_id}")
def task_page(request: Request, assignment_id: Id, viewer: Viewer = Depends(current_viewer)):
    view = open_assignment(store_of(request), viewer.user_id, assignment_id)
    if view.status != "pending":
        return _saved_page(request, view)
    template = "task_rank.html" if view.kind == "rank" else "task_demo.html"
    return render(request, template, view=view, csrf_token=viewer.csrf_token, letters=LETTERS,
                  request_id=new_request_id(), skip_request_id=new_request_id(), skip_reasons=SKIP_REASONS)


@router.post("/a/{assignment_id}")
def submit(request: Request, assignment_id: Id, form=Depends(form_csrf),
           viewer: Viewer = Depends(current_viewer)):
    submit_label(store_of(request), viewer.user_id, assignment_id, submission_from_form(form),
                 request.app.state.claims)
    return redirect(f"/a/{assignment_id}/saved")


@router.post("/a/{assignment_id}/skip")
def skip(request: Request, assignment_id: Id, form=Depends(form_csrf),
         viewer: Viewer = Depends(current_viewer)):
    submit_label(store_of(request), viewer.user_id, assignment_id, skip_from_form(form), request.app.state.claims)
    return redirect(f"/a/{assignment_id}/saved")


@router.get("/a/{assignment_id}/saved")
def saved(request: Request, assignment_id: Id, viewer: Viewer = Depends(current_viewer)):
    return _saved_page(request, open_assignment(store_of(request), viewer.user_id, assignment_id))


def _saved_page(request: Request, view):
    viewer = request.state.viewer
    return render(request, "saved.html", view=view, letters=LETTERS, csrf_token=viewer.csrf_token,
                  next_id=next_pending(store_of(request), viewer.user_id))
