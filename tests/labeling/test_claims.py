"""Handing out tasks: concurrent claimers, leases, releases and the per-labeler cap (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from instructgpt.labeling import accounts
from instructgpt.labeling.labels import Submission, new_request_id, submit_label
from instructgpt.labeling.security import load_viewer, start_session
from instructgpt.labeling.store import open_store
from instructgpt.labeling.tables import Assignment, Task, User, utcnow
from instructgpt.labeling.tasks import (
    ClaimPolicy,
    Conflict,
    claim_tasks,
    release_expired,
    release_pending,
)

from .helpers import add_user, write_rank_tasks

CLAIMERS, EACH = 30, 10


def skip(aid_user, store, aid):
    submit_label(store, aid_user, aid, Submission("skip", new_request_id(), skip_reason="Other"))


def open_slots(store) -> int:
    with store.tx() as s:
        return s.scalar(select(func.sum(Task.slots_left)))


def statuses(store, user_id) -> dict[str, int]:
    with store.tx() as s:
        return dict(s.execute(select(Assignment.status, func.count()).where(Assignment.user_id == user_id)
                              .group_by(Assignment.status)).all())


def test_thirty_labelers_claiming_at_once_each_get_their_share(store, tmp_path):
    # 1,000 tasks, a tenth of them wanting two labels: plenty for 30 x 10.
    import_path = write_rank_tasks(tmp_path / "t.jsonl", 1000)
    from instructgpt.labeling.tasks import import_file

    import_file(store, "rank", import_path, overlap_fraction=0.1, overlap_k=2)
    users = [add_user(store, f"lab{i:02d}") for i in range(CLAIMERS)]
    start = threading.Barrier(CLAIMERS)
    got, errors = {}, []

    def claim(uid):
        try:
            start.wait(30)
            got[uid] = claim_tasks(store, uid, EACH)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=claim, args=(u.id,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    counts = sorted(len(v) for v in got.values())
    print(f"\n[claims] {store.dialect}: per labeler {counts}")
    assert counts == [EACH] * CLAIMERS
    with store.tx() as s:
        per_task = s.execute(select(Assignment.task_id, func.count()).group_by(Assignment.task_id)).all()
        targets = dict(s.execute(select(Task.id, Task.target_labels)).all())
        taken = dict(s.execute(select(Task.id, Task.target_labels - Task.slots_left)).all())
    assert all(n <= targets[tid] and n == taken[tid] for tid, n in per_task)  # never over-assigned
    assert sum(n for _, n in per_task) == CLAIMERS * EACH


def test_a_claim_expires_after_its_lease(store, tmp_path):
    from instructgpt.labeling.tasks import import_file

    import_file(store, "rank", write_rank_tasks(tmp_path / "t.jsonl", 2))
    ann, bob = add_user(store, "ann"), add_user(store, "bob")
    policy = ClaimPolicy(lease=timedelta(hours=2), max_pending=30)
    t0 = utcnow()
    mine = claim_tasks(store, ann.id, 2, policy, now=t0)
    assert len(mine) == 2 and open_slots(store) == 0
    assert claim_tasks(store, bob.id, 2, policy, now=t0 + timedelta(hours=1, minutes=59)) == []  # still leased
    theirs = claim_tasks(store, bob.id, 2, policy, now=t0 + timedelta(hours=2, seconds=1))
    assert len(theirs) == 2 and open_slots(store) == 0
    assert statuses(store, ann.id) == {"released": 2}
    with store.tx() as s:
        reasons = set(s.scalars(select(Assignment.release_reason).where(Assignment.user_id == ann.id)))
    assert reasons == {"expired"}
    with pytest.raises(Conflict, match="released"):  # a late submission does not take bob's task
        submit_label(store, ann.id, mine[0], Submission("skip", new_request_id(), skip_reason="Other"))
    assert claim_tasks(store, ann.id, 2, policy, now=t0 + timedelta(hours=3)) == []  # never the same task twice


def test_release_expired_counts_held_out_claims_without_slots(store, tmp_path):
    from instructgpt.labeling.tasks import import_file

    import_file(store, "rank", write_rank_tasks(tmp_path / "t.jsonl", 3))
    ann, hal = add_user(store, "ann"), add_user(store, "hal", held_out=True)
    t0 = utcnow()
    claim_tasks(store, ann.id, 1, now=t0)
    claim_tasks(store, hal.id, 2, now=t0)  # held-out: no slot taken
    assert open_slots(store) == 2
    assert release_expired(store, timedelta(minutes=1), now=t0 + timedelta(minutes=2)) == 3
    assert open_slots(store) == 3  # only ann's slot came back


def test_pending_tasks_are_capped_per_labeler(store, tmp_path):
    from instructgpt.labeling.tasks import import_file

    import_file(store, "rank", write_rank_tasks(tmp_path / "t.jsonl", 364))
    ann = add_user(store, "ann")
    policy = ClaimPolicy(max_pending=30)
    got = [claim_tasks(store, ann.id, 100, policy) for _ in range(5)]
    assert [len(g) for g in got] == [30, 0, 0, 0, 0]
    for aid in got[0][:4]:
        skip(ann.id, store, aid)
    assert len(claim_tasks(store, ann.id, 100, policy)) == 4  # room again for four
    assert open_slots(store) == 364 - 34 + 4  # the skipped tasks went back to the pool


def test_deactivation_releases_tasks_and_ends_sessions_for_good(store, tmp_path):
    from instructgpt.labeling.tasks import import_file

    import_file(store, "rank", write_rank_tasks(tmp_path / "t.jsonl", 20))
    ann = add_user(store, "ann")
    add_user(store, "root", role="admin")
    claim_tasks(store, ann.id, 14)
    with store.tx() as s:
        token = start_session(s, s.get(User, ann.id))
    accounts.update_user(store, ann.id, active=False)
    assert statuses(store, ann.id) == {"released": 14} and open_slots(store) == 20
    accounts.update_user(store, ann.id, active=True)
    with store.tx() as s:
        assert load_viewer(s, token) is None  # reactivation does not bring the old session back
        assert s.scalar(select(User.active).where(User.id == ann.id))


def test_admin_release_gives_a_labelers_pending_tasks_back(store, tmp_path):
    from instructgpt.labeling.tasks import import_file

    import_file(store, "rank", write_rank_tasks(tmp_path / "t.jsonl", 5))
    ann, bob = add_user(store, "ann"), add_user(store, "bob")
    done, *_ = claim_tasks(store, ann.id, 5)
    assert claim_tasks(store, bob.id, 5) == []  # ann holds all of them
    skip(ann.id, store, done)  # a finished task stays finished (its slot is back already)
    assert release_pending(store, ann.id) == 4
    assert statuses(store, ann.id) == {"skipped": 1, "released": 4}
    assert len(claim_tasks(store, bob.id, 5)) == 5


def test_upgrade_from_0001_keeps_labels_and_marks_held_out_claims(db_url):
    """The 0002 migration copies the assignments table on SQLite: no label may go with it."""
    from instructgpt.labeling.store import Store, current_revision, downgrade, upgrade

    store = Store(db_url)
    upgrade(store.engine, "0001")
    with store.engine.begin() as c:
        c.exec_driver_sql("INSERT INTO users (username, password_hash, role, held_out, active, created_at) "
                          "VALUES ('t', 'x', 'labeler', false, true, '2030-01-01'), "
                          "('h', 'x', 'labeler', true, true, '2030-01-01')")
        c.exec_driver_sql("INSERT INTO tasks (kind, prompt_id, prompt, meta, content_hash, target_labels, "
                          "slots_left, batch, created_at) VALUES ('rank', 'p', 'p', '{}', 'h1', 1, 0, '', "
                          "'2030-01-01'), ('rank', 'q', 'q', '{}', 'h2', 1, 1, '', '2030-01-01')")
        c.exec_driver_sql("INSERT INTO assignments (task_id, user_id, status, assigned_at) VALUES "
                          "(1, 1, 'done', '2030-01-01'), (2, 2, 'pending', '2030-01-01')")
        c.exec_driver_sql("INSERT INTO labels (request_id, assignment_id, kind, skip_reason, created_at) "
                          "VALUES ('r1', 1, 'skip', 'x', '2030-01-01')")
    upgrade(store.engine)
    assert current_revision(store.engine) == "0004"
    with store.engine.connect() as c:
        assert c.exec_driver_sql("SELECT count(*) FROM labels").scalar() == 1
        assert c.exec_driver_sql("SELECT user_id, took_slot FROM assignments ORDER BY id").all() == \
            [(1, True), (2, False)]
    downgrade(store.engine, "0001")
    upgrade(store.engine)
    with store.engine.connect() as c:
        assert c.exec_driver_sql("SELECT count(*) FROM labels").scalar() == 1
    store.dispose()


def test_served_claims_use_the_configured_lease_and_cap(sqlite_url, tmp_path, make_app):
    from instructgpt.labeling.tasks import import_file

    from .helpers import csrf, login

    store = open_store(sqlite_url)
    import_file(store, "rank", write_rank_tasks(tmp_path / "t.jsonl", 50))
    ann = add_user(store, "ann")
    client = make_app(sqlite_url, max_pending=12, claim_lease_hours=0.5)
    assert login(client, "ann").status_code == 303
    headers = {"X-CSRF-Token": csrf(client)}
    r = client.post("/api/claim", json={"n": 100}, headers=headers).json()
    assert len(r["assignment_ids"]) == 12 and r["max_pending"] == 12
    assert client.post("/api/claim", json={"n": 5}, headers=headers).json()["assignment_ids"] == []
    page = client.get("/")
    assert "12 pending" in page.text and "at most 12" in page.text
    with store.tx() as s:  # make the claims 31 minutes old
        for a in s.scalars(select(Assignment)):
            a.assigned_at -= timedelta(minutes=31)
    # the 12 were released (not handed back to ann); she gets 5 of the 38 others
    assert len(client.post("/api/claim", json={"n": 5}, headers=headers).json()["assignment_ids"]) == 5
    assert statuses(store, ann.id) == {"released": 12, "pending": 5}
    store.dispose()


def claim_statement(store, user_id: int) -> tuple[str, object]:
    """The candidate query ``claim_tasks`` sends (statement and parameters), caught on its way to the driver."""
    from sqlalchemy import event

    sent = []

    def catch(conn, cursor, statement, parameters, context, executemany):
        if "ORDER BY" in statement and "FROM tasks" in statement:
            sent.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", catch)
    try:
        assert len(claim_tasks(store, user_id, 10)) == 10
    finally:
        event.remove(store.engine, "before_cursor_execute", catch)
    assert len(sent) == 1, sent
    return sent[0]


def half_labelled(store, first, second) -> None:
    """4,000 rank tasks (ids 1..4000), every tenth wanting 2 labels; the first 2,000 have all their labels
    (``first`` labelled each of them, ``second`` those that wanted 2)."""
    from sqlalchemy import insert

    rows = [{"kind": "rank", "prompt_id": f"p{i}", "prompt": f"Prompt {i}", "responses": ["a", "b", "c", "d"],
             "meta": {}, "content_hash": f"{i:064d}", "target_labels": 2 if i % 10 == 0 else 1,
             "slots_left": 0 if i < 2000 else (2 if i % 10 == 0 else 1), "batch": ""} for i in range(4000)]
    with store.tx() as s:
        s.execute(insert(Task), rows)
        full = s.execute(select(Task.id, Task.target_labels).where(Task.slots_left == 0)).all()
        s.execute(insert(Assignment), [{"task_id": t, "user_id": first.id, "status": "done"} for t, _ in full] +
                  [{"task_id": t, "user_id": second.id, "status": "done"} for t, k in full if k == 2])
    with store.engine.begin() as c:
        c.exec_driver_sql("ANALYZE")


def test_the_claim_query_reads_the_claim_order_index(store):
    """The plan of the query a claim sends: the partial index ix_tasks_claim in claim order, no sort of the
    open tasks, and a key probe (not a scan) of the labeler's assignments. It used to read every open task
    (SQLite: skip-scanning ix_tasks_open, then a temporary b-tree for the ORDER BY; 20-50 ms at 20,000 tasks)."""
    ann = add_user(store, "ann")
    half_labelled(store, add_user(store, "bob"), add_user(store, "cy"))
    statement, parameters = claim_statement(store, ann.id)
    with store.engine.connect() as c:
        if store.dialect == "sqlite":
            plan = [row[-1] for row in c.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)]
            assert plan[0] == "SCAN tasks USING INDEX ix_tasks_claim", plan
            assert any("SEARCH assignments USING COVERING INDEX" in p for p in plan), plan
            assert not any("TEMP B-TREE" in p or p.startswith("SCAN assignments") for p in plan), plan
        else:
            plan = [row[0] for row in c.exec_driver_sql("EXPLAIN " + statement, parameters)]
            text = "\n".join(plan)
            assert "LockRows" in text, text               # FOR UPDATE SKIP LOCKED kept
            assert "ix_tasks_claim on tasks" in text, text
            assert "Sort" not in text and "Seq Scan on tasks" not in text, text
    print(f"\n[claim plan] {store.dialect}:\n  " + "\n  ".join(plan))


def test_the_held_out_claim_query_reads_the_held_out_order_index(store):
    """A held-out claim takes the tasks with the most training claims first (here the fully labelled tasks that
    wanted 2 labels), reading the index ix_tasks_held_out in that order with a key probe per task. It used to count
    every task's assignments and sort all tasks by that count (about 19 ms on SQLite at 20,000 tasks)."""
    hal = add_user(store, "hal", held_out=True)
    half_labelled(store, add_user(store, "bob"), add_user(store, "cy"))
    statement, parameters = claim_statement(store, hal.id)
    with store.tx() as s:
        taken = s.scalars(select(Assignment.task_id).where(Assignment.user_id == hal.id).order_by(Assignment.id))
        assert list(taken) == list(range(1, 101, 10))   # tasks 0, 10, .. 90 of the file: 2 claims each
    with store.engine.connect() as c:
        if store.dialect == "sqlite":
            plan = [row[-1] for row in c.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)]
            assert plan[0] == "SCAN tasks USING INDEX ix_tasks_held_out", plan
            assert any("SEARCH assignments USING COVERING INDEX" in p for p in plan), plan
            assert not any("TEMP B-TREE" in p or "(task_id=?)" in p for p in plan), plan
        else:
            plan = [row[0] for row in c.exec_driver_sql("EXPLAIN " + statement, parameters)]
            text = "\n".join(plan)
            assert "ix_tasks_held_out on tasks" in text, text
            assert "Sort" not in text and "Seq Scan on tasks" not in text and "SubPlan" not in text, text
    print(f"\n[held-out claim plan] {store.dialect}:\n  " + "\n  ".join(plan))
