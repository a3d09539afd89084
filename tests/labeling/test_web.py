"""Pages without JavaScript: demonstrations, ranking by rank numbers, skipping, admin actions."""

from __future__ import annotations

import io
import json
import uuid
import zipfile

import pytest
from sqlalchemy import select

from instructgpt import data
from instructgpt.labeling.export import export_dir
from instructgpt.labeling.store import open_store
from instructgpt.labeling.tables import Task
from instructgpt.labeling.tasks import display_order, import_file

from .helpers import add_user, csrf, form_value, login, write_prompts, write_rank_tasks


@pytest.fixture
def site(sqlite_url, tmp_path, make_app):
    store = open_store(sqlite_url)
    add_user(store, "root", role="admin")
    ann = add_user(store, "ann")
    import_file(store, "rank", write_rank_tasks(tmp_path / "t.jsonl", 1))
    write_prompts(tmp_path / "p.jsonl", [{"id": "q1", "text": "Write a haiku about rain.", "user_id": "u1"}])
    import_file(store, "prompts", tmp_path / "p.jsonl")
    clients = {name: make_app(sqlite_url) for name in ("root", "ann")}
    for name, c in clients.items():
        assert login(c, name).status_code == 303
    yield store, clients, ann
    store.dispose()


def claim_all(c) -> dict[str, int]:
    r = c.post("/claim", data={"csrf_token": csrf(c)})
    assert r.status_code == 303 and r.headers["location"].startswith("/a/")
    return {a["kind"]: a["id"] for a in c.get("/api/assignments").json()["assignments"]}


def test_demonstration_and_no_js_ranking_forms(site, tmp_path):
    store, clients, ann = site
    c = clients["ann"]
    ids = claim_all(c)
    page = c.get(f"/a/{ids['demonstration']}")
    assert "Write a haiku about rain." in page.text
    form = {"csrf_token": form_value(page.text, "csrf_token"), "request_id": form_value(page.text, "request_id"),
            "kind": "demonstration", "response": "Soft rain on tin roofs"}
    r = c.post(f"/a/{ids['demonstration']}", data=form)
    assert r.status_code == 303 and r.headers["location"] == f"/a/{ids['demonstration']}/saved"
    assert "Saved ✓" in c.get(r.headers["location"]).text
    assert c.post(f"/a/{ids['demonstration']}", data=form).status_code == 303  # same form again: no duplicate
    page = c.get(f"/a/{ids['rank']}")
    assert c.get(f"/a/{ids['rank']}").text.count("Sample") == page.text.count("Sample")
    rank = {"csrf_token": form_value(page.text, "csrf_token"), "request_id": form_value(page.text, "request_id"),
            "kind": "rank", "k": "4", "comment": "pos 3 best; 0 and 1 tie",
            "rank_0": "2", "rank_1": "2", "rank_2": "3", "rank_3": "1",
            "likert_0": "5", "likert_1": "5", "likert_2": "1", "likert_3": "7", "flag_2": ["sexual", "violent"]}
    assert c.post(f"/a/{ids['rank']}", data=rank).status_code == 303
    other = {**rank, "request_id": str(uuid.uuid4())}
    assert c.post(f"/a/{ids['rank']}", data=other).status_code == 409  # a second, different label
    out = tmp_path / "export"
    export_dir(store, out)
    (demo,) = data.load_demonstrations(out / "demonstrations.jsonl")
    (ranking,) = data.load_rankings(out / "rankings.jsonl")
    assert (demo.prompt, demo.response, demo.labeler_id, demo.prompt_id) == \
        ("Write a haiku about rain.", "Soft rain on tin roofs", "ann", "q1")
    task_id = c.get(f"/api/assignments/{ids['rank']}").json()["task_id"]
    order = display_order(ann.id, task_id, 4)
    assert ranking.ranking == [[order[3]], sorted([order[0], order[1]]), [order[2]]]
    assert ranking.flags[order[2]] == ["sexual", "violent"] and ranking.likert[order[3]] == 7
    assert ranking.comment == "pos 3 best; 0 and 1 tie"


