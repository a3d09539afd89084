"""Label quality: inter-labeler agreement and per-labeler throughput.

Agreement follows the paper: over the comparisons (response pairs of one task)
that two labelers both ranked, the fraction on which they prefer the same
response. A pair that either labeler tied is not a comparison and is left
out. Reported separately among training labelers, between training and
held-out labelers, and per labeler (against everyone else).

The comparisons a ranking implies are those of ``instructgpt.data.Ranking.pairs``
(every (winner, loser) pair across ordered tie groups; a tie gives none), the
same pairs the reward model trains on.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations

from sqlalchemy import func, select

from instructgpt.data import Ranking

from .store import Store
from .tables import Assignment, Label, User


def preferences(ranking: list[list[int]]) -> dict[tuple[int, int], int]:
    """For each compared pair i < j: +1 if i is ranked above j, -1 if below (ties give no pair).

    The pairs are ``data.Ranking.pairs()`` of ``ranking`` (groups of response
    indices, best first), keyed by the unordered pair.
    """
    k = sum(len(g) for g in ranking)
    pairs = Ranking(prompt="", responses=[""] * k, ranking=ranking).pairs()
    return {(min(w, l), max(w, l)): 1 if w < l else -1 for w, l in pairs}


def compare(a: list[list[int]], b: list[list[int]]) -> tuple[int, int]:
    """(agreeing comparisons, comparisons) between two rankings of the same responses.

    A comparison is a pair both rankings order (neither ties it); they agree
    when they prefer the same response.
    """
    pa, pb = preferences(a), preferences(b)
    common = pa.keys() & pb.keys()
    return sum(pa[p] == pb[p] for p in common), len(common)


@dataclass
class Rate:
    agree: int = 0
    total: int = 0

    def add(self, agree: int, total: int) -> None:
        self.agree += agree
        self.total += total

    @property
    def value(self) -> float | None:
        return self.agree / self.total if self.total else None

    def as_dict(self) -> dict:
        return {"agree": self.agree, "comparisons": self.total, "rate": self.value}


@dataclass
class Agreement:
    train_train: Rate = field(default_factory=Rate)
    train_heldout: Rate = field(default_factory=Rate)
    heldout_heldout: Rate = field(default_factory=Rate)
    per_labeler: dict[str, Rate] = field(default_factory=lambda: defaultdict(Rate))
    tasks_compared: int = 0

    def as_dict(self) -> dict:
        return {"train_train": self.train_train.as_dict(), "train_heldout": self.train_heldout.as_dict(),
                "heldout_heldout": self.heldout_heldout.as_dict(), "tasks_compared": self.tasks_compared,
                "per_labeler": {k: v.as_dict() for k, v in sorted(self.per_labeler.items())}}


def rank_labels(store: Store) -> list[tuple[int, str, bool, list[list[int]]]]:
    """(task_id, username, held_out, ranking) of every submitted ranking.

    ``held_out`` is that of the claim (``not Assignment.took_slot``), as in the export.
    """
    with store.tx(read_only=True) as s:
        rows = s.execute(
            select(Assignment.task_id, User.username, ~Assignment.took_slot, Label.ranking)
            .join(Assignment, Assignment.id == Label.assignment_id)
            .join(User, User.id == Assignment.user_id)
            .where(Label.kind == "rank")
        ).all()
    return [tuple(r) for r in rows]


def agreement(store: Store) -> Agreement:
    """Pairwise agreement over every task ranked by two or more labelers.

    For every two labelers who ranked the same task, ``compare`` counts the
    comparisons both made and those they agree on; the counts are summed into
    ``train_train``, ``train_heldout`` or ``heldout_heldout`` (by whether the
    two are held out) and into both labelers' ``per_labeler`` entries. Each
    ``Rate.value`` is agreeing / compared (None without comparisons).
    """
    by_task: dict[int, list[tuple[str, bool, list[list[int]]]]] = defaultdict(list)
    for task_id, user, held_out, ranking in rank_labels(store):
        by_task[task_id].append((user, held_out, ranking))
    out = Agreement()
    for labels in by_task.values():
        if len(labels) < 2:
            continue
        out.tasks_compared += 1
        for (ua, ha, ra), (ub, hb, rb) in combinations(labels, 2):
            agree, total = compare(ra, rb)
            bucket = out.heldout_heldout if ha and hb else out.train_heldout if ha or hb else out.train_train
            bucket.add(agree, total)
            out.per_labeler[ua].add(agree, total)
            out.per_labeler[ub].add(agree, total)
    return out


@dataclass
class Throughput:
    username: str
    held_out: bool
    labels: int            # demonstrations and rankings
    skips: int
    pending: int
    median_seconds: float | None
    labels_per_hour: float | None   # labels (not skips) per hour spent on task pages (skips' time included)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def throughput(store: Store) -> list[Throughput]:
    """Per labeler: labels, skips, pending tasks, median time per task and labels per hour.

    Labels per hour = labels (demonstrations and rankings) x 3600 / seconds
    spent on every task page of the labeler, skipped ones included; None
    before any time was recorded.
    """
    with store.tx(read_only=True) as s:
        users = s.scalars(select(User).order_by(User.username)).all()
        times = defaultdict(list)
        counts = defaultdict(lambda: {"labels": 0, "skips": 0})
        for uid, kind, secs in s.execute(
            select(Assignment.user_id, Label.kind, Label.seconds_spent)
            .join(Assignment, Assignment.id == Label.assignment_id)
        ):
            counts[uid]["skips" if kind == "skip" else "labels"] += 1
            if secs is not None:
                times[uid].append(secs)
        pending = dict(s.execute(select(Assignment.user_id, func.count()).where(Assignment.status == "pending")
                                 .group_by(Assignment.user_id)).all())
    out = []
    for u in users:
        t, c = times[u.id], counts[u.id]
        if not (t or c["labels"] or c["skips"] or pending.get(u.id)):
            continue
        per_hour = (c["labels"] * 3600.0 / sum(t)) if t and sum(t) > 0 else None
        out.append(Throughput(u.username, u.held_out, c["labels"], c["skips"], pending.get(u.id, 0),
                              statistics.median(t) if t else None, per_hour))
    return out
