"""Hostile and malformed input gets a clean 4xx (never a 500 or a server path), and nothing is written."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from instructgpt.labeling.cli import main as label_main
from instructgpt.labeling.store import open_store
from instructgpt.labeling.tables import Label, Task
from instructgpt.labeling.tasks import claim_tasks, import_file

from .helpers import add_user, csrf, form_value, login, write_rank_tasks

HUGE_ID = 2**63  # one above the largest 64-bit id


@pytest.fixture
def site(sqlite_url, tmp_path, make_app):
    store = open_store(sqlite_url)
    add_user(store, "root", role="admin")
    ann = add_user(store, "ann")
    import_file(store, "rank", write_rank_tasks(tmp_path / "t.jsonl", 2))
    (aid,) = claim_tasks(store, ann.id, 1)
    clients = {name: make_app(sqlite_url) for name in ("root", "ann")}
    for name, c in clients.items():
        assert login(c, name).status_code == 303
    yield store, clients, aid
    store.dispose()


def n_rows(store, table) -> int:
    with store.tx() as s:
        return s.scalar(select(func.count()).select_from(table))


@pytest.mark.parametrize("path", [f"/a/{HUGE_ID}", f"/a/{HUGE_ID}/saved", f"/api/assignments/{HUGE_ID}",
                                  f"/a/{10**30}", "/a/-1", "/a/0", "/a/abc", "/api/assignments/1e3"])
def test_ids_that_are_not_ids_are_404(site, path):
    _, clients, _ = site
    r = clients["ann"].get(path)
    assert r.status_code == 404, (path, r.status_code)
    if path.startswith("/api/"):
        assert r.json() == {"detail": "not found"}
    else:
        assert "<h1>Something went wrong</h1>" in r.text  # our page, not a bare JSON error


@pytest.mark.parametrize("query", ["page=" + "9" * 5000, "per_page=" + "9" * 5000, "after=p" + "9" * 5000])
def test_page_numbers_and_cursors_of_thousands_of_digits_are_422(site, query):
    """int() refuses more than 4300 digits (ValueError): such a ?page= was a 500 on My tasks and the API.
    Leading zeros do not count: 0000...1 is page 1."""
    _, clients, aid = site
    name = query.split("=")[0]
    for path in ("/api/assignments", "/"):
        if path == "/" and name != "page":
            continue
        r = clients["ann"].get(f"{path}?{query}")
        assert r.status_code == 422, (path, query[:20], r.status_code)
        assert f"{name}: expected" in (r.json()["detail"] if path.startswith("/api/") else r.text)
    padded = clients["ann"].get("/api/assignments?page=" + "0" * 5000 + "1")
    assert padded.status_code == 200 and [a["id"] for a in padded.json()["assignments"]] == [aid]


def test_huge_ids_in_posts_are_404(site):
    _, clients, aid = site
    ann, root = clients["ann"], clients["root"]
    page = ann.get(f"/a/{aid}")
    form = {"csrf_token": form_value(page.text, "csrf_token"), "request_id": form_value(page.text, "request_id"),
            "kind": "rank", "k": "4"}
    assert ann.post(f"/a/{HUGE_ID}", data=form).status_code == 404
    assert ann.post(f"/a/{HUGE_ID}/skip", data={**form, "reason": "Other"}).status_code == 404
    assert ann.post(f"/api/assignments/{HUGE_ID}/label", json={"kind": "skip"},
                    headers={"X-CSRF-Token": csrf(ann)}).status_code == 404
    assert root.post(f"/admin/users/{HUGE_ID}", data={"csrf_token": csrf(root), "action": "deactivate"}) \
        .status_code == 404


@pytest.mark.parametrize("declared", ["9" * 5000, "0" * 5000 + "1"])
def test_a_content_length_of_thousands_of_digits_is_413(site, declared):
    """int() refuses more than 4300 digits: such a Content-Length was a 500 from the body limit (uvicorn's h11
    refuses it before the app, other ASGI servers need not)."""
    _, clients, _ = site
    ann = clients["ann"]
    r = ann.post("/api/claim", content=b"", headers={"X-CSRF-Token": csrf(ann), "Content-Type": "application/json",
                                                     "Content-Length": declared})
    assert r.status_code == 413 and "larger than 1024 KiB" in r.json()["detail"]


def test_deeply_nested_json_is_400(site):
    _, clients, aid = site
    ann = clients["ann"]
    deep = "[" * 100_000 + "]" * 100_000
    for path in ("/api/claim", f"/api/assignments/{aid}/label"):
        r = ann.post(path, content=deep, headers={"X-CSRF-Token": csrf(ann), "Content-Type": "application/json"})
        assert r.status_code == 400 and "nested" in r.json()["detail"], (path, r.status_code)


def test_request_bodies_are_capped(site):
    store, clients, aid = site
    ann = clients["ann"]
    headers = {"X-CSRF-Token": csrf(ann), "Content-Type": "application/json"}
    big = json.dumps({"n": 1, "pad": "x" * (40 * 1024 * 1024)})
    r = ann.post("/api/claim", content=big, headers=headers)
    assert r.status_code == 413 and "larger than 1024 KiB" in r.json()["detail"]

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"kind": "skip", "skip_reason": "'
        for _ in range(64):
            yield b"x" * 65536
        yield b'"}'

    r = ann.post(f"/api/assignments/{aid}/label", content=chunks(), headers=headers)
    assert (r.status_code, r.json()) == (413, {"detail": "request body larger than 1024 KiB"})
    page = ann.get(f"/a/{aid}")
    r = ann.post(f"/a/{aid}", data={"csrf_token": form_value(page.text, "csrf_token"), "kind": "demonstration",
                                    "request_id": form_value(page.text, "request_id"),
                                    "response": "y" * (2 * 1024 * 1024)})
    assert r.status_code == 413 and "Something went wrong" in r.text and "request body larger than 1024 KiB" in r.text
    assert n_rows(store, Label) == 0


@pytest.mark.parametrize("max_upload_mb", [200, 3])
def test_an_oversized_upload_is_refused_naming_the_limit_in_mib(site, make_app, sqlite_url, max_upload_mb):
    """The upload limit is max_upload_mb MiB (the docs' unit); the 413 says so, not the body's KiB."""
    root = make_app(sqlite_url, max_upload_mb=max_upload_mb)
    assert login(root, "root").status_code == 303
    too_big = max_upload_mb * 1024 * 1024 + 65 * 1024  # more than the file and the form's other fields
    r = root.post("/admin/import", content=b"x", headers={"Content-Length": str(too_big),
                                                          "Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413
    assert f"request body larger than {max_upload_mb} MiB" in r.text and "KiB" not in r.text


def test_an_oversized_chunked_upload_is_cut_off_naming_the_limit_in_mib(site, make_app, sqlite_url):
    """An upload without Content-Length is counted as it arrives: past max_upload_mb its 413 names the limit
    in MiB, as the declared-length check does."""
    root = make_app(sqlite_url, max_upload_mb=3)
    assert login(root, "root").status_code == 303
    token = csrf(root)

    def chunks():
        yield (f'--b\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n{token}\r\n--b\r\n'
               'Content-Disposition: form-data; name="kind"\r\n\r\nrank\r\n--b\r\nContent-Disposition: form-data; '
               'name="file"; filename="u.jsonl"\r\nContent-Type: application/json\r\n\r\n').encode()
        for _ in range(4 * 16):   # 4 MiB
            yield b"z" * 65536
        yield b"\r\n--b--\r\n"

    r = root.post("/admin/import", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413
    assert "request body larger than 3 MiB" in r.text and "KiB" not in r.text


@pytest.mark.parametrize("overlap_k", ["inf", "-inf", "nan", "1000000", "1", "2.5", "1e999", "x"])
def test_absurd_overlap_k_is_refused(site, tmp_path, overlap_k):
    store, clients, _ = site
    root = clients["root"]
    before = n_rows(store, Task)
    upload = write_rank_tasks(tmp_path / "u.jsonl", 3, prefix="u").read_bytes()
    r = root.post("/admin/import", data={"csrf_token": csrf(root), "kind": "rank", "overlap_fraction": "0.5",
                                         "overlap_k": overlap_k},
                  files={"file": ("u.jsonl", upload, "application/json")})
    assert r.status_code in (400, 422), (overlap_k, r.status_code)
    assert "overlap_k" in r.text
    assert n_rows(store, Task) == before


@pytest.mark.parametrize("fraction", ["inf", "nan", "-0.1", "1.5"])
def test_absurd_overlap_fraction_is_refused(site, tmp_path, fraction):
    _, clients, _ = site
    root = clients["root"]
    upload = write_rank_tasks(tmp_path / "u.jsonl", 3, prefix="u").read_bytes()
    r = root.post("/admin/import", data={"csrf_token": csrf(root), "kind": "rank", "overlap_fraction": fraction},
                  files={"file": ("u.jsonl", upload, "application/json")})
    assert r.status_code == 400 and "overlap_fraction" in r.text


NUL_FILES = {
    "prompts": [({"id": "a\x00", "text": "Write a poem.", "user_id": "u"}, "id"),
                ({"id": "a", "text": "Write a\x00poem.", "user_id": "u"}, "text"),
                ({"id": "a", "text": "Write a poem.", "user_id": "u\x00"}, "user_id")],
    "rank": [({"prompt": "P\x00", "responses": ["a", "b", "c", "d"]}, "prompt"),
             ({"prompt": "P", "prompt_id": "p\x00", "responses": ["a", "b", "c", "d"]}, "prompt_id"),
             ({"prompt": "P", "responses": ["a", "b\x00", "c", "d"]}, "responses[1]")],
}
NUL_CASES = [(kind, row, field) for kind, rows in NUL_FILES.items() for row, field in rows]


@pytest.mark.parametrize("kind,row,field", NUL_CASES)
def test_nul_in_an_import_file_names_the_record(sqlite_url, tmp_path, capsys, kind, row, field):
    path = tmp_path / "nul.jsonl"
    ok = {"id": "ok", "text": "Fine prompt.", "user_id": "v"} if kind == "prompts" else \
        {"prompt": "Fine", "responses": ["1", "2", "3", "4"]}
    path.write_text(json.dumps(ok) + "\n" + json.dumps(row) + "\n")
    assert label_main(["import", "--db", sqlite_url, "--kind", kind, str(path)]) == 2
    err = capsys.readouterr().err
    assert f"nul.jsonl:2: {field}: contains a NUL character" in err and "Traceback" not in err
    store = open_store(sqlite_url)
    assert n_rows(store, Task) == 0  # nothing from a file with an error
    store.dispose()


@pytest.mark.parametrize("kind,row,field", NUL_CASES)
def test_nul_in_an_uploaded_file_is_a_clean_400_without_server_paths(site, kind, row, field):
    store, clients, _ = site
    root = clients["root"]
    before = n_rows(store, Task)
    r = root.post("/admin/import", data={"csrf_token": csrf(root), "kind": kind, "overlap_fraction": "0"},
                  files={"file": ("mine.jsonl", (json.dumps(row) + "\n").encode(), "application/json")})
    assert r.status_code == 400
    assert f"mine.jsonl:1: {field}: contains a NUL character" in r.text
    assert "/tmp" not in r.text and "tmp" not in r.text.split("mine.jsonl")[0][-40:]
    assert n_rows(store, Task) == before


def test_invalid_utf8_in_a_form_body_is_400(site):
    store, clients, aid = site
    ann = clients["ann"]
    page = ann.get(f"/a/{aid}")
    fields = (f"csrf_token={form_value(page.text, 'csrf_token')}&request_id={form_value(page.text, 'request_id')}"
              f"&kind=rank&k=4&rank_0=1&rank_1=2&rank_2=3&rank_3=4&likert_0=4&likert_1=4&likert_2=4&likert_3=4")
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    for bad in (b"&comment=caf%E9", b"&comment=%FF%FE", b"&comment=caf\xc3"):
        r = ann.post(f"/a/{aid}", content=fields.encode() + bad, headers=headers)
        assert r.status_code == 400 and "not valid UTF-8" in r.text, bad
    assert n_rows(store, Label) == 0
    good = ann.post(f"/a/{aid}", content=fields.encode() + b"&comment=caf%C3%A9", headers=headers)
    assert good.status_code == 303
    with store.tx() as s:
        assert s.scalar(select(Label.comment)) == "café"
    anon = clients["root"]
    anon.cookies.clear()
    token = form_value(anon.get("/login").text, "csrf_token")
    r = anon.post("/login", content=f"csrf_token={token}&username=ann&password=%FF".encode(), headers=headers)
    assert r.status_code == 400


def test_an_unexpected_error_is_a_plain_500_page(sqlite_url, monkeypatch):
    from fastapi.testclient import TestClient

    from instructgpt.labeling import views_labeler
    from instructgpt.labeling.app import create_app
    from instructgpt.labeling.settings import LabelConfig

    store = open_store(sqlite_url)
    add_user(store, "ann")
    store.dispose()

    def boom(*a, **k):
        raise RuntimeError("/srv/secret/path/labels.db is on fire")

    monkeypatch.setattr(views_labeler, "assignment_page", boom)
    with TestClient(create_app(LabelConfig(db=sqlite_url, secure_cookies=False)), base_url="http://127.0.0.1",
                    raise_server_exceptions=False, follow_redirects=False) as c:
        assert login(c, "ann").status_code == 303
        r = c.get("/")
        assert r.status_code == 500 and "Something went wrong" in r.text
        assert "/srv/secret" not in r.text and "RuntimeError" not in r.text
        assert r.headers["content-security-policy"].startswith("default-src 'none'")
        assert c.get("/api/assignments").status_code == 200  # the API route holds its own reference


def test_a_database_that_cannot_be_opened_is_exit_2_naming_it(tmp_path, capsys, monkeypatch):
    """A text file, a folder or an unknown revision gave a sqlalchemy or alembic traceback (serve: exit 3,
    after uvicorn had started)."""
    import uvicorn
    started = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append(1))
    (tmp_path / "notes.txt").write_text("not a database\n")
    (tmp_path / "folder").mkdir()
    for args, detail in ((["migrate", "--db", str(tmp_path / "notes.txt")], "file is not a database"),
                         (["serve", "--db", str(tmp_path / "notes.txt")], "file is not a database"),
                         (["migrate", "--db", str(tmp_path / "folder")], "unable to open database file"),
                         (["migrate", "--db", str(tmp_path / "ok.db"), "--revision", "zzz"], "revision")):
        assert label_main(args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith(f"instructgpt label: error: database {args[2]}: ") and detail in err, err
    assert not started
    assert (tmp_path / "notes.txt").read_text() == "not a database\n"


def test_cli_numbers_log_levels_and_password_variables_are_checked(tmp_path, capsys, monkeypatch):
    db = str(tmp_path / "l.db")
    for args in (["invite", "--db", db, "--count", "0"], ["serve", "--db", db, "--log-level", "bogus"]):
        with pytest.raises(SystemExit) as e:
            label_main(args)
        assert e.value.code == 2
    monkeypatch.delenv("NOPE_VAR", raising=False)
    with pytest.raises(SystemExit) as e:
        label_main(["create-user", "--db", db, "--username", "bob", "--password-env", "NOPE_VAR"])
    assert e.value.code == 2 and "--password-env NOPE_VAR: the variable is not set" in capsys.readouterr().err
