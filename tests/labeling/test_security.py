"""Security: ownership, admin-only routes, escaping, CSRF, SQL metacharacters, rate limits, cookies."""

from __future__ import annotations

import re
import zipfile
from io import BytesIO

import pytest
from markupsafe import escape
from sqlalchemy import select

from instructgpt.labeling.store import open_store
from instructgpt.labeling.tables import Label, Task
from instructgpt.labeling.tasks import claim_tasks, import_file

from .helpers import (
    NASTY,
    PASSWORD,
    add_user,
    csrf,
    form_value,
    login,
    write_rank_tasks,
)

XSS_PROMPT = "Summarise: <script>alert(1)</script> and \"'><img src=x onerror=alert(1)>"


@pytest.fixture
def site(sqlite_url, tmp_path, make_app):
    """An app with an admin, two labelers (one assignment each) and an anonymous client."""
    store = open_store(sqlite_url)
    admin = add_user(store, "root", role="admin")
    ann, bob = add_user(store, "ann"), add_user(store, "bob")
    tasks = tmp_path / "t.jsonl"
    write_rank_tasks(tasks, 2, prompt=XSS_PROMPT)
    import_file(store, "rank", tasks)
    (a_ann,) = claim_tasks(store, ann.id, 1)
    (a_bob,) = claim_tasks(store, bob.id, 1)
    clients = {}
    for name in ("root", "ann", "bob"):
        clients[name] = make_app(sqlite_url)
        assert login(clients[name], name).status_code == 303
    clients["anon"] = make_app(sqlite_url)
    yield {"store": store, "c": clients, "a_ann": a_ann, "a_bob": a_bob, "admin": admin, "ann": ann}
    store.dispose()


def rank_form(client, assignment_id: int, **extra) -> dict:
    page = client.get(f"/a/{assignment_id}")
    assert page.status_code == 200
    data = {"csrf_token": form_value(page.text, "csrf_token"), "request_id": form_value(page.text, "request_id"),
            "kind": "rank", "k": "4", "comment": ""}
    for p in range(4):
        data[f"rank_{p}"], data[f"likert_{p}"] = str(p + 1), "4"
    data.update(extra)
    return data


def test_labeler_cannot_read_or_submit_anothers_assignment(site):
    ann = site["c"]["ann"]
    theirs = site["a_bob"]
    assert ann.get(f"/a/{theirs}").status_code == 403
    assert ann.get(f"/a/{theirs}/saved").status_code == 403
    assert ann.get(f"/api/assignments/{theirs}").status_code == 403
    form = rank_form(ann, site["a_ann"])
    assert ann.post(f"/a/{theirs}", data=form).status_code == 403
    assert ann.post(f"/a/{theirs}/skip", data={**form, "reason": "Other"}).status_code == 403
    r = ann.post(f"/api/assignments/{theirs}/label", headers={"X-CSRF-Token": csrf(ann)},
                 json={"kind": "skip", "request_id": form["request_id"], "skip_reason": "x"})
    assert r.status_code == 403
    assert [a["id"] for a in ann.get("/api/assignments").json()["assignments"]] == [site["a_ann"]]
    assert f"/a/{theirs}" not in ann.get("/").text
    with site["store"].tx() as s:
        assert s.scalar(select(Label)) is None


def test_admin_routes_need_the_admin_role(site):
    ann, root, anon = site["c"]["ann"], site["c"]["root"], site["c"]["anon"]
    token = csrf(ann)
    for method, path in [("get", "/admin"), ("get", "/admin/export.zip"), ("post", "/admin/invites"),
                         ("post", "/admin/users"), ("post", f"/admin/users/{site['ann'].id}"),
                         ("post", "/admin/import"), ("post", "/admin/lockouts")]:
        kw = {"data": {"csrf_token": token, "action": "held_out_on", "username": "evil", "password": "x" * 10}} \
            if method == "post" else {}
        assert getattr(ann, method)(path, **kw).status_code == 403, path
        anon_r = getattr(anon, method)(path, **({"data": {}} if method == "post" else {}), follow_redirects=False)
        assert anon_r.status_code == 303 and anon_r.headers["location"] == "/login", path
    assert root.get("/admin").status_code == 200
    download = root.get("/admin/export.zip")
    assert download.headers["content-type"] == "application/zip"
    assert "manifest.json" in zipfile.ZipFile(BytesIO(download.content)).namelist()  # streamed from a file
    assert anon.get("/api/me").status_code == 401


