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

import copy
import statistics
import threading
from collections import defaultdict
from dataclasses import dataclass, field

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
    return _agreeing(preferences(a), preferences(b))


def _agreeing(pa: dict[tuple[int, int], int], pb: dict[tuple[int, int], int]) -> tuple[int, int]:
    """``compare`` of two rankings given as their ``preferences``."""
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
        rows = s.execute(_rank_label_query()).all()
    return [(task_id, user, held_out, ranking) for _, task_id, user, held_out, ranking in rows]


def _rank_label_query():
    """(label id, task_id, username, held_out, ranking) of submitted rankings, in label order."""
    return (select(Label.id, Assignment.task_id, User.username, ~Assignment.took_slot, Label.ranking)
            .join(Assignment, Assignment.id == Label.assignment_id)
            .join(User, User.id == Assignment.user_id)
            .where(Label.kind == "rank").order_by(Label.id))


class _Ranked:
    """One labeler's ranking of a task; its ``preferences`` are worked out once, when first compared."""
    __slots__ = ("user", "held_out", "ranking", "_prefs")

    def __init__(self, user: str, held_out: bool, ranking: list[list[int]]):
        self.user, self.held_out, self.ranking, self._prefs = user, held_out, ranking, None

    @property
    def prefs(self) -> dict[tuple[int, int], int]:
        if self._prefs is None:
            self._prefs = preferences(self.ranking)
        return self._prefs


def _add_pair(out: Agreement, a: _Ranked, b: _Ranked) -> None:
    """Count the comparisons of two labelers' rankings of one task into ``out``."""
    agree, total = _agreeing(a.prefs, b.prefs)
    bucket = (out.heldout_heldout if a.held_out and b.held_out else
              out.train_heldout if a.held_out or b.held_out else out.train_train)
    bucket.add(agree, total)
    out.per_labeler[a.user].add(agree, total)
    out.per_labeler[b.user].add(agree, total)


class AgreementTally:
    """``agreement`` kept up to date: each call reads only the rankings submitted since the last one.

    Labels are never changed once stored, so the agreement of the labels up to
    some id never changes either: a call reads the rankings with a higher id and
    the earlier rankings of their tasks only, and compares each new ranking with
    those of its task that came before it. The admin page calls it on every load,
    so the page's cost follows the labels added since, not all labels. If the
    rankings up to the last id counted are not the ones counted (rows deleted by
    hand, or on PostgreSQL a ranking committed after one with a higher id), it
    counts again from the start. Thread-safe; each server process keeps its own.
    """

    def __init__(self, store: Store):
        self.store = store
        self._lock = threading.Lock()
        self._restart()

    def _restart(self) -> None:
        self._agreement, self._last_id, self._counted = Agreement(), 0, 0
        self.rows_read = 0   # label rows the last call read (the whole table only on the first call)

    def current(self) -> Agreement:
        """The agreement over every ranking stored now (a copy: the caller may keep it)."""
        with self._lock, self.store.tx(read_only=True) as s:
            still_there = s.scalar(select(func.count()).select_from(Label)
                                   .where(Label.kind == "rank", Label.id <= self._last_id))
            if still_there != self._counted:
                self._restart()
            self._count_new(s)
            return copy.deepcopy(self._agreement)

    def _count_new(self, s) -> None:
        new = s.execute(_rank_label_query().where(Label.id > self._last_id)).all()
        tasks = sorted({task_id for _, task_id, *_ in new}) if self._last_id else []  # nothing is earlier at first
        earlier: dict[int, list[_Ranked]] = defaultdict(list)   # task -> its rankings counted before
        for i in range(0, len(tasks), 500):
            for _, task_id, user, held_out, ranking in s.execute(
                    _rank_label_query().where(Assignment.task_id.in_(tasks[i:i + 500]), Label.id <= self._last_id)):
                earlier[task_id].append(_Ranked(user, held_out, ranking))
        self.rows_read = len(new) + sum(len(rows) for rows in earlier.values())
        out = self._agreement
        for _, task_id, user, held_out, ranking in new:
            before, mine = earlier[task_id], _Ranked(user, held_out, ranking)
            if len(before) == 1:
                out.tasks_compared += 1
            for other in before:
                _add_pair(out, other, mine)
            before.append(mine)
        if new:
            self._last_id = new[-1][0]
        self._counted += len(new)


def agreement(store: Store) -> Agreement:
    """Pairwise agreement over every task ranked by two or more labelers.

    For every two labelers who ranked the same task, ``compare`` counts the
    comparisons both made and those they agree on; the counts are summed into
    ``train_train``, ``train_heldout`` or ``heldout_heldout`` (by whether the
    two are held out) and into both labelers' ``per_labeler`` entries. Each
    ``Rate.value`` is agreeing / compared (None without comparisons). This
    reads every ranking; ``AgreementTally`` gives the same and then reads only new ones.
    """
    return AgreementTally(store).current()


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