def test_invalid_ranking_form_is_refused_with_422(site):
    _, clients, _ = site
    c = clients["ann"]
    ids = claim_all(c)
    page = c.get(f"/a/{ids['rank']}")
    bad = {"csrf_token": form_value(page.text, "csrf_token"), "request_id": form_value(page.text, "request_id"),
           "kind": "rank", "k": "4", **{f"rank_{p}": "1" for p in range(4)}, **{f"likert_{p}": "4" for p in range(4)}}
    r = c.post(f"/a/{ids['rank']}", data=bad)
    assert r.status_code == 422 and "tied" in r.text
    assert c.get(f"/a/{ids['rank']}").status_code == 200  # still pending


def test_admin_pages_hold_out_import_and_export(site, tmp_path):
    store, clients, ann = site
    root, c = clients["root"], clients["ann"]
    r = root.post(f"/admin/users/{ann.id}", data={"csrf_token": csrf(root), "action": "held_out_on"})
    assert r.status_code == 303
    ids = claim_all(c)
    api = {"X-CSRF-Token": csrf(c)}
    view = c.get(f"/api/assignments/{ids['rank']}").json()
    assert c.post(f"/api/assignments/{ids['rank']}/label", headers=api, json={
        "kind": "rank", "request_id": view["request_id"], "ranking": [[0], [1], [2], [3]],
        "likert": [7, 6, 5, 4], "flags": [[], [], [], []]}).status_code == 201
    prompts = b'{"id": "z1", "text": "Call me at +1 415 555 0100 about the plan", "user_id": "u9"}\n'
    r = root.post("/admin/import", data={"csrf_token": csrf(root), "kind": "prompts", "overlap_fraction": "0"},
                  files={"file": ("p.jsonl", prompts, "application/json")})
    assert r.status_code == 200 and "added 1 tasks" in r.text
    bad = root.post("/admin/import", data={"csrf_token": csrf(root), "kind": "rank"},
                    files={"file": ("bad.jsonl", b"{not json\n", "application/json")})
    assert bad.status_code == 400 and "bad.jsonl:1: json" in bad.text
    page = root.get("/admin")
    assert page.status_code == 200 and "Inter-labeler agreement" in page.text
    archive = zipfile.ZipFile(io.BytesIO(root.get("/admin/export.zip").content))
    files = set(archive.namelist())
    assert {"demonstrations.jsonl", "rankings.jsonl", "eval/rankings.jsonl", "eval/metadata.jsonl",
            "manifest.json"} <= files
    assert archive.read("rankings.jsonl") == b""  # ann is held out: evaluation only
    (held,) = [json.loads(line) for line in archive.read("eval/rankings.jsonl").decode().splitlines()]
    assert held["labeler_id"] == "ann"
    with store.tx() as s:
        assert "[PHONE]" in s.scalar(select(Task.prompt).where(Task.prompt_id == "z1"))


def test_newlines_from_forms_and_the_api_are_stored_as_lf(site, tmp_path):
    """Browsers send a textarea's line breaks as CRLF; the export feeds SFT, so every text is LF-only."""
    store, clients, _ = site
    c = clients["ann"]
    ids = claim_all(c)
    page = c.get(f"/a/{ids['demonstration']}")
    form = {"csrf_token": form_value(page.text, "csrf_token"), "request_id": form_value(page.text, "request_id"),
            "kind": "demonstration", "response": "Line one\r\nLine two\rLine three\n\r\nEnd"}
    assert c.post(f"/a/{ids['demonstration']}", data=form).status_code == 303
    view = c.get(f"/api/assignments/{ids['rank']}").json()
    r = c.post(f"/api/assignments/{ids['rank']}/label", headers={"X-CSRF-Token": csrf(c)}, json={
        "kind": "rank", "request_id": view["request_id"], "ranking": [[0], [1], [2], [3]],
        "likert": [7, 6, 5, 4], "flags": [[], [], [], []], "comment": "first\r\nsecond\rthird"})
    assert r.status_code == 201
    out = tmp_path / "export"
    export_dir(store, out)
    (demo,) = data.load_demonstrations(out / "demonstrations.jsonl")
    (ranking,) = data.load_rankings(out / "rankings.jsonl")
    assert demo.response == "Line one\nLine two\nLine three\n\nEnd"
    assert ranking.comment == "first\nsecond\nthird"
    assert b"\\r" not in (out / "demonstrations.jsonl").read_bytes() + (out / "rankings.jsonl").read_bytes()


