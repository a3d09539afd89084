"""Durability: SIGKILL the server while submissions are in flight; nothing acknowledged is lost."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from sqlalchemy import select

from instructgpt.labeling.store import open_store
from instructgpt.labeling.tables import Label
from instructgpt.labeling.tasks import import_file

from .helpers import PASSWORD, add_user, form_value, write_rank_tasks

pytestmark = pytest.mark.timeout(180)  # bounded even if a server hangs


WORKERS, TASKS_EACH, KILL_AFTER_ACKS, TIME_LIMIT_S = 6, 60, 120, 40.0


def session(base_url: str, name: str) -> tuple[httpx.Client, dict, list[int]]:
    c = httpx.Client(base_url=base_url, timeout=10.0)
    page = c.get("/login")
    assert c.post("/login", data={"username": name, "password": PASSWORD,
                                  "csrf_token": form_value(page.text, "csrf_token")}).status_code == 303
    headers = {"X-CSRF-Token": c.get("/api/me").json()["csrf_token"]}
    ids = c.post("/api/claim", json={"n": TASKS_EACH}, headers=headers).json()["assignment_ids"]
    return c, headers, ids


def submit_until_down(c: httpx.Client, headers: dict, ids: list[int], acked: list[str], sent: list[str],
                      bodies: dict, stop: threading.Event) -> None:
    """Submit labels until the server dies (or the time limit); record every 2xx."""
    deadline = time.monotonic() + TIME_LIMIT_S
    for aid in ids:
        if stop.is_set() or time.monotonic() > deadline:
            return
        try:
            rid = c.get(f"/api/assignments/{aid}").json()["request_id"]
            body = {"kind": "rank", "request_id": rid, "ranking": [[1], [0], [2, 3]], "likert": [3, 6, 2, 2],
                    "flags": [[], [], [], ["violent"]]}
            sent.append(rid)
            r = c.post(f"/api/assignments/{aid}/label", json=body, headers=headers)
        except httpx.HTTPError:
            return  # the server is gone
        if 200 <= r.status_code < 300:
            acked.append(rid)
            bodies[rid] = (aid, body)


def test_sigkill_loses_no_acknowledged_label(db_url, tmp_path, live_server):
    store = open_store(db_url)
    import_file(store, "rank", write_rank_tasks(tmp_path / "t.jsonl", WORKERS * TASKS_EACH))
    for i in range(WORKERS):
        add_user(store, f"w{i}")
    server = live_server(db_url)
    clients = [session(server.base_url, f"w{i}") for i in range(WORKERS)]
    acked, sent, bodies, stop = [], [], {}, threading.Event()
    threads = [threading.Thread(target=submit_until_down, args=(*cl, acked, sent, bodies, stop))
               for cl in clients]
    for t in threads:
        t.start()
    deadline = time.monotonic() + TIME_LIMIT_S
    while len(acked) < KILL_AFTER_ACKS and time.monotonic() < deadline:
        time.sleep(0.005)
    server.kill()  # SIGKILL while the workers keep sending
    stop.set()
    for t in threads:
        t.join(30)
    assert len(acked) >= KILL_AFTER_ACKS // 2, f"only {len(acked)} acknowledged before the kill"

    restarted = live_server(db_url)
    with store.tx() as s:
        stored = set(s.scalars(select(Label.request_id)))
    missing = set(acked) - stored
    assert not missing, f"{len(missing)} acknowledged labels lost"
    assert stored <= set(sent)
    if store.dialect == "sqlite":
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    # the old session cookies still work after the restart, and resending is idempotent
    c, headers, _ = clients[0]
    c.base_url = restarted.base_url
    done = {a["id"] for a in c.get("/api/assignments").json()["assignments"] if a["status"] == "done"}
    (aid, body), = [bodies[rid] for rid in acked if bodies[rid][0] in done][:1]
    assert c.get(f"/api/assignments/{aid}").json()["label"]["kind"] == "rank"
    again = c.post(f"/api/assignments/{aid}/label", json=body, headers=headers)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    with store.tx() as s:
        assert len(s.scalars(select(Label.id)).all()) == len(stored)
    print(f"\n[crash] {store.dialect}: {len(sent)} sent, {len(acked)} acknowledged, {len(stored)} stored")
    for cl in clients:
        cl[0].close()
    store.dispose()
