"""Hardening: invite tokens before hashing, one password maximum, expired and racing submissions,
odd upload names, admin role before the body, case-insensitive user names."""

from __future__ import annotations

import re
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from instructgpt.labeling import accounts, web
from instructgpt.labeling.labels import Submission, new_request_id, submit_label
from instructgpt.labeling.security import AuthError, check_password_strength
from instructgpt.labeling.store import open_store
from instructgpt.labeling.tables import (
    Assignment,
    Label,
    LoginAttempt,
    Task,
    User,
    utcnow,
)
from instructgpt.labeling.tasks import (
    ClaimPolicy,
    Conflict,
    _release,
    claim_tasks,
    import_file,
)

from .helpers import (
    PASSWORD,
    add_user,
    csrf,
    form_value,
    login,
    password_hash,
    write_rank_tasks,
)

RELEASED = ("this task was released (its claim expired, or an admin released it) and may "
            "now be someone else's; get new tasks from My tasks")
TOO_LONG = "x" * 1001
TOO_LONG_MESSAGE = "passwords have at most 1000 characters (this one has 1001)"


def error_text(html: str) -> list[str]:
    return re.findall(r'class="error"[^>]*>([^<]*)', html)


def invite_post(client, path: str, username: str, password: str, token: str | None = None):
    token = token or form_value(client.get("/login").text, "csrf_token")  # any pre-login form's token
    return client.post(path, data={"csrf_token": token, "username": username,
                                   "password": password, "password2": password})


# ---------------------------------------------------------------- invites

def test_wrong_invite_tokens_cost_no_hashing_and_are_rate_limited(sqlite_url, make_app, monkeypatch):
    store = open_store(sqlite_url)
    client = make_app(sqlite_url)
    hashed = []
    real = accounts.hash_password
    monkeypatch.setattr(accounts, "hash_password", lambda pw: hashed.append(1) or real(pw))
    codes = [invite_post(client, "/invite/not-a-real-token", f"user{i}", "a long password").status_code
             for i in range(8)]
    assert codes == [404] * 5 + [429] * 3 and hashed == []
    # a real invite from the same address waits out the window too
    token = accounts.create_invite(store)
    r = invite_post(client, f"/invite/{token}", "newbie", "a long password")
    assert r.status_code == 429 and r.headers["retry-after"] == "60" and hashed == []
    client.app.state.limiter.reset("ip:testclient")
    r = invite_post(client, f"/invite/{token}", "newbie", "a long password")
    assert r.status_code == 303 and hashed == [1]
    with store.tx() as s:  # a success leaves nothing counted
        assert s.scalar(select(func.count()).select_from(LoginAttempt)) == 0
    store.dispose()


def test_accept_invite_checks_the_token_before_hashing(sqlite_store, monkeypatch):
    monkeypatch.setattr(accounts, "hash_password", lambda pw: pytest.fail("hashed for a wrong token"))
    with pytest.raises(AuthError, match="^this invite link is invalid, used or expired$"):
        accounts.accept_invite(sqlite_store, "nope", "newbie", "a long password")


# ---------------------------------------------------------------- password length

def test_one_password_maximum_everywhere(sqlite_url, make_app):
    check_password_strength("x" * 1000)
    with pytest.raises(AuthError) as e:
        check_password_strength(TOO_LONG)
    assert str(e.value) == TOO_LONG_MESSAGE
    store = open_store(sqlite_url)
    with pytest.raises(AuthError, match=re.escape(TOO_LONG_MESSAGE)):
        accounts.create_user(store, "longpw", TOO_LONG)
    add_user(store, "ann")
    with pytest.raises(AuthError, match=re.escape(TOO_LONG_MESSAGE)):
        accounts.set_password(store, "ann", TOO_LONG)
    client = make_app(sqlite_url)
    # login refuses it with the same message, checks nothing and counts nothing
    r = login(client, "ann", TOO_LONG)
    assert r.status_code == 400 and error_text(r.text) == [TOO_LONG_MESSAGE]
    with store.tx() as s:
        assert s.scalar(select(func.count()).select_from(LoginAttempt)) == 0
    token = accounts.create_invite(store)
    r = invite_post(client, f"/invite/{token}", "longpw", TOO_LONG)
    assert r.status_code == 400 and error_text(r.text) == [TOO_LONG_MESSAGE]
    # exactly 1000 characters work from the invite to the login
    r = invite_post(client, f"/invite/{token}", "longpw", "y" * 1000)
    assert r.status_code == 303
    other = make_app(sqlite_url)
    assert login(other, "longpw", "y" * 1000).status_code == 303
    assert login(make_app(sqlite_url), "longpw", "y" * 999).status_code == 401
    store.dispose()


