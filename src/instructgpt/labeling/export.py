"""Export labels as the JSONL files the training and evaluation stages read.

Layout of an export folder (the admin download is a zip of the same files)::

    demonstrations.jsonl        SFT training data (train split): {"prompt", "response",
                                "labeler_id", "prompt_id", "split", "batch"}
    rankings.jsonl              RM training data (train split): {"prompt", "prompt_id",
                                "responses", "ranking", "likert", "flags", "labeler_id",
                                "comment"?, "split", "batch"}
    demonstrations_valid.jsonl  as demonstrations.jsonl, for the valid split
    demonstrations_test.jsonl   ... and the test split
    rankings_valid.jsonl        as rankings.jsonl, for the valid split
    rankings_test.jsonl         ... and the test split
    eval/demonstrations.jsonl   as above, by held-out labelers only (every split)
    eval/rankings.jsonl         as above, by held-out labelers only (every split)
    eval/metadata.jsonl         every ranking (training and held-out labelers) with
                                its Likert scores and flags; see docs/labeling.md
    skips.jsonl                 {"prompt_id", "kind", "labeler_id", "held_out", "reason", "split", "batch"}
    manifest.json               counts, labels per batch, agreement, throughput, time of export

``batch`` is the import a task came from (``label import --batch``, default the imported file's name), so the
labels of one round can be told from another's; ``instructgpt sample`` also writes the
``policy`` it sampled from into each task, which ``eval/metadata.jsonl`` keeps in ``task_meta``.

Every record carries the ``split`` of its task's prompt (``tasks.task_split``),
so no label of a valid or test prompt reaches a training file. A label is
held out when its claim was made by a held-out labeler (``Assignment.took_slot``
is False): marking a labeler afterwards does not move their past labels.
A prompt given as chat messages is written as that list of messages (as
``data.to_record`` writes it), so ``data.load_demonstrations`` and
``data.load_rankings`` read its turns back. Ranking indices refer to the
original order of ``responses`` in the imported task. Every record is checked
with ``data.parse_demonstration`` / ``data.parse_ranking`` before it is written.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from instructgpt import data

from .quality import agreement, throughput
from .store import Store
from .tables import Assignment, Label, Task, User, utcnow
from .tasks import display_order, task_split, task_turns

FORMAT_VERSION = 2   # 2: the split files and every record's "split"; chat prompts as messages
TRAIN_FILES = ("demonstrations.jsonl", "rankings.jsonl")


@dataclass
class ExportData:
    files: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)


def split_file(name: str, split: str) -> str:
    """The training-labeler file of ``split``: ``rankings.jsonl`` for train, ``rankings_valid.jsonl`` else."""
    return name if split == "train" else name.replace(".jsonl", f"_{split}.jsonl")


def _prompt(task: Task) -> str | list[dict[str, Any]]:
    """The prompt as ``data.to_record`` writes it: its chat messages if it has them, else its text."""
    return task_turns(task) or task.prompt


def demonstration_record(task: Task, label: Label, user: User) -> dict[str, Any]:
    rec = {"prompt": _prompt(task), "response": label.response,
           "labeler_id": user.username, "prompt_id": task.prompt_id, "split": task_split(task), "batch": task.batch}
    data.parse_demonstration(rec, f"label {label.id}")
    return rec


def ranking_record(task: Task, label: Label, user: User) -> dict[str, Any]:
    rec = {"prompt": _prompt(task), "prompt_id": task.prompt_id, "responses": list(task.responses),
           "ranking": label.ranking, "likert": label.likert, "flags": label.flags,
           "labeler_id": user.username}
    if label.comment:
        rec["comment"] = label.comment
    rec["split"], rec["batch"] = task_split(task), task.batch
    data.parse_ranking(rec, f"label {label.id}")
    return rec


def metadata_record(task: Task, label: Label, user: User, held_out: bool) -> dict[str, Any]:
    return {"label_id": label.id, "task_id": task.id, "prompt_id": task.prompt_id, "prompt": _prompt(task),
            "responses": list(task.responses), "ranking": label.ranking, "likert": label.likert,
            "flags": label.flags, "comment": label.comment, "labeler_id": user.username,
            "held_out": held_out, "seconds_spent": label.seconds_spent,
            "labeled_at": label.created_at.isoformat() + "Z", "split": task_split(task), "batch": task.batch,
            # the order this labeler saw the responses in (shown_order[p]: the response at position p)
            "shown_order": display_order(user.id, task.id, len(task.responses or [])),
            "task_meta": task.meta or {}}


def file_names() -> list[str]:
    """Every JSONL file of an export, in the order they are written."""
    train = [split_file(name, split) for name in TRAIN_FILES for split in data.SPLITS]
    return train + ["eval/demonstrations.jsonl", "eval/rankings.jsonl", "eval/metadata.jsonl", "skips.jsonl"]


def _file_of(name: str, task: Task, held_out: bool) -> str:
    """Where a label goes: ``eval/<name>`` when held out, else the training file of its task's split."""
    return "eval/" + name if held_out else split_file(name, task_split(task))


def collect(store: Store) -> ExportData:
    """Every file's records, plus the manifest.

    A label goes to ``eval/`` when its claim was held out (made by a held-out
    labeler), else to the training file of its task's split.
    """
    files: dict[str, list[dict[str, Any]]] = {name: [] for name in file_names()}
    with store.tx(read_only=True) as s:
        rows = s.execute(
            select(Label, Task, User, Assignment.took_slot).join(Assignment, Assignment.id == Label.assignment_id)
            .join(Task, Task.id == Assignment.task_id).join(User, User.id == Assignment.user_id)
            .order_by(Label.id)
        ).all()
    for label, task, user, took_slot in rows:
        held_out = not took_slot
        if label.kind == "demonstration":
            files[_file_of("demonstrations.jsonl", task, held_out)].append(demonstration_record(task, label, user))
        elif label.kind == "rank":
            files[_file_of("rankings.jsonl", task, held_out)].append(ranking_record(task, label, user))
            files["eval/metadata.jsonl"].append(metadata_record(task, label, user, held_out))
        else:
            files["skips.jsonl"].append({"prompt_id": task.prompt_id, "kind": task.kind,
                                         "labeler_id": user.username, "held_out": held_out,
                                         "reason": label.skip_reason, "split": task_split(task),
                                         "batch": task.batch})
    manifest = {
        "format_version": FORMAT_VERSION,
        "exported_at": utcnow().isoformat() + "Z",
        "counts": {name: len(recs) for name, recs in files.items()},
        "batches": dict(sorted(Counter(task.batch for _, task, _, _ in rows).items())),  # labels per import
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