def test_untrusted_text_renders_inert(site):
    ann = site["c"]["ann"]
    page = ann.get(f"/a/{site['a_ann']}").text
    assert "<script>alert(1)" not in page and "<img src=x" not in page
    assert str(escape(XSS_PROMPT)) in page
    # the only scripts are our own file; no inline script or handler attribute exists
    assert re.findall(r"<script[^>]*>", page) == ['<script src="/static/app.js" defer>']
    assert "onerror=" not in page.replace("onerror=alert(1)&gt;", "")
    csp = ann.get("/").headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    # the admin page shows labels' free text (skip reasons): escaped too
    form = rank_form(ann, site["a_ann"])
    ann.post(f"/a/{site['a_ann']}/skip", data={**form, "reason": "Other", "details": XSS_PROMPT})
    admin_page = site["c"]["root"].get("/admin").text
    assert "<script>alert(1)" not in admin_page and str(escape(XSS_PROMPT)) in admin_page


def test_every_post_route_refuses_a_missing_or_wrong_csrf_token(site):
    root = site["c"]["root"]
    from instructgpt.labeling.app import ROUTERS

    posts = sorted({r.path for router in ROUTERS for r in router.routes if "POST" in r.methods})
    assert len(posts) >= 10
    for path in posts:
        url = path.replace("{assignment_id}", str(site["a_ann"])).replace("{user_id}", str(site["ann"].id)) \
                  .replace("{token}", "x")
        for bad in ({}, {"csrf_token": "wrong"}):
            r = root.post(url, data={"username": "x", "password": "y", **bad}, follow_redirects=False)
            assert r.status_code == 403, (url, bad, r.status_code)
        if url.startswith("/api/"):
            r = root.post(url, json={"n": 1}, headers={"X-CSRF-Token": "wrong"})
            assert r.status_code == 403, url
    ann = site["c"]["ann"]
    form = rank_form(ann, site["a_ann"])
    del form["csrf_token"]
    assert ann.post(f"/a/{site['a_ann']}", data=form).status_code == 403
    with site["store"].tx() as s:
        assert s.scalar(select(Label)) is None


def test_sql_metacharacters_in_every_form_field_are_stored_verbatim(site, tmp_path):
    root, ann = site["c"]["root"], site["c"]["ann"]
    nasty = "\n".join(NASTY)
    upload = tmp_path / "nasty.jsonl"
    write_rank_tasks(upload, 1, prompt=nasty, prefix="'; DROP TABLE tasks; --")
    r = root.post("/admin/import", data={"csrf_token": csrf(root), "kind": "rank", "overlap_fraction": "0"},
                  files={"file": ("x'; DROP TABLE labels; --.jsonl", upload.read_bytes(), "application/json")})
    assert r.status_code == 200 and "added 1 tasks" in r.text
    ids = ann.post("/api/claim", json={"n": 5}, headers={"X-CSRF-Token": csrf(ann)}).json()["assignment_ids"]
    (aid,) = ids
    form = rank_form(ann, aid, comment=nasty, **{"flag_0": "hallucination"})
    r = ann.post(f"/a/{aid}", data=form, follow_redirects=False)
    assert r.status_code == 303
    with site["store"].tx() as s:
        task = s.scalar(select(Task).where(Task.prompt == nasty))
        label = s.scalar(select(Label))
    assert task.prompt_id == "'; DROP TABLE tasks; --0" and task.prompt == nasty
    assert label.comment == nasty
    # skip reason (the skip form) and login fields too
    r = ann.post(f"/a/{site['a_ann']}/skip", data={**rank_form(ann, site["a_ann"]), "reason": NASTY[1],
                                                   "details": NASTY[2]})
    with site["store"].tx() as s:
        assert s.scalar(select(Label.skip_reason).where(Label.kind == "skip")) == f"{NASTY[1]}: {NASTY[2]}"
    anon = site["c"]["anon"]
    r = root.post("/admin/users", data={"csrf_token": csrf(root), "username": "carol", "password": NASTY[0]})
    assert r.status_code == 200 and "Created labeler carol" in r.text
    assert login(anon, "carol", NASTY[0]).status_code == 303  # the password is hashed verbatim
    anon.cookies.clear()
    assert login(anon, "' OR '1'='1", "' OR '1'='1").status_code == 401
    assert login(anon, "ann", "' OR '1'='1' --").status_code == 401


