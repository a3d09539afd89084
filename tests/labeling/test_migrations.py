"""The upgrade path of a live labeling database: a populated database at revision 0002 (the last release
before the claim-order indexes) migrated to head keeps every row and constraint, serves, and goes back down."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from .helpers import NASTY, PASSWORD, csrf, login, password_hash

pytestmark = pytest.mark.filterwarnings("ignore:.*expression-based index")

OLD = "0002"
ROWS = {  # what a team's database at 0002 holds: every role, task kind, assignment status and label kind
    "users": [
        dict(id=1, username="root", role="admin", held_out=False, active=True),
        dict(id=2, username="ann", role="labeler", held_out=False, active=True),
        dict(id=3, username="hal", role="labeler", held_out=True, active=True),
        dict(id=4, username="gone", role="labeler", held_out=False, active=False),
    ],
    "invites": [
        dict(id=1, token_hash="a" * 64, role="labeler", held_out=False, created_by=1, created_at="2026-11-01",
             expires_at="2026-11-08", used_at="2026-11-02", user_id=2),
        dict(id=2, token_hash="b" * 64, role="labeler", held_out=True, created_by=1, created_at="2026-11-01",
             expires_at="2026-11-08", used_at="2026-11-03", user_id=3),
        dict(id=3, token_hash="c" * 64, role="admin", held_out=False, created_by=None, created_at="2026-11-01",
             expires_at="2099-01-01", used_at=None, user_id=None),
    ],
    "tasks": [
        dict(id=1, kind="rank", prompt_id="p1", prompt="Explain tides.", target_labels=3, slots_left=1,
             responses=json.dumps([f"Answer {j}" for j in range(4)]),
             meta=json.dumps({"split": "train", "source": "sample"}), batch="round1"),
        dict(id=2, kind="demonstration", prompt_id="p2", prompt=NASTY[1], target_labels=1, slots_left=0,
             responses=None, meta=json.dumps({"split": "valid", "prompt_turns": [
                 {"role": "user", "content": NASTY[2]}, {"role": "assistant", "content": "Yes?"},
                 {"role": "user", "content": NASTY[1]}]}), batch="round1"),
        dict(id=3, kind="rank", prompt_id="p3", prompt=NASTY[3], target_labels=1, slots_left=1,
             responses=json.dumps(["x", "y", "z", "w"]), meta=json.dumps({}), batch="round2"),
        dict(id=4, kind="demonstration", prompt_id="p4", prompt="Write a haiku.", target_labels=1, slots_left=0,
             responses=None, meta=json.dumps({"split": "train"}), batch="round2"),
        dict(id=5, kind="rank", prompt_id="p5", prompt="Compare cats and dogs.", target_labels=1, slots_left=1,
             responses=json.dumps(["c", "d", "e", "f"]), meta=json.dumps({"split": "train"}), batch="round2"),
    ],
    "assignments": [
        dict(id=1, task_id=1, user_id=2, status="done", done_at="2026-11-05", took_slot=True),
        dict(id=2, task_id=1, user_id=3, status="done", done_at="2026-11-05", took_slot=False),
        dict(id=3, task_id=1, user_id=4, status="released", took_slot=True, released_at="2026-11-06",
             release_reason="deactivated"),
        dict(id=4, task_id=2, user_id=2, status="done", done_at="2026-11-05", took_slot=True),
        dict(id=5, task_id=3, user_id=2, status="skipped", done_at="2026-11-05", took_slot=True),
        dict(id=6, task_id=3, user_id=3, status="released", took_slot=False, released_at="2026-11-06",
             release_reason="expired"),
        dict(id=7, task_id=4, user_id=2, status="pending", took_slot=True),
        dict(id=8, task_id=1, user_id=1, status="pending", took_slot=True),
        dict(id=9, task_id=2, user_id=4, status="released", took_slot=True, released_at="2026-11-06",
             release_reason="admin"),
    ],
    "labels": [
        dict(id=1, request_id="r-1", assignment_id=1, kind="rank", ranking=json.dumps([[2], [0, 1], [3]]),
             likert=json.dumps([5, 5, 7, 1]), flags=json.dumps([[], [], [], ["harmful_advice"]]), comment=NASTY[0],
             seconds_spent=42.5),
        dict(id=2, request_id="r-2", assignment_id=2, kind="rank", ranking=json.dumps([[0], [1], [2], [3]]),
             likert=json.dumps([7, 6, 5, 4]), flags=json.dumps([[], [], [], []]), seconds_spent=12.0),
        dict(id=3, request_id="r-3", assignment_id=4, kind="demonstration", response=NASTY[2], seconds_spent=300.0),
        dict(id=4, request_id="r-4", assignment_id=5, kind="skip", skip_reason="not my language"),
    ],
    "web_sessions": [
        dict(id="d" * 64, user_id=2, csrf_token="e" * 32, created_at="2026-11-05", expires_at="2099-01-01"),
        dict(id="f" * 64, user_id=1, csrf_token="g" * 32, created_at="2026-11-01", expires_at="2026-11-02"),
    ],
    "login_attempts": [
        dict(id=1, key="user:ann", attempt="t1", failed=True, at="2026-11-05 10:00:00"),
        dict(id=2, key="ip:203.0.113.9", attempt="t1", failed=True, at="2026-11-05 10:00:00"),
        dict(id=3, key="user:hal", attempt="t2", failed=False, at="2026-11-05 10:00:01"),
    ],
    "app_settings": [
        dict(key="secret_key", value="ab" * 32), dict(key="login_limit", value="5"),
        dict(key="login_window", value="60.0"),
    ],
}
DEFAULTS = {
    "users": dict(password_hash=None, created_at="2026-11-01"),
    "tasks": dict(created_at="2026-11-04"),
    "assignments": dict(assigned_at="2026-11-04", opened_at=None, done_at=None, released_at=None,
                        release_reason=None),
    "labels": dict(response=None, ranking=None, likert=None, flags=None, comment=None, skip_reason=None,
                   seconds_spent=None, created_at="2026-11-05"),
}
BAD_ROWS = {  # each breaks one constraint the tables had at 0002
    "users username unique": "INSERT INTO users (username, password_hash, role, held_out, active, created_at) "
                             "VALUES ('ann', 'x', 'labeler', false, true, '2026-11-01')",
    "users role check": "INSERT INTO users (username, password_hash, role, held_out, active, created_at) "
                        "VALUES ('eve', 'x', 'root', false, true, '2026-11-01')",
    "tasks kind check": "INSERT INTO tasks (kind, prompt_id, prompt, meta, content_hash, target_labels, slots_left, "
                        "batch, created_at) VALUES ('poem', 'q', 'q', '{}', 'q', 1, 1, '', '2026-11-01')",
    "tasks content_hash unique": "INSERT INTO tasks (kind, prompt_id, prompt, meta, content_hash, target_labels, "
                                 "slots_left, batch, created_at) SELECT kind, 'q', prompt, meta, content_hash, 1, 1, "
                                 "'', created_at FROM tasks WHERE id = 1",
    "assignments task/user unique": "INSERT INTO assignments (task_id, user_id, status, assigned_at, took_slot) "
                                    "VALUES (1, 2, 'pending', '2026-11-01', true)",
    "assignments status check": "INSERT INTO assignments (task_id, user_id, status, assigned_at, took_slot) "
                                "VALUES (5, 2, 'lost', '2026-11-01', true)",
    "assignments task foreign key": "INSERT INTO assignments (task_id, user_id, status, assigned_at, took_slot) "
                                    "VALUES (99, 2, 'pending', '2026-11-01', true)",
    "assignments user foreign key": "INSERT INTO assignments (task_id, user_id, status, assigned_at, took_slot) "
                                    "VALUES (5, 99, 'pending', '2026-11-01', true)",
    "labels assignment foreign key": "INSERT INTO labels (request_id, assignment_id, kind, created_at) "
                                     "VALUES ('r-9', 99, 'skip', '2026-11-01')",
    "labels request_id unique": "INSERT INTO labels (request_id, assignment_id, kind, created_at) "
                                "VALUES ('r-1', 7, 'skip', '2026-11-01')",
    "labels assignment unique": "INSERT INTO labels (request_id, assignment_id, kind, created_at) "
                                "VALUES ('r-9', 1, 'skip', '2026-11-01')",
    "labels kind check": "INSERT INTO labels (request_id, assignment_id, kind, created_at) "
                         "VALUES ('r-9', 7, 'essay', '2026-11-01')",
    "web_sessions user foreign key": "INSERT INTO web_sessions (id, user_id, csrf_token, created_at, expires_at) "
                                     "VALUES ('s9', 99, 'c', '2026-11-01', '2026-11-02')",
    "invites role check": "INSERT INTO invites (token_hash, role, held_out, created_at, expires_at) "
                          "VALUES ('h9', 'owner', false, '2026-11-01', '2026-11-02')",
    "invites creator foreign key": "INSERT INTO invites (token_hash, role, held_out, created_by, created_at, "
                                   "expires_at) VALUES ('h9', 'labeler', false, 99, '2026-11-01', '2026-11-02')",
    "app_settings key unique": "INSERT INTO app_settings (key, value) VALUES ('secret_key', 'x')",
}
CASCADES = (  # (statement, table, rows it must leave): ON DELETE actions survive the migration
    ("DELETE FROM tasks WHERE id = 3", "assignments", 7),   # assignments 5 and 6 go with task 3 ...
    ("DELETE FROM users WHERE id = 4", "assignments", 5),   # ... and 3 and 9 with user 4
    ("DELETE FROM assignments WHERE id = 1", "labels", 2),  # labels 1 and 4 are gone by now
    ("DELETE FROM users WHERE id = 1", "invites", 3),       # invites are kept, their creator set to NULL
)


def _populate(engine) -> None:
    """Insert ROWS with plain SQL, as the 0002 tables take them."""
    with engine.begin() as conn:
        for table, rows in ROWS.items():
            for row in rows:
                row = {**DEFAULTS.get(table, {}), "content_hash": f"hash-{row.get('prompt_id')}", **row} \
                    if table == "tasks" else {**DEFAULTS.get(table, {}), **row}
                if table == "users":
                    row["password_hash"] = password_hash()
                names = ", ".join(f'"{k}"' for k in row)
                conn.execute(sa.text(f"INSERT INTO {table} ({names}) VALUES ({', '.join(':' + k for k in row)})"),
                             row)
        if conn.dialect.name == "postgresql":  # the ids were given: move the sequences past them
            for table in ("users", "invites", "tasks", "assignments", "labels", "login_attempts"):
                conn.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                     f"(SELECT max(id) FROM {table}))")


def _rows(conn) -> dict[str, list[tuple]]:
    """Every row of every table but alembic_version, by primary key, values as text."""
    tables = [t for t in sa.inspect(conn).get_table_names() if t != "alembic_version"]
    return {t: [tuple(map(str, r)) for r in conn.exec_driver_sql(f"SELECT * FROM {t} ORDER BY 1")]
            for t in sorted(tables)}


def _schema(conn) -> dict[str, dict]:
    """Each table's columns, keys and constraints as the database reports them (indexes apart)."""
    insp = sa.inspect(conn)
    out = {}
    for t in sorted(insp.get_table_names()):
        out[t] = {"columns": [(c["name"], str(c["type"]), c["nullable"], c.get("default")) for c in insp.get_columns(t)],
                  "pk": insp.get_pk_constraint(t), "fks": insp.get_foreign_keys(t),
                  "uniques": insp.get_unique_constraints(t), "checks": insp.get_check_constraints(t)}
        if conn.dialect.name == "sqlite":  # the table's own DDL: batch mode would write a new one
            out[t]["fk_list"] = conn.exec_driver_sql(f"PRAGMA foreign_key_list({t})").all()
            out[t]["sql"] = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = ?", (t,)).scalar()
    return out


