"""Load: 50 concurrent labelers against a real uvicorn server on 127.0.0.1, 20 labels each."""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import httpx
import pytest
from sqlalchemy import func, select

from instructgpt.labeling.store import open_store
from instructgpt.labeling.tables import Assignment, Label
from instructgpt.labeling.tasks import import_file

from .conftest import ARTIFACTS
from .helpers import PASSWORD, add_user, form_value, write_rank_tasks

pytestmark = pytest.mark.timeout(180)  # bounded even if a server hangs


LABELERS, PER_LABELER, DEADLINE_S = 50, 12, 90.0


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


async def labeler(base_url: str, name: str, start: asyncio.Barrier, latencies: list[float],
                  duplicates: list[int]) -> int:
    """Log in, claim PER_LABELER tasks, then (all together) rank each; every 4th is sent twice.

    Returns the number of labels acknowledged. Logins (argon2, slow on purpose)
    finish before the timed submissions start.
    """
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as c:
        page = await c.get("/login")
        r = await c.post("/login", data={"username": name, "password": PASSWORD,
                                         "csrf_token": form_value(page.text, "csrf_token")})
        assert r.status_code == 303, r.text
        headers = {"X-CSRF-Token": (await c.get("/api/me")).json()["csrf_token"]}
        ids = (await c.post("/api/claim", json={"n": PER_LABELER}, headers=headers)).json()["assignment_ids"]
        assert len(ids) == PER_LABELER
        await start.wait()
        acked = 0
        for i, aid in enumerate(ids):
            task = (await c.get(f"/api/assignments/{aid}")).json()
            body = {"kind": "rank", "request_id": task["request_id"], "ranking": [[0], [1, 2], [3]],
                    "likert": [7, 5, 5, 1], "flags": [[], ["hallucination"], [], []]}
            for attempt in range(2 if i % 4 == 0 else 1):
                t0 = time.perf_counter()
                r = await c.post(f"/api/assignments/{aid}/label", json=body, headers=headers)
                latencies.append(time.perf_counter() - t0)
                assert r.status_code == (201 if attempt == 0 else 200), r.text
                if attempt:
                    duplicates.append(aid)
            acked += 1
        return acked


async def run_all(base_url: str) -> tuple[list[int], list[float], list[int], float]:
    latencies, duplicates = [], []
    start = asyncio.Barrier(LABELERS + 1)
    jobs = asyncio.gather(*[labeler(base_url, f"lab{i:02d}", start, latencies, duplicates)
                            for i in range(LABELERS)])
    await asyncio.wait_for(start.wait(), timeout=DEADLINE_S)
    t0 = time.perf_counter()
    results = await asyncio.wait_for(jobs, timeout=DEADLINE_S)
    return results, latencies, duplicates, time.perf_counter() - t0


def test_fifty_concurrent_labelers(sqlite_url, tmp_path, live_server, capsys):
    store = open_store(sqlite_url)
    import_file(store, "rank", write_rank_tasks(tmp_path / "t.jsonl", LABELERS * PER_LABELER))
    for i in range(LABELERS):
        add_user(store, f"lab{i:02d}")
    server = live_server(sqlite_url)

    results, latencies, duplicates, elapsed = asyncio.run(run_all(server.base_url))

    assert sum(results) == LABELERS * PER_LABELER
    with store.tx() as s:
        n_labels = s.scalar(select(func.count()).select_from(Label))
        n_assign = s.scalar(select(func.count(func.distinct(Label.assignment_id))))
        n_req = s.scalar(select(func.count(func.distinct(Label.request_id))))
        pending = s.scalar(select(func.count()).select_from(Assignment).where(Assignment.status != "done"))
    store.dispose()
    assert n_labels == n_assign == n_req == LABELERS * PER_LABELER == 600
    assert pending == 0 and len(duplicates) == LABELERS * 3  # the 1st, 5th and 9th of each labeler twice
    stats = {"labels": n_labels, "submit_requests": len(latencies), "seconds": round(elapsed, 2),
             "p50_ms": round(percentile(latencies, 50) * 1000, 1),
             "p95_ms": round(percentile(latencies, 95) * 1000, 1),
             "p99_ms": round(percentile(latencies, 99) * 1000, 1),
             "mean_ms": round(statistics.mean(latencies) * 1000, 1)}
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "load_latency.json").write_text(json.dumps(stats, indent=2) + "\n")
    with capsys.disabled():
        print(f"\n[load] {LABELERS} labelers x {PER_LABELER} labels on SQLite: {stats}")


def test_an_idle_keep_alive_connection_is_still_served_after_uvicorns_default(sqlite_url, live_server):
    """A labeler's browser (or the proxy in front) reuses an idle connection; uvicorn's default closes it
    after 5 s, so a request sent then races the close and gets "server disconnected" (a 502 behind a
    proxy). The server keeps idle connections KEEP_ALIVE_S, longer than the usual proxies' 60 s."""
    import http.client

    from instructgpt.labeling.cli import KEEP_ALIVE_S
    open_store(sqlite_url)
    server = live_server(sqlite_url)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        first = conn.getresponse()
        assert first.status == 200 and first.read() and not first.will_close
        time.sleep(6.5)  # past uvicorn's default timeout_keep_alive of 5 s
        conn.request("GET", "/healthz")  # on the same socket: a closed one raises RemoteDisconnected here
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    assert KEEP_ALIVE_S > 60