def test_login_rate_limit_per_username_and_per_ip(site):
    anon = site["c"]["anon"]
    codes = [login(anon, "ann", "wrong password").status_code for _ in range(6)]
    assert codes == [401] * 5 + [429]
    r = login(anon, "ann", PASSWORD)  # even the right password waits out the window
    assert r.status_code == 429 and r.headers["retry-after"] == "60"
    # per IP: failures spread over many usernames from one address are limited as well
    other = site["c"]["bob"]
    other.app.state.limiter.reset("ip:testclient")
    codes = [login(anon, f"nobody{i}", "wrong").status_code for i in range(6)]
    assert codes[-1] == 429


def test_failures_from_one_address_never_lock_a_labeler_out_of_a_browser_they_logged_in_with(sqlite_url, make_app):
    store = open_store(sqlite_url)
    add_user(store, "ann")
    store.dispose()
    ann = make_app(sqlite_url, address="10.0.0.2")
    assert login(ann, "ann").status_code == 303  # her browser at address B gets a device cookie
    ann.cookies.delete("igpt_session")
    attacker = make_app(sqlite_url, address="10.0.0.1")
    codes = [login(attacker, "ann", "wrong password").status_code for _ in range(6)]
    assert codes == [401] * 5 + [429]  # brute force from address A is stopped ...
    assert login(attacker, "ann", PASSWORD).status_code == 429  # ... the right password included
    assert [login(attacker, f"nobody{i}", "wrong").status_code for i in range(3)] == [429] * 3  # any name
    assert login(ann, "ann").status_code == 303  # ann, from her browser at B, is not held up
    # a browser that never logged in as ann shares the account's allowance wherever it is: guesses
    # from many addresses stay bounded per account
    elsewhere = make_app(sqlite_url, address="10.0.0.3")
    r = login(elsewhere, "ann", "wrong again")
    assert r.status_code == 429 and "Too many failed logins" in r.text


def test_failures_from_the_labelers_own_address_never_lock_a_labeler_out_of_her_browser(sqlite_url, make_app):
    """An office behind one NAT address: someone there failing logins for any names does not stop ann, in the
    browser she logged in with, while her browser's own guesses stay bounded."""
    store = open_store(sqlite_url)
    add_user(store, "ann")
    store.dispose()
    ann = make_app(sqlite_url, address="10.0.0.9")
    assert login(ann, "ann").status_code == 303
    ann.cookies.delete("igpt_session")
    mallory = make_app(sqlite_url, address="10.0.0.9")
    codes = [login(mallory, name, "wrong password").status_code for name in ("ann", "bob", "x", "y", "z", "ann")]
    assert codes == [401] * 5 + [429]   # the address is blocked for browsers without a device cookie
    assert login(ann, "ann").status_code == 303
    ann.cookies.delete("igpt_session")
    assert [login(ann, "ann", "typo").status_code for _ in range(6)] == [401] * 5 + [429]  # the device's own limit


