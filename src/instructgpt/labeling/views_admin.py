"""Admin pages: overview (progress, agreement, throughput), people, login lockouts, import, export."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from instructgpt.data import DataError

from . import accounts
from .export import write_zip
from .quality import throughput
from .security import AuthError, Viewer, check_lock_key
from .tables import Assignment, Label, Task, User
from .tasks import (
    Invalid,
    check_overlap,
    import_bytes,
    release_expired,
    release_pending,
)
from .web import MIB, Id, admin_form_csrf, admin_viewer, redirect, render, store_of

router = APIRouter(prefix="/admin")


def _overview(store) -> dict:
    """Counts of tasks, open slots, assignments by status, and recent skips."""
    with store.tx(read_only=True) as s:
        tasks = dict(s.execute(select(Task.kind, func.count()).group_by(Task.kind)).all())
        open_slots = dict(s.execute(select(Task.kind, func.sum(Task.slots_left)).group_by(Task.kind)).all())
        states = dict(s.execute(select(Assignment.status, func.count()).group_by(Assignment.status)).all())
        skips = s.execute(
            select(User.username, Task.prompt_id, Label.skip_reason, Label.created_at)
            .join(Assignment, Assignment.id == Label.assignment_id)
            .join(User, User.id == Assignment.user_id).join(Task, Task.id == Assignment.task_id)
            .where(Label.kind == "skip").order_by(Label.id.desc()).limit(20)
        ).all()
    return {"tasks": tasks, "open_slots": open_slots, "states": states, "skips": skips}


def _page(request: Request, viewer: Viewer, status: int = 200, **extra) -> Response:
    store = store_of(request)
    release_expired(store, request.app.state.claims.lease)  # so that the counts below are current
    return render(request, "admin.html", status=status, csrf_token=viewer.csrf_token,
                  overview=_overview(store), agreement=request.app.state.agreement.current(), throughput={t.username: t for t in throughput(store)},
                  users=accounts.list_users(store), lockouts=request.app.state.limiter.lockouts(),
                  login_window=request.app.state.limiter.window, message=extra.pop("message", None),
                  lease_hours=request.app.state.cfg.claim_lease_hours,
                  max_pending=request.app.state.claims.max_pending,
                  error=extra.pop("error", None), invite_link=extra.pop("invite_link", None))


@router.get("")
def admin_home(request: Request, viewer: Viewer = Depends(admin_viewer)):
    return _page(request, viewer)


@router.post("/invites")
def create_invite(request: Request, form=Depends(admin_form_csrf), viewer: Viewer = Depends(admin_viewer)):
    role = "admin" if form.get("role") == "admin" else "labeler"
    token = accounts.create_invite(store_of(request), created_by=viewer.user_id, role=role,
                                   held_out=form.get("held_out") == "on")
    link = str(request.base_url).rstrip("/") + f"/invite/{token}"
    return _page(request, viewer, invite_link=link, message="Invite created. The link is shown only once.")


@router.post("/users")
def create_user(request: Request, form=Depends(admin_form_csrf), viewer: Viewer = Depends(admin_viewer)):
    try:
        user = accounts.create_user(store_of(request), str(form.get("username", "")),
                                    str(form.get("password", "")), role="labeler",
                                    held_out=form.get("held_out") == "on")
    except AuthError as e:
        return _page(request, viewer, status=400, error=str(e))
    return _page(request, viewer, message=f"Created labeler {user.username}.")


@router.post("/users/{user_id}")
def update_user(request: Request, user_id: Id, form=Depends(admin_form_csrf),
                viewer: Viewer = Depends(admin_viewer)):
    action = form.get("action")
    if action == "release":
        n = release_pending(store_of(request), user_id, "admin")
        return _page(request, viewer, message=f"Released {n} pending tasks to the pool.")
    changes = {"held_out_on": {"held_out": True}, "held_out_off": {"held_out": False},
               "activate": {"active": True}, "deactivate": {"active": False}}.get(str(action))
    if changes is None:
        raise Invalid("unknown action")
    try:
        accounts.update_user(store_of(request), user_id, **changes)
    except AuthError as e:
        return _page(request, viewer, status=400, error=str(e))
    return redirect("/admin")


@router.post("/lockouts")
def lift_lockout(request: Request, form=Depends(admin_form_csrf), viewer: Viewer = Depends(admin_viewer)):
    """Forget the failed logins under one rate-limit key (form field ``key``), so its logins go through again."""
    try:
        key = check_lock_key(str(form.get("key", "")))
    except AuthError as e:
        return _page(request, viewer, status=400, error=str(e))
    n = request.app.state.limiter.lift(key, by=f"admin {viewer.username}")
    if not n:
        return _page(request, viewer, message=f"{key} was not locked (its failures may have aged out).")
    return _page(request, viewer, message=f"Lifted the lockout of {key} ({n} failed logins forgotten).")


def _number(form, name: str, default, kind=float):
    """A form field as ``kind`` (float or int); ``Invalid`` names the field otherwise."""
    raw = str(form.get(name) or "").strip()
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise Invalid(f"{name}: expected {'an integer' if kind is int else 'a number'}, got {raw[:20]!r}") from None


@router.post("/import")
async def import_tasks(request: Request, form=Depends(admin_form_csrf), viewer: Viewer = Depends(admin_viewer)):
    upload = form.get("file")
    kind = str(form.get("kind", ""))
    if not isinstance(upload, UploadFile) or kind not in ("prompts", "rank"):
        raise Invalid("choose a kind and a JSONL file")
    limit = request.app.state.cfg.max_upload_mb * MIB
    content = await upload.read(limit + 1)
    if len(content) > limit:
        raise Invalid(f"file larger than {request.app.state.cfg.max_upload_mb} MiB")
    kwargs = {"overlap_fraction": _number(form, "overlap_fraction", 0.0),
              "overlap_k": _number(form, "overlap_k", 2, int)}
    try:
        check_overlap(kwargs["overlap_fraction"], kwargs["overlap_k"])
    except ValueError as e:
        return await run_in_threadpool(_page, request, viewer, 400, error=f"Import failed: {e}")
    try:
        result = await run_in_threadpool(import_bytes, store_of(request), kind, content,
                                         upload.filename or "upload.jsonl", **kwargs)
    except (DataError, ValueError) as e:
        return await run_in_threadpool(_page, request, viewer, 400, error=f"Import failed: {e}")
    return await run_in_threadpool(_page, request, viewer, message=result.describe())


ZIP_CHUNK = 1024 * 1024   # bytes of the export's zip sent at a time


@router.get("/export.zip")
def download_export(request: Request, viewer: Viewer = Depends(admin_viewer)):
    """The export as a zip, written to a temporary file and streamed from it (never held in memory)."""
    archive = tempfile.TemporaryFile()
    try:
        write_zip(store_of(request), archive)
        size = archive.tell()
        archive.seek(0)
    except BaseException:
        archive.close()
        raise
    return StreamingResponse(_chunks(archive), media_type="application/zip",
                             headers={"Content-Disposition": 'attachment; filename="labels-export.zip"',
                                      "Content-Length": str(size)})


def _chunks(archive) -> Iterator[bytes]:
    """The file's bytes, ZIP_CHUNK at a time; the file is closed (and so deleted) at the end."""
    with archive:
        while chunk := archive.read(ZIP_CHUNK):
            yield chunk