def _indexes(conn) -> set[str]:
    """Names of every index (expression indexes included, which SQLite's reflection skips)."""
    if conn.dialect.name == "sqlite":
        return set(conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
                   .scalars())
    return set(conn.exec_driver_sql("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'").scalars())


def _snapshot(engine) -> tuple[dict, dict, set]:
    with engine.connect() as conn:
        return _rows(conn), _schema(conn), _indexes(conn)


def _check_constraints_hold(engine) -> None:
    """Every BAD_ROWS insert is refused and every CASCADES delete acts as declared (then all is rolled back)."""
    for name, sql in BAD_ROWS.items():
        with engine.connect() as conn:
            with pytest.raises(sa.exc.IntegrityError), conn.begin():
                conn.exec_driver_sql(sql)
            assert name  # (named in the traceback when the insert went through)
    with engine.connect() as conn, conn.begin() as tx:
        if conn.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
        for sql, table, left in CASCADES:
            conn.exec_driver_sql(sql)
            assert conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar() == left, sql
        assert conn.exec_driver_sql("SELECT count(*) FROM invites WHERE created_by IS NULL").scalar() == 3
        tx.rollback()


def test_a_populated_0002_database_upgrades_serves_and_goes_back_down(db_url, make_app, tmp_path, capsys):
    from instructgpt.labeling.cli import main
    from instructgpt.labeling.export import export_dir
    from instructgpt.labeling.store import Store, current_revision, downgrade, upgrade

    store = Store(db_url)
    upgrade(store.engine, OLD)
    _populate(store.engine)
    rows, schema, indexes = _snapshot(store.engine)
    _check_constraints_hold(store.engine)

    assert main(["migrate", "--db", db_url]) == 0
    assert current_revision(store.engine) == "0004" and "at revision 0004" in capsys.readouterr().out
    now_rows, now_schema, now_indexes = _snapshot(store.engine)
    assert now_rows == rows
    assert now_schema == schema
    assert now_indexes == indexes | {"ix_tasks_claim", "ix_tasks_held_out"}
    _check_constraints_hold(store.engine)

    downgrade(store.engine, OLD)
    assert current_revision(store.engine) == OLD
    assert _snapshot(store.engine) == (rows, schema, indexes)

    client = make_app(db_url)   # serve upgrades again on start
    assert current_revision(store.engine) == "0004"
    assert login(client, "ann", PASSWORD).status_code == 303
    api = {"X-CSRF-Token": csrf(client)}
    r = client.post("/api/claim", json={"n": 5}, headers=api)
    assert r.status_code == 200 and len(r.json()["assignment_ids"]) == 1   # p5: the only task ann never had
    (aid,) = r.json()["assignment_ids"]
    view = client.get(f"/api/assignments/{aid}").json()
    assert client.post(f"/api/assignments/{aid}/label", headers=api, json={
        "kind": "rank", "request_id": view["request_id"], "ranking": [[0], [1], [2], [3]],
        "likert": [7, 6, 5, 4], "flags": [[], [], [], []]}).status_code == 201
    manifest = export_dir(store, tmp_path / "export")
    lines = {name: (tmp_path / "export" / name).read_text(encoding="utf-8").splitlines()
             for name in ("rankings.jsonl", "eval/rankings.jsonl", "demonstrations_valid.jsonl", "skips.jsonl")
             if (tmp_path / "export" / name).exists()}
    assert [json.loads(x)["prompt_id"] for x in lines["rankings.jsonl"]] == ["p1", "p5"]
    assert [json.loads(x)["labeler_id"] for x in lines["eval/rankings.jsonl"]] == ["hal"]
    assert [json.loads(x)["response"] for x in lines["demonstrations_valid.jsonl"]] == [NASTY[2]]
    assert [json.loads(x)["reason"] for x in lines["skips.jsonl"]] == ["not my language"]
    assert manifest["batches"] == {"round1": 3, "round2": 2}   # the four labels of 0002 and the new one
    store.dispose()