def test_a_device_cookie_vouches_for_its_user_name_only_and_expires():
    from datetime import timedelta

    from instructgpt.labeling.security import DEVICE_TTL, device_cookie, trusted_device
    from instructgpt.labeling.tables import utcnow

    key, now = b"k" * 32, utcnow()
    cookie = device_cookie(key, "Ann", now)
    device = trusted_device(key, cookie, "ann", now)
    assert device and cookie.startswith(device + ".")
    assert trusted_device(key, cookie, "bob", now) is None           # another user name
    assert trusted_device(b"x" * 32, cookie, "ann", now) is None     # another server's key
    assert trusted_device(key, cookie[:-1] + ("0" if cookie[-1] != "0" else "1"), "ann", now) is None
    assert trusted_device(key, cookie, "ann", now + DEVICE_TTL + timedelta(seconds=1)) is None
    assert trusted_device(key, "garbage", "ann", now) is None and trusted_device(key, None, "ann", now) is None
    assert trusted_device(key, f"{device}.\u00b2.{cookie.rsplit('.', 1)[1]}", "ann", now) is None  # '²': not a 500


def test_session_cookie_flags_and_logout(sqlite_url, make_app):
    store = open_store(sqlite_url)
    add_user(store, "ann")
    store.dispose()
    client = make_app(sqlite_url, secure_cookies=True)
    client.base_url = "https://127.0.0.1"
    r = login(client, "ann")
    cookie = r.headers["set-cookie"]
    assert "igpt_session=" in cookie and "HttpOnly" in cookie and "Secure" in cookie and "SameSite=strict" in cookie
    assert client.get("/api/me").status_code == 200
    assert client.post("/logout", data={"csrf_token": csrf(client)}).status_code in (200, 303)
    assert client.get("/api/me").status_code == 401


def test_invite_flow(site):
    root, anon = site["c"]["root"], site["c"]["anon"]
    page = root.post("/admin/invites", data={"csrf_token": csrf(root), "held_out": "on"})
    link = re.search(r'<code class="invite-link">([^<]+)</code>', page.text).group(1)
    path = "/" + link.split("/", 3)[3]
    form = anon.get(path)
    assert form.status_code == 200
    data = {"csrf_token": form_value(form.text, "csrf_token"), "username": "newbie",
            "password": "a long password", "password2": "a long password"}
    assert anon.post(path, data={**data, "csrf_token": "forged"}).status_code == 403
    r = anon.post(path, data=data, follow_redirects=False)
    assert r.status_code == 303
    me = anon.get("/api/me").json()
    assert me["username"] == "newbie" and me["held_out"] is True and me["role"] == "labeler"
    assert site["c"]["bob"].get(path).status_code == 404  # used up


def test_a_password_reset_ends_every_session(sqlite_url, make_app, monkeypatch, capsys):
    from instructgpt.labeling.cli import main as label_main

    store = open_store(sqlite_url)
    add_user(store, "root", role="admin")
    store.dispose()
    old, other = make_app(sqlite_url), make_app(sqlite_url)
    assert login(old, "root").status_code == 303 and login(other, "root").status_code == 303
    monkeypatch.setenv("INSTRUCTGPT_LABEL_PASSWORD", "a brand new password")
    assert label_main(["create-admin", "--db", sqlite_url, "--username", "root", "--reset-password"]) == 0
    assert "2 session(s) logged out" in capsys.readouterr().out
    for client in (old, other):
        assert client.get("/api/me").status_code == 401
        assert client.get("/admin", follow_redirects=False).headers["location"] == "/login"
    assert login(old, "root").status_code == 401  # the old password is gone
    assert login(old, "root", "a brand new password").status_code == 303


