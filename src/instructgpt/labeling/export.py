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
import tempfile
import zipfile
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

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


EXPORT_CHUNK = 200   # label rows read from the database at a time: an export holds this many, not all


def export_records(store: Store, batches: Counter | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(file name, record)`` for every label, in label order, read from the database EXPORT_CHUNK rows at a time.

    A label goes to ``eval/`` when its claim was held out (made by a held-out
    labeler), else to the training file of its task's split. ``batches``, if
    given, counts the labels per import batch.
    """
    query = (select(Label, Task, User, Assignment.took_slot).join(Assignment, Assignment.id == Label.assignment_id)
             .join(Task, Task.id == Assignment.task_id).join(User, User.id == Assignment.user_id)
             .order_by(Label.id).execution_options(yield_per=EXPORT_CHUNK))
    with store.tx(read_only=True) as s:
        for label, task, user, took_slot in s.execute(query):
            if batches is not None:
                batches[task.batch] += 1
            yield from _records_of(label, task, user, held_out=not took_slot)


def _records_of(label: Label, task: Task, user: User, held_out: bool) -> Iterator[tuple[str, dict[str, Any]]]:
    if label.kind == "demonstration":
        yield _file_of("demonstrations.jsonl", task, held_out), demonstration_record(task, label, user)
    elif label.kind == "rank":
        yield _file_of("rankings.jsonl", task, held_out), ranking_record(task, label, user)
        yield "eval/metadata.jsonl", metadata_record(task, label, user, held_out)
    else:
        yield "skips.jsonl", {"prompt_id": task.prompt_id, "kind": task.kind, "labeler_id": user.username,
                              "held_out": held_out, "reason": label.skip_reason, "split": task_split(task),
                              "batch": task.batch}


def _manifest(store: Store, counts: dict[str, int], batches: Counter) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "exported_at": utcnow().isoformat() + "Z",
        "counts": counts,
        "batches": dict(sorted(batches.items())),  # labels per import
        "agreement": agreement(store).as_dict(),
        "throughput": [t.as_dict() for t in throughput(store)],
    }


def collect(store: Store) -> ExportData:
    """Every file's records, plus the manifest, in memory (for small exports and tests; ``export_dir``
    and ``write_zip`` stream)."""
    files: dict[str, list[dict[str, Any]]] = {name: [] for name in file_names()}
    batches: Counter = Counter()
    for name, rec in export_records(store, batches):
        files[name].append(rec)
    return ExportData(files, _manifest(store, {name: len(recs) for name, recs in files.items()}, batches))


def export_dir(store: Store, out_dir: str | Path) -> dict[str, Any]:
    """Write the export into ``out_dir``; returns the manifest.

    Records are written as they are read (``export_records``), so memory does
    not grow with the number of labels. Every file is written to a temporary
    file first and replaced only once every record was written and checked:
    on an error no file of ``out_dir`` changes.
    """
    out = Path(out_dir)
    counts = dict.fromkeys(file_names(), 0)
    batches: Counter = Counter()
    with ExitStack() as files:
        opened = {name: files.enter_context(data.atomic_open(out / name)) for name in counts}
        for name, rec in export_records(store, batches):
            opened[name].write(json.dumps(rec, ensure_ascii=False) + "\n")
            counts[name] += 1
    manifest = _manifest(store, counts, batches)
    with data.atomic_open(out / "manifest.json") as f:
        f.write(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def write_zip(store: Store, fileobj: BinaryIO) -> dict[str, Any]:
    """The same files as ``export_dir``, as a zip archive written to ``fileobj``; returns the manifest.

    The files are exported into a temporary folder first and copied into the
    archive from there, so memory does not grow with the number of labels.
    """
    with tempfile.TemporaryDirectory(prefix="igpt-export-") as tmp:
        manifest = export_dir(store, tmp)
        with zipfile.ZipFile(fileobj, "w", zipfile.ZIP_DEFLATED) as zf:
            for name in [*file_names(), "manifest.json"]:
                zf.write(Path(tmp) / name, arcname=name)
    return manifest


def export_zip(store: Store) -> bytes:
    """``write_zip`` into memory (for small exports and tests; the admin download streams a file)."""
    buf = io.BytesIO()
    write_zip(store, buf)
    return buf.getvalue()