def test_skip_reasons_from_the_form_are_stored_as_lf(site):
    store, clients, _ = site
    c = clients["ann"]
    ids = claim_all(c)
    page = c.get(f"/a/{ids['rank']}")
    r = c.post(f"/a/{ids['rank']}/skip", data={"csrf_token": form_value(page.text, "csrf_token"),
                                               "request_id": form_value(page.text, "request_id"),
                                               "reason": "Other", "details": "a\r\nb"})
    assert r.status_code == 303
    from instructgpt.labeling.tables import Label

    with store.tx() as s:
        assert s.scalar(select(Label.skip_reason)) == "Other: a\nb"


def test_admin_releases_a_labelers_pending_tasks(site):
    _, clients, ann = site
    root, c = clients["root"], clients["ann"]
    ids = claim_all(c)
    page = c.get(f"/a/{ids['rank']}")
    assert "Release pending tasks" in root.get("/admin").text
    r = root.post(f"/admin/users/{ann.id}", data={"csrf_token": csrf(root), "action": "release"})
    assert r.status_code == 200 and "Released 2 pending tasks" in r.text
    form = {"csrf_token": form_value(page.text, "csrf_token"), "request_id": form_value(page.text, "request_id"),
            "kind": "rank", "k": "4", **{f"rank_{p}": str(p + 1) for p in range(4)},
            **{f"likert_{p}": "4" for p in range(4)}}
    r = c.post(f"/a/{ids['rank']}", data=form)
    assert r.status_code == 409 and "released" in r.text
    assert "was released" in c.get(f"/a/{ids['rank']}").text
    assert "released" in c.get("/").text


def ann_with_230_assignments(sqlite_url, tmp_path) -> list[int]:
    """Labeler ann with 230 assignments (2 pending, the rest done or released); their ids pending first,
    then newest first."""
    from instructgpt.labeling.tables import Assignment

    store = open_store(sqlite_url)
    ann = add_user(store, "ann")
    import_file(store, "rank", write_rank_tasks(tmp_path / "t.jsonl", 230))
    with store.tx() as s:
        task_ids = sorted(s.scalars(select(Task.id)))
        statuses = ["pending" if i in (5, 100) else "released" if i % 7 == 0 else "done" for i in range(230)]
        s.add_all([Assignment(task_id=t, user_id=ann.id, status=st) for t, st in zip(task_ids, statuses)])
    with store.tx() as s:
        ids = {st: sorted(s.scalars(select(Assignment.id).where(Assignment.status == st)), reverse=True)
               for st in ("pending", "done", "released")}
    store.dispose()
    return ids["pending"] + sorted(ids["done"] + ids["released"], reverse=True)