@pytest.mark.parametrize("revision", ["0001", OLD])
def test_serve_without_migrating_refuses_a_database_at_an_older_revision(sqlite_url, revision, make_app, capsys,
                                                                          monkeypatch):
    """--no-migrate on a database an upgrade left behind started the app: at 0001 every login was a 500
    (no login_attempts table), at 0002 every claim sorted all tasks (no claim-order index)."""
    import uvicorn

    from instructgpt.labeling.cli import main
    from instructgpt.labeling.store import SchemaError, Store, current_revision, upgrade

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append(1))
    store = Store(sqlite_url)
    upgrade(store.engine, revision)
    assert main(["serve", "--db", sqlite_url, "--no-migrate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"instructgpt label: error: database {sqlite_url}: the database is at revision "
                          f"{revision}, this instructgpt needs 0004: run instructgpt label migrate"), err
    assert not started and current_revision(store.engine) == revision
    with pytest.raises(SchemaError, match=f"at revision {revision}, this instructgpt needs 0004"):
        make_app(sqlite_url, migrate=False)   # a --workers process checks too
    store.dispose()


def test_serve_without_migrating_names_a_revision_it_does_not_know(sqlite_url, capsys, monkeypatch):
    """A database a newer release upgraded (its revision is not among this release's migrations)."""
    import uvicorn

    from instructgpt.labeling.cli import main
    from instructgpt.labeling.store import Store, upgrade

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    store = Store(sqlite_url)
    upgrade(store.engine)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0099'")
    store.dispose()
    assert main(["serve", "--db", sqlite_url, "--no-migrate"]) == 2
    err = capsys.readouterr().err
    assert "the database is at revision 0099, which this instructgpt does not know (its newest is 0004)" in err, err


def test_serve_says_when_it_upgrades_the_database(sqlite_url, capsys, monkeypatch):
    """serve upgraded a database without a word: the team did not learn the revision its data was at
    (the one to go back to with alembic downgrade, as docs/labeling.md shows)."""
    import uvicorn

    from instructgpt.labeling.cli import main
    from instructgpt.labeling.store import Store, current_revision, upgrade

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    store = Store(sqlite_url)
    upgrade(store.engine, OLD)
    assert main(["serve", "--db", sqlite_url, "--insecure-cookies"]) == 0
    assert f"database {sqlite_url}: upgraded from revision {OLD} to 0004" in capsys.readouterr().err
    assert current_revision(store.engine) == "0004"
    assert main(["serve", "--db", sqlite_url, "--insecure-cookies"]) == 0
    assert "upgraded" not in capsys.readouterr().err   # at the newest revision already
    fresh = sqlite_url.replace("labels.db", "new.db")
    assert main(["serve", "--db", fresh, "--insecure-cookies"]) == 0
    assert f"database {fresh}: created at revision 0004" in capsys.readouterr().err
    store.dispose()


@pytest.mark.parametrize("start", [None, OLD])
def test_servers_starting_at_once_migrate_once_on_postgresql(postgres_server, start):
    """Each serve migrates on start: on PostgreSQL every process read the revision before the first one's
    upgrade committed and ran the same migrations, and all but one failed (on a new database on the
    alembic_version table, at 0002 on ix_tasks_claim: IntegrityError, already exists)."""
    import threading

    from alembic import command

    from instructgpt.labeling.store import (Store, alembic_config, current_revision, migration_connection,
                                            upgrade)

    from .conftest import _fresh_pg_database
    from .test_hardening import _wait_for_a_lock_wait

    store = Store(_fresh_pg_database(postgres_server))
    if start:
        upgrade(store.engine, start)
    outcome = []

    def second():
        try:
            upgrade(store.engine)
            outcome.append("ok")
        except Exception as e:  # noqa: BLE001 - checked below
            outcome.append(e)

    thread = threading.Thread(target=second)
    with migration_connection(store.engine) as conn:   # the first server's upgrade, not committed yet
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
        thread.start()
        _wait_for_a_lock_wait(store)
    thread.join(60)
    assert outcome == ["ok"]
    assert current_revision(store.engine) == "0004"
    store.dispose()


def test_migrate_to_an_older_revision_says_it_does_not_go_down_and_downgrade_does(sqlite_url, capsys):
    """label migrate --revision 0002 on a database at 0004 did nothing and said 'at revision 0004' with exit 0,
    as if the database had gone back."""
    from instructgpt.labeling.cli import main
    from instructgpt.labeling.store import Store, current_revision

    assert main(["migrate", "--db", sqlite_url]) == 0
    capsys.readouterr()
    assert main(["migrate", "--db", sqlite_url, "--revision", OLD]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"instructgpt label: error: database {sqlite_url}: at revision 0004, newer than {OLD}: "
                          f"migrate only upgrades; to go back to {OLD}, add --downgrade"), err
    store = Store(sqlite_url)
    assert current_revision(store.engine) == "0004"
    assert main(["migrate", "--db", sqlite_url, "--revision", OLD, "--downgrade"]) == 0
    assert capsys.readouterr().out == f"{sqlite_url}: at revision {OLD} (was 0004)\n"
    assert current_revision(store.engine) == OLD
    assert main(["migrate", "--db", sqlite_url, "--downgrade"]) == 2   # down to head: a slip
    assert "--downgrade needs --revision" in capsys.readouterr().err
    assert main(["migrate", "--db", sqlite_url]) == 0
    assert capsys.readouterr().out == f"{sqlite_url}: at revision 0004 (was {OLD})\n"
    store.dispose()


@pytest.mark.parametrize("command", [["serve", "--insecure-cookies"], ["migrate"]])
def test_serve_and_migrate_name_a_revision_a_newer_release_made(sqlite_url, command, capsys, monkeypatch):
    """Going back to an older release without downgrading: serve and migrate said only "Can't locate
    revision identified by '0099'"."""
    import uvicorn

    from instructgpt.labeling.cli import main
    from instructgpt.labeling.store import Store, upgrade

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append(1))
    store = Store(sqlite_url)
    upgrade(store.engine)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0099'")
    store.dispose()
    assert main([command[0], "--db", sqlite_url, *command[1:]]) == 2
    err = capsys.readouterr().err
    assert f"database {sqlite_url}: the database is at revision 0099, which this instructgpt does not know " \
           "(its newest is 0004): a newer release upgraded it; downgrade it with that release" in err, err
    assert not started
