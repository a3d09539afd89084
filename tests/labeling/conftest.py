"""Fixtures of the labeling tests: databases (SQLite and PostgreSQL), apps, servers.

PostgreSQL: set ``INSTRUCTGPT_TEST_PG_URL`` (a server URL whose user may
CREATE DATABASE) or let the ``postgres_server`` fixture start a throwaway
server on 127.0.0.1 with Debian's ``initdb``/``pg_ctl`` (run as the
``postgres`` user when the tests run as root). Without either, PostgreSQL
variants are skipped with the reason.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="needs the label extra: pip install -e '.[label]'")
pytest.importorskip("sqlalchemy")
pytest.importorskip("alembic")

from instructgpt.labeling.store import Store, open_store  # noqa: E402

from .helpers import LiveServer, free_port  # noqa: E402

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = os.environ.get("INSTRUCTGPT_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _run_as_postgres(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


def _start_postgres() -> tuple[str, callable]:
    """Start a private PostgreSQL on 127.0.0.1; returns (admin URL, stop function)."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL not installed (apt-get install postgresql) and INSTRUCTGPT_TEST_PG_URL unset")
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root but there is no 'postgres' user to run the server as")
    root = Path(tempfile.mkdtemp(prefix="igpt-pg-"))
    data, log = root / "data", root / "server.log"
    if os.geteuid() == 0:
        os.chown(root, pw.pw_uid, pw.pw_gid)
    init = _run_as_postgres([initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                             "--no-sync", "--locale", "C"])
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"initdb failed: {init.stderr.strip()[-300:]}")
    port = free_port()
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200"
    start = _run_as_postgres([pg_ctl, "-D", str(data), "-o", opts, "-l", str(log), "-w", "-t", "60", "start"])
    if start.returncode != 0:
        text = log.read_text() if log.exists() else start.stderr
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start: {text.strip()[-300:]}")

    def stop():
        _run_as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)

    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", stop


@pytest.fixture(scope="session")
def postgres_server():
    """Admin URL of a PostgreSQL server (skips when none can be had)."""
    pytest.importorskip("psycopg", reason="psycopg not installed")
    url = os.environ.get("INSTRUCTGPT_TEST_PG_URL")
    if url:
        yield url
        return
    url, stop = _start_postgres()
    try:
        yield url
    finally:
        stop()


def _fresh_pg_database(admin_url: str) -> str:
    import sqlalchemy as sa

    name = f"label_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(admin_url.replace("postgresql://", "postgresql+psycopg://", 1),
                              isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine.dispose()
    return str(sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False))


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'labels.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A fresh, empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'labels.db'}"
    return _fresh_pg_database(request.getfixturevalue("postgres_server"))


@pytest.fixture
def store(db_url):
    s = open_store(db_url)
    yield s
    s.dispose()


@pytest.fixture
def sqlite_store(sqlite_url):
    s = open_store(sqlite_url)
    yield s
    s.dispose()


@pytest.fixture
def make_app():
    """``make_app(url, **cfg) -> TestClient`` running the app in-process (lifespan included)."""
    from fastapi.testclient import TestClient

    from instructgpt.labeling.app import create_app
    from instructgpt.labeling.settings import LabelConfig

    clients = []

    def make(url: str, address: str = "testclient", **cfg) -> TestClient:
        """``address``: the client address the app sees (the rate limiter's ``ip:`` key)."""
        cfg.setdefault("secure_cookies", False)
        client = TestClient(create_app(LabelConfig(db=url, **cfg)), base_url="http://127.0.0.1",
                            follow_redirects=False, client=(address, 50000))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium driven by Playwright (skipped without them; never `playwright install`)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def live_server(tmp_path):
    """``live_server(url) -> LiveServer`` started in a subprocess; stopped after the test."""
    servers = []

    def start(url: str, insecure_cookies: bool = True, args: tuple[str, ...] = ()) -> LiveServer:
        server = LiveServer(url, tmp_path / f"server{len(servers)}.log", insecure_cookies, args).start()
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()


__all__ = ["Store", "ARTIFACTS"]