def test_my_tasks_shows_one_page_and_its_links_reach_every_assignment(sqlite_url, tmp_path, make_app):
    """230 assignments: 50 to a page (pending first, then newest first), the counts over all of them."""
    import re

    from instructgpt.labeling.tasks import MY_TASKS_PAGE

    expected = ann_with_230_assignments(sqlite_url, tmp_path)
    c = make_app(sqlite_url)
    assert login(c, "ann").status_code == 303
    seen, url, pages = [], "/", 0
    while url:
        page = c.get(url)
        assert page.status_code == 200
        rows = [int(i) for i in re.findall(r'<td><a href="/a/(\d+)">', page.text)]
        assert len(rows) == (MY_TASKS_PAGE if pages < 4 else 230 - 4 * MY_TASKS_PAGE), url
        assert "2 pending (at most 30), 228 done, skipped or released." in page.text  # counts on every page
        seen += rows
        pages += 1
        assert f"Page {pages} of 5" in page.text
        assert ('rel="prev"' in page.text) == (pages > 1)
        nxt = re.search(r'<a href="(/\?page=\d+)" rel="next">', page.text)
        url = nxt.group(1) if nxt else None
    assert pages == 5 and seen == expected
    prev = re.search(r'<a href="(/\?page=\d+)" rel="prev">', page.text).group(1)
    assert prev == "/?page=4"
    assert "Page 5 of 5" in c.get("/?page=99").text   # past the last: the last
    r = c.get("/?page=abc")
    assert r.status_code == 422 and "page: expected a whole number from 1, got &#39;abc&#39;" in r.text
    assert c.get("/?page=0").status_code == 422
    assert c.get("/?page=%C2%B2").status_code == 422   # '²': a digit to str.isdigit, not to int() (was a 500)


def test_the_assignments_api_pages_like_my_tasks(sqlite_url, tmp_path, make_app):
    """GET /api/assignments gave every assignment in one array (reading each task's whole prompt): it now gives
    one page (?page=N&per_page=M, 50 by default) with the counts of all of them and the URL of the rows after
    its last (?after=<cursor>: page null, pages still the count)."""
    expected = ann_with_230_assignments(sqlite_url, tmp_path)
    c = make_app(sqlite_url)
    assert login(c, "ann").status_code == 303
    for per_page, url, pages in ((50, "/api/assignments", 5), (100, "/api/assignments?per_page=100", 3)):
        seen, visited = [], 0
        while url:
            body = c.get(url).json()
            visited += 1
            assert {k: body[k] for k in ("page", "per_page", "pages", "total", "pending")} == \
                {"page": 1 if visited == 1 else None, "per_page": per_page, "pages": pages, "total": 230,
                 "pending": 2}, url
            assert len(body["assignments"]) == min(per_page, 230 - len(seen)), url
            assert set(body["assignments"][0]) == {"id", "task_id", "kind", "status"}
            seen += [a["id"] for a in body["assignments"]]
            url = body["next"]
            assert url is None or url.endswith("" if per_page == 50 else "&per_page=100"), url
        assert visited == pages and seen == expected
    jumped = c.get("/api/assignments?per_page=100&page=2").json()   # ?page=N: as before, then a cursor on
    assert jumped["page"] == 2 and [a["id"] for a in jumped["assignments"]] == expected[100:200]
    assert jumped["next"] == f"/api/assignments?after=n{expected[199]}&per_page=100"
    assert c.get("/api/assignments?per_page=100&page=3").json()["next"] is None
    past = c.get("/api/assignments?page=99").json()   # past the last: no rows, no next (a client paging on stops)
    assert past["assignments"] == [] and past["next"] is None and past["total"] == 230
    for after in (f"n{expected[-1]}", "n1"):   # after the last row: no rows, no next
        past = c.get(f"/api/assignments?after={after}").json()
        assert (past["assignments"], past["next"], past["page"], past["total"]) == ([], None, None, 230), after
    assert [a["id"] for a in c.get(f"/api/assignments?after=p{expected[0]}").json()["assignments"]] == \
        expected[1:51]
    for query, detail in (("page=abc", "page: expected a whole number from 1, got 'abc'"),
                          ("page=0", "page: expected a whole number from 1, got '0'"),
                          ("per_page=501", "per_page: expected a whole number from 1 to 500, got '501'"),
                          ("per_page=-1", "per_page: expected a whole number from 1 to 500, got '-1'"),
                          ("page=%C2%B2", "page: expected a whole number from 1, got '²'"),
                          ("per_page=%E2%91%A0", "per_page: expected a whole number from 1 to 500, got '①'")):
        r = c.get(f"/api/assignments?{query}")
        assert (r.status_code, r.json()) == (422, {"detail": detail}), query