def test_deactivation_ends_sessions_and_reactivation_does_not_revive_them(site):
    root, ann = site["c"]["root"], site["c"]["ann"]
    assert ann.get("/api/me").status_code == 200
    r = root.post(f"/admin/users/{site['ann'].id}", data={"csrf_token": csrf(root), "action": "deactivate"})
    assert r.status_code == 303
    assert ann.get("/api/me").status_code == 401
    root.post(f"/admin/users/{site['ann'].id}", data={"csrf_token": csrf(root), "action": "activate"})
    assert ann.get("/api/me").status_code == 401  # the old cookie stays dead
    ann.cookies.clear()
    assert login(ann, "ann").status_code == 303  # a fresh login works


def test_an_admin_lifts_a_lockout_and_the_labeler_logs_in(sqlite_url, make_app, caplog):
    """ann's first login from a new browser, behind the address an attacker locked: 429 until an admin lifts it."""
    store = open_store(sqlite_url)
    add_user(store, "root", role="admin")
    add_user(store, "ann")
    store.dispose()
    root = make_app(sqlite_url, address="10.0.0.7")
    assert login(root, "root").status_code == 303
    attacker = make_app(sqlite_url, address="10.0.0.1")
    assert [login(attacker, f"guess{i}", "wrong").status_code for i in range(5)] == [401] * 5
    ann = make_app(sqlite_url, address="10.0.0.1")  # a new laptop: no device cookie yet
    assert login(ann, "ann").status_code == 429
    page = root.get("/admin").text
    assert "Login lockouts" in page and "10.0.0.1" in page and "guess0" in page  # the names it tried
    token = form_value(page, "csrf_token")
    with caplog.at_level("INFO", logger="instructgpt.labeling"):
        r = root.post("/admin/lockouts", data={"csrf_token": token, "key": "ip:10.0.0.1"})
    assert r.status_code == 200 and "Lifted the lockout of ip:10.0.0.1 (5 failed logins" in r.text
    assert "ip:10.0.0.1 (5 failed attempts forgotten) by admin root" in caplog.text  # the server's log
    assert "10.0.0.1" not in root.get("/admin").text.split("Login lockouts")[1].split("</table>")[0]
    assert login(ann, "ann").status_code == 303
    # a user name locked by guesses from many addresses: lifted the same way
    for i in range(5):
        assert login(make_app(sqlite_url, address=f"10.1.0.{i}"), "ann", "wrong").status_code == 401
    fresh = make_app(sqlite_url, address="10.2.0.1")
    assert login(fresh, "ann").status_code == 429
    assert "user name <bdi>ann</bdi>" in root.get("/admin").text
    r = root.post("/admin/lockouts", data={"csrf_token": token, "key": "user:ann"})
    assert r.status_code == 200 and "Lifted the lockout of user:ann" in r.text
    assert login(fresh, "ann").status_code == 303
    r = root.post("/admin/lockouts", data={"csrf_token": token, "key": "session:x"})
    assert r.status_code == 400 and "lockout key" in r.text


def test_a_labeler_cannot_lift_a_lockout(sqlite_url, make_app):
    store = open_store(sqlite_url)
    add_user(store, "ann")
    store.dispose()
    ann = make_app(sqlite_url, address="10.0.0.2")
    assert login(ann, "ann").status_code == 303
    attacker = make_app(sqlite_url, address="10.0.0.1")
    assert [login(attacker, f"guess{i}", "wrong").status_code for i in range(6)] == [401] * 5 + [429]
    r = ann.post("/admin/lockouts", data={"csrf_token": csrf(ann), "key": "ip:10.0.0.1"})
    assert r.status_code == 403
    assert attacker.post("/admin/lockouts", data={"key": "ip:10.0.0.1"}).status_code == 303  # to /login
    assert [lock.key for lock in ann.app.state.limiter.lockouts()] == ["ip:10.0.0.1"]
    assert login(attacker, "guess9", "wrong").status_code == 429