# ---------------------------------------------------------------- expired claims

def test_a_label_on_an_expired_claim_is_refused_and_releases_it(sqlite_url, make_app, tmp_path):
    store = open_store(sqlite_url)
    add_user(store, "ann")
    import_file(store, "rank", write_rank_tasks(tmp_path / "t.jsonl", 1))
    client = make_app(sqlite_url, claim_lease_hours=1.0)
    assert login(client, "ann").status_code == 303
    tok = csrf(client)
    (aid,) = client.post("/api/claim", json={"n": 1}, headers={"X-CSRF-Token": tok}).json()["assignment_ids"]
    with store.tx() as s:  # claimed 2 hours ago; no sweep has run since
        a = s.get(Assignment, aid)
        a.assigned_at = a.assigned_at - timedelta(hours=2)
    r = client.post(f"/api/assignments/{aid}/label", headers={"X-CSRF-Token": tok},
                    json={"kind": "rank", "request_id": new_request_id(), "ranking": [[0], [1], [2], [3]],
                          "likert": [1, 2, 3, 4]})
    assert (r.status_code, r.json()) == (409, {"detail": RELEASED})
    with store.tx() as s:
        a = s.get(Assignment, aid)
        assert (a.status, a.release_reason) == ("released", "expired")
        assert s.scalar(select(Task.slots_left)) == 1
        assert s.scalar(select(func.count()).select_from(Label)) == 0
    store.dispose()


def test_submit_label_honours_the_lease_it_is_given(sqlite_store, tmp_path):
    ann = add_user(sqlite_store, "ann")
    import_file(sqlite_store, "rank", write_rank_tasks(tmp_path / "t.jsonl", 2))
    a1, a2 = claim_tasks(sqlite_store, ann.id, 2)
    later = utcnow() + timedelta(minutes=30)
    skip = Submission("skip", new_request_id(), skip_reason="Other")
    submit_label(sqlite_store, ann.id, a1, skip, ClaimPolicy(lease=timedelta(hours=1)), now=later)
    skip = Submission("skip", new_request_id(), skip_reason="Other")
    with pytest.raises(Conflict, match="was released"):
        submit_label(sqlite_store, ann.id, a2, skip, ClaimPolicy(lease=timedelta(minutes=30)), now=later)


# ---------------------------------------------------------------- submit vs release (PostgreSQL)

@pytest.fixture
def pg_store(postgres_server):
    from .conftest import _fresh_pg_database

    s = open_store(_fresh_pg_database(postgres_server))
    yield s
    s.dispose()


def test_a_submission_racing_a_release_loses_cleanly_on_postgresql(pg_store, tmp_path):
    ann = add_user(pg_store, "ann")
    import_file(pg_store, "rank", write_rank_tasks(tmp_path / "t.jsonl", 1))
    (aid,) = claim_tasks(pg_store, ann.id, 1)
    releaser = Session(pg_store.engine)
    releaser.begin()
    assert _release(releaser, [aid], "admin", utcnow()) == 1  # uncommitted: the row is locked
    outcome = []

    def submit():
        try:
            outcome.append(submit_label(pg_store, ann.id, aid, Submission(
                "rank", new_request_id(), ranking=[[0], [1], [2], [3]], likert=[1, 2, 3, 4])))
        except Exception as e:  # noqa: BLE001 - checked below
            outcome.append(e)

    thread = threading.Thread(target=submit)
    thread.start()
    time.sleep(1.0)  # the submission reaches the locked row
    releaser.commit()
    releaser.close()
    thread.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], Conflict) and str(outcome[0]) == RELEASED
    with pg_store.tx() as s:
        assert s.get(Assignment, aid).status == "released"
        assert s.scalar(select(Task.slots_left)) == 1
        assert s.scalar(select(func.count()).select_from(Label)) == 0


def _wait_for_a_lock_wait(store) -> None:
    """Return once some backend of ``store``'s database waits for a lock (the racing statement got there)."""
    for _ in range(600):
        with store.engine.connect() as conn:
            if conn.exec_driver_sql("SELECT count(*) FROM pg_locks WHERE NOT granted").scalar():
                return
        time.sleep(0.05)
    raise AssertionError("no statement came to wait for the lock")