BAD_CURSOR = "after: expected the cursor of a next link (p or n, then an assignment id), got "


@pytest.mark.parametrize("query,detail", [
    ("after=x5", BAD_CURSOR + "'x5'"),
    ("after=p", BAD_CURSOR + "'p'"),
    ("after=n0", BAD_CURSOR + "'n0'"),
    ("after=p-3", BAD_CURSOR + "'p-3'"),
    ("after=p%C2%B2", BAD_CURSOR + "'p\u00b2'"),
    ("after=", BAD_CURSOR + "''"),
    ("after=n99999999999999999999", BAD_CURSOR + "'n9999999999999999999'"),
    ("page=1&after=n5", "page, after: expected one of them, got both"),
    ("after=n5&page=2", "page, after: expected one of them, got both"),
])
def test_the_assignments_api_refuses_a_bad_cursor_or_page_with_after(sqlite_url, tmp_path, make_app, query, detail):
    store = open_store(sqlite_url)
    add_user(store, "ann")
    store.dispose()
    c = make_app(sqlite_url)
    assert login(c, "ann").status_code == 303
    r = c.get(f"/api/assignments?{query}")
    assert (r.status_code, r.json()) == (422, {"detail": detail}), query


def test_following_next_while_labeling_and_claiming_lists_every_assignment(db_url, tmp_path, make_app):
    """GET /api/assignments paged by offset: a client that labeled the first pending assignment of each page it
    read (it leaves the pending group, every later row moves up one place) never saw the row that moved from
    the next page onto the one it had read; a claim in between moved rows the other way. ``next`` now names the
    last row's position (?after=<cursor>): every assignment there was at the first request is listed, the
    labeled ones again with their new status, and the new claim only on a fresh first page."""
    from instructgpt.labeling.labels import new_request_id

    store = open_store(db_url)
    add_user(store, "ann")
    import_file(store, "rank", write_rank_tasks(tmp_path / "t.jsonl", 12))
    store.dispose()
    c = make_app(db_url)
    assert login(c, "ann").status_code == 303
    tok = csrf(c)

    def claim(n: int) -> list[int]:
        return c.post("/api/claim", json={"n": n}, headers={"X-CSRF-Token": tok}).json()["assignment_ids"]

    def label(aid: int) -> None:
        r = c.post(f"/api/assignments/{aid}/label", headers={"X-CSRF-Token": tok},
                   json={"kind": "rank", "request_id": new_request_id(), "ranking": [[0], [1], [2], [3]],
                         "likert": [1, 2, 3, 4]})
        assert r.status_code == 201, r.text

    at_start = claim(9)
    assert len(at_start) == 9
    listed, labeled, new, url = [], [], [], "/api/assignments?per_page=2"
    while url:
        body = c.get(url).json()
        assert body["total"] == 9 + len(new) and len(body["assignments"]) <= 2, url
        listed += [(a["id"], a["status"]) for a in body["assignments"]]
        pending = [a["id"] for a in body["assignments"] if a["status"] == "pending"]
        if pending:
            label(pending[0])
            labeled.append(pending[0])
        if not new:
            new = claim(1)
            assert len(new) == 1
        url = body["next"]
    ids = [i for i, _ in listed]
    assert set(at_start) <= set(ids), sorted(set(at_start) - set(ids))   # none skipped
    assert new[0] not in ids
    assert sorted({i for i in ids if ids.count(i) > 1}) == sorted(labeled)  # listed again, now done
    assert [(i, st) for i, st in listed if i in labeled] == \
        [(i, "pending") for i in labeled] + [(i, "done") for i in sorted(labeled, reverse=True)]
    assert c.get("/api/assignments?per_page=2").json()["assignments"][0]["id"] == new[0]   # a fresh first page
