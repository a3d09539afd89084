"""Export labels as the JSONL files the training and evaluation stages read.

Layout of an export folder (the admin download is a zip of the same files)::

    demonstrations.jsonl        SFT data: {"prompt", "response", "labeler_id", "prompt_id"}
    rankings.jsonl              RM data: {"prompt", "prompt_id", "responses", "ranking",
                                "likert", "flags", "labeler_id", "comment"?}
    eval/demonstrations.jsonl   as above, by held-out labelers only
    eval/rankings.jsonl         as above, by held-out labelers only
    eval/metadata.jsonl         every ranking (training and held-out labelers) with
                                its Likert scores and flags; see docs/labeling.md
    skips.jsonl                 {"prompt_id", "kind", "labeler_id", "held_out", "reason"}
    manifest.json               counts, agreement, throughput, time of export

Training files hold labels of labelers who are not held out; ranking indices
refer to the original order of ``responses`` in the imported task. Every
record is checked with ``data.parse_demonstration`` / ``data.parse_ranking``
before it is written.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from instructgpt import data

from .quality import agreement, throughput
from .store import Store
from .tables import Assignment, Label, Task, User, utcnow

FORMAT_VERSION = 1


@dataclass
class ExportData:
    files: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)


def demonstration_record(task: Task, label: Label, user: User) -> dict[str, Any]:
    rec = {"prompt": task.prompt, "response": label.response,
           "labeler_id": user.username, "prompt_id": task.prompt_id}
    data.parse_demonstration(rec, f"label {label.id}")
    return rec


def ranking_record(task: Task, label: Label, user: User) -> dict[str, Any]:
    rec = {"prompt": task.prompt, "prompt_id": task.prompt_id, "responses": list(task.responses),
           "ranking": label.ranking, "likert": label.likert, "flags": label.flags,
           "labeler_id": user.username}
    if label.comment:
        rec["comment"] = label.comment
    data.parse_ranking(rec, f"label {label.id}")
    return rec


def metadata_record(task: Task, label: Label, user: User) -> dict[str, Any]:
    return {"label_id": label.id, "task_id": task.id, "prompt_id": task.prompt_id, "prompt": task.prompt,
            "responses": list(task.responses), "ranking": label.ranking, "likert": label.likert,
            "flags": label.flags, "comment": label.comment, "labeler_id": user.username,
            "held_out": user.held_out, "seconds_spent": label.seconds_spent,
            "labeled_at": label.created_at.isoformat() + "Z", "task_meta": task.meta or {}}


def collect(store: Store) -> ExportData:
    """Every file's records, plus the manifest."""
    files: dict[str, list[dict[str, Any]]] = {name: [] for name in (
        "demonstrations.jsonl", "rankings.jsonl", "eval/demonstrations.jsonl",
        "eval/rankings.jsonl", "eval/metadata.jsonl", "skips.jsonl")}
    with store.tx(read_only=True) as s:
        rows = s.execute(
            select(Label, Task, User).join(Assignment, Assignment.id == Label.assignment_id)
            .join(Task, Task.id == Assignment.task_id).join(User, User.id == Assignment.user_id)
            .order_by(Label.id)
        ).all()
    for label, task, user in rows:
        prefix = "eval/" if user.held_out else ""
        if label.kind == "demonstration":
            files[prefix + "demonstrations.jsonl"].append(demonstration_record(task, label, user))
        elif label.kind == "rank":
            files[prefix + "rankings.jsonl"].append(ranking_record(task, label, user))
            files["eval/metadata.jsonl"].append(metadata_record(task, label, user))
        else:
            files["skips.jsonl"].append({"prompt_id": task.prompt_id, "kind": task.kind,
                                         "labeler_id": user.username, "held_out": user.held_out,
                                         "reason": label.skip_reason})
    manifest = {
        "format_version": FORMAT_VERSION,
        "exported_at": utcnow().isoformat() + "Z",
        "counts": {name: len(recs) for name, recs in files.items()},
        "agreement": agreement(store).as_dict(),
        "throughput": [t.as_dict() for t in throughput(store)],
    }
    return ExportData(files, manifest)


def export_dir(store: Store, out_dir: str | Path) -> dict[str, Any]:
    """Write the export into ``out_dir`` (each file atomically); returns the manifest."""
    out = Path(out_dir)
    exp = collect(store)
    for name, records in exp.files.items():
        data.write_jsonl(out / name, records)
    with data.atomic_open(out / "manifest.json") as f:
        f.write(json.dumps(exp.manifest, indent=2, ensure_ascii=False) + "\n")
    return exp.manifest


def export_zip(store: Store) -> bytes:
    """The same files as ``export_dir``, in a zip archive."""
    exp = collect(store)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, records in exp.files.items():
            zf.writestr(name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        zf.writestr("manifest.json", json.dumps(exp.manifest, indent=2, ensure_ascii=False) + "\n")
    return buf.getvalue()