def test_servers_starting_at_once_agree_on_one_secret_key_on_postgresql(pg_store):
    """server_key read the key and inserted one when there was none: of several processes starting on a new
    database, every one that read before the first committed failed on the primary key (IntegrityError)."""
    from instructgpt.labeling.security import server_key

    first = Session(pg_store.engine)
    first.begin()
    key = server_key(first)   # uncommitted: the others do not see it yet
    outcome = []

    def start():
        try:
            with pg_store.tx() as s:
                outcome.append(server_key(s))
        except Exception as e:  # noqa: BLE001 - checked below
            outcome.append(e)

    thread = threading.Thread(target=start)
    thread.start()
    _wait_for_a_lock_wait(pg_store)   # its insert waits on the first one's row
    first.commit()
    first.close()
    thread.join(30)
    assert outcome == [key]
    with pg_store.tx() as s:
        assert server_key(s) == key


# ---------------------------------------------------------------- uploads

@pytest.fixture
def admin_and_labeler(sqlite_url, make_app):
    store = open_store(sqlite_url)
    add_user(store, "root", role="admin")
    add_user(store, "ann")
    clients = {}
    for name in ("root", "ann"):
        clients[name] = make_app(sqlite_url)
        assert login(clients[name], name).status_code == 303
    yield store, clients
    store.dispose()


@pytest.mark.parametrize("name", ["..", ".", "../..", "/"])
def test_an_upload_named_dot_dot_is_imported(admin_and_labeler, name):
    store, c = admin_and_labeler
    good = b'{"prompt": "p", "responses": ["a", "b", "c", "d"]}\n'
    r = c["root"].post("/admin/import", data={"csrf_token": csrf(c["root"]), "kind": "rank"},
                       files={"file": (name, good)})
    assert r.status_code == 200
    assert re.findall(r'class="notice"[^>]*>([^<]*)', r.text) == [
        "rank: read 1, added 1 tasks (0 with overlap), 0 already imported"]
    with store.tx() as s:
        assert s.scalars(select(Task.batch)).all() == ["upload.jsonl"]


def test_an_upload_error_names_the_uploaded_file_not_the_temporary_one(admin_and_labeler):
    _, c = admin_and_labeler
    r = c["root"].post("/admin/import", data={"csrf_token": csrf(c["root"]), "kind": "rank"},
                       files={"file": ("../my tasks.jsonl", b'{"prompt": "p", "responses": ["a"]}\n')})
    assert r.status_code == 400
    (err,) = error_text(r.text)
    assert err.startswith("Import failed: mytasks.jsonl:1: responses: K=1") and "/tmp" not in err


def test_a_labelers_upload_is_refused_before_its_body_is_read(admin_and_labeler, monkeypatch):
    _, c = admin_and_labeler
    parsed = []
    real = web.read_form

    async def spy(request):
        form = await real(request)
        parsed.append(len(await form["file"].read()))
        await form["file"].seek(0)
        return form

    monkeypatch.setattr(web, "read_form", spy)
    body = b"x" * (2 * 1024 * 1024)
    r = c["ann"].post("/admin/import", data={"csrf_token": csrf(c["ann"]), "kind": "rank"},
                      files={"file": ("x.jsonl", body)})
    assert r.status_code == 403 and parsed == []
    r = c["root"].post("/admin/import", data={"csrf_token": csrf(c["root"]), "kind": "rank"},
                       files={"file": ("x.jsonl", body)})
    assert r.status_code == 400 and parsed == [len(body)]  # the admin's upload is read (and refused as JSONL)


# ---------------------------------------------------------------- user names

def test_user_names_are_unique_regardless_of_case(sqlite_url, make_app):
    store = open_store(sqlite_url)
    add_user(store, "alice")
    with pytest.raises(AuthError) as e:
        accounts.create_user(store, "Alice", PASSWORD, password_hash=password_hash())
    assert str(e.value) == ("the username 'Alice' is taken (as 'alice': names differing only in upper/lower "
                            "case are the same name)")
    with pytest.raises(AuthError, match="^the username 'alice' is taken$"):
        accounts.create_user(store, "alice", PASSWORD, password_hash=password_hash())
    token = accounts.create_invite(store)
    client = make_app(sqlite_url)
    r = invite_post(client, f"/invite/{token}", "ALICE", "a long password")
    taken = ("the username &#39;ALICE&#39; is taken (as &#39;alice&#39;: names differing only in upper/lower "
             "case are the same name)")
    assert r.status_code == 400 and error_text(r.text) == [taken]
    assert accounts.invite_is_open(store, token)  # not used up
    # accounts that already differ only by case keep logging in under their own names
    with store.tx() as s:
        s.add(User(username="Carol", password_hash=password_hash(), role="labeler"))
        s.add(User(username="carol", password_hash=password_hash(), role="labeler"))
    for name in ("Carol", "carol", "alice"):
        c = make_app(sqlite_url)
        assert login(c, name).status_code == 303
        assert c.get("/api/me").json()["username"] == name
    store.dispose()
