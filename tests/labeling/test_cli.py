"""The ``instructgpt label`` command line, and Alembic from the installed package."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys

import pytest
from sqlalchemy import select

from instructgpt import data
from instructgpt.labeling import ALEMBIC_INI
from instructgpt.labeling.accounts import list_users
from instructgpt.labeling.cli import main, register
from instructgpt.labeling.store import Store, current_revision
from instructgpt.labeling.tables import Task

from .helpers import write_prompts, write_rank_tasks


def test_register_adds_label_with_all_subcommands():
    parser = argparse.ArgumentParser(prog="instructgpt")
    register(parser.add_subparsers(dest="command"))
    for sub in ("serve", "create-admin", "invite", "import", "export", "migrate", "lockouts", "unlock"):
        args = parser.parse_args(["label", sub, *{"create-admin": ["--username", "x"], "import": ["--kind", "rank", "f"],
                                                 "export": ["--out", "o"]}.get(sub, [])])
        assert callable(args.handler), sub
    assert parser.parse_args(["label", "serve"]).host == "127.0.0.1"


def test_migrate_create_admin_invite_import_export(tmp_path, monkeypatch, capsys):
    db = str(tmp_path / "cli.db")
    assert main(["migrate", "--db", db]) == 0
    assert current_revision(Store(db).engine) == "0004"
    monkeypatch.setenv("INSTRUCTGPT_LABEL_PASSWORD", "a strong password")
    assert main(["create-admin", "--db", db, "--username", "root"]) == 0
    monkeypatch.delenv("INSTRUCTGPT_LABEL_PASSWORD")
    monkeypatch.setattr(sys, "stdin", io.StringIO("another password\n"))
    assert main(["create-user", "--db", db, "--username", "ann", "--held-out"]) == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert main(["create-user", "--db", db, "--username", "bob"]) == 2  # too short
    users = {u.username: u for u in list_users(Store(db))}
    assert users["root"].role == "admin" and users["ann"].held_out and "bob" not in users
    capsys.readouterr()
    assert main(["invite", "--db", db, "--count", "2", "--base-url", "http://127.0.0.1:9000"]) == 0
    links = capsys.readouterr().out.split()
    assert len(links) == 2 and all(link.startswith("http://127.0.0.1:9000/invite/") for link in links)
    assert main(["import", "--db", db, "--kind", "rank", str(write_rank_tasks(tmp_path / "r.jsonl", 10)),
                 "--overlap-fraction", "0.3", "--overlap-k", "3", "--batch", "round1"]) == 0
    assert "added 10 tasks (3 with overlap)" in capsys.readouterr().out
    with Store(db).tx(read_only=True) as s:
        assert set(s.scalars(select(Task.batch))) == {"round1"}   # the name every exported label carries
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": str(i), "text": f"Prompt number {i} " * 5, "user_id": "u"}
                                                   for i in range(5)])
    assert main(["import", "--db", db, "--kind", "prompts", str(prompts), "--curate", "max_per_user=3"]) == 0
    assert "added 3 tasks" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "responses": ["a"]}\n')
    assert main(["import", "--db", db, "--kind", "rank", str(bad)]) == 2
    assert "bad.jsonl:1: responses" in capsys.readouterr().err
    out = tmp_path / "out"
    assert main(["export", "--db", db, "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["rankings.jsonl"] == 0
    assert data.load_rankings(out / "rankings.jsonl") == []
    assert json.loads((out / "manifest.json").read_text())["format_version"] == 2


def test_alembic_upgrade_with_the_shipped_ini(tmp_path):
    pytest.importorskip("alembic")
    db = f"sqlite:///{tmp_path / 'a.db'}"
    cmd = [sys.executable, "-m", "alembic", "-c", ALEMBIC_INI, "-x", f"db={db}", "upgrade", "head"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert current_revision(Store(db).engine) == "0004"


@pytest.mark.parametrize("argv", [["--help"], ["export", "--out", "{tmp}/out"], ["invite", "--count", "1"],
                                  ["import", "--kind", "rank", "{tmp}/r.jsonl"]])
def test_label_commands_start_without_torch(tmp_path, argv):
    """`instructgpt label ...` imports neither torch nor the training stages (it used to take ~3 s to start)."""
    write_rank_tasks(tmp_path / "r.jsonl", 2)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = ("import sys\n"
            "from instructgpt.cli import main\n"
            "try:\n"
            f"    rc = main(['label', *{argv!r}, *([] if '--help' in {argv!r} else ['--db', {str(tmp_path / 'c.db')!r}])])\n"
            "except SystemExit as e:\n"
            "    rc = e.code\n"
            "heavy = sorted(m for m in ('torch', 'numpy', 'transformers', 'instructgpt.models', 'instructgpt.sft')"
            " if m in sys.modules)\n"
            "print('HEAVY', heavy, 'RC', rc)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert "HEAVY [] RC 0" in r.stdout, (r.stdout[-500:], r.stderr[-2000:])


def test_lockouts_and_unlock(tmp_path, capsys):
    """`lockouts` lists the locked keys; `unlock` forgets their failures, so the next login is let through."""
    from instructgpt.labeling.security import LoginLimiter

    db = str(tmp_path / "cli.db")
    assert main(["migrate", "--db", db]) == 0
    store = Store(db)
    limiter = LoginLimiter(store, limit=5, window=60)
    for _ in range(5):
        limiter.fail(limiter.reserve("ip:10.0.0.1", "user:ann").attempt)
    assert limiter.reserve("ip:10.0.0.1", "user:ann").blocked
    capsys.readouterr()
    assert main(["lockouts", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "ip:10.0.0.1  5 failed" in out and "user names tried: ann" in out and "user:ann  5 failed" in out
    assert main(["unlock", "--db", db, "--username", " Ann", "--address", "10.0.0.1"]) == 0
    assert capsys.readouterr().out.splitlines() == ["user:ann: 5 failed login(s) forgotten",
                                                    "ip:10.0.0.1: 5 failed login(s) forgotten"]
    assert limiter.reserve("ip:10.0.0.1", "user:ann").attempt is not None
    assert main(["lockouts", "--db", db]) == 0 and capsys.readouterr().out == "no lockouts\n"
    assert main(["unlock", "--db", db]) == 2 and "name a --username" in capsys.readouterr().err
    assert main(["unlock", "--db", db, "--key", "nonsense"]) == 2 and "lockout key" in capsys.readouterr().err
    store.dispose()


def test_lockouts_judges_by_the_limits_the_server_started_with(db_url, capsys):
    """`lockouts` used its own --login-limit/--login-window (default 5 in 60 s), not the server's: a server
    started with --login-limit 3 --login-window 600 locked keys `lockouts` did not list unless given both again.
    The server records its limits in app_settings when it starts; `lockouts` reads them (flags still override)."""
    from datetime import timedelta

    from fastapi.testclient import TestClient

    from instructgpt.labeling.app import create_app
    from instructgpt.labeling.security import LoginLimiter
    from instructgpt.labeling.settings import LabelConfig
    from instructgpt.labeling.tables import utcnow

    assert main(["migrate", "--db", db_url]) == 0
    store = Store(db_url)
    limiter = LoginLimiter(store, limit=3, window=600, clock=lambda: utcnow() - timedelta(seconds=100))
    for _ in range(3):   # 3 failures 100 s ago: locked under 3 in 600 s, not under 5 in 60 s
        limiter.fail(limiter.reserve("ip:10.0.0.9", "user:ann").attempt)
    capsys.readouterr()
    assert main(["lockouts", "--db", db_url]) == 0     # no server has started: the defaults, and it says so
    out, before_start = capsys.readouterr()
    assert out == "no lockouts\n"
    with TestClient(create_app(LabelConfig(db=db_url, login_limit=3, login_window=600, secure_cookies=False))):
        pass   # the server starts (and records its limits) and stops
    assert main(["lockouts", "--db", db_url]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith("ip:10.0.0.9  3 failed") and "user:ann  3 failed" in out
    assert "limits: 3 failed logins in 600 s (as the server recorded them at its last start)" in err
    assert "limits: 5 failed logins in 60 s (the defaults: no server has started" in before_start
    assert main(["lockouts", "--db", db_url, "--login-limit", "4"]) == 0   # a flag overrides
    out, err = capsys.readouterr()
    assert out == "no lockouts\n" and "limits: 4 failed logins in 600 s (--login-limit as given" in err
    assert main(["lockouts", "--db", db_url, "--login-window", "0"]) == 2
    assert "--login-limit and --login-window must be positive" in capsys.readouterr().err
    with store.engine.begin() as c:
        c.exec_driver_sql("UPDATE app_settings SET value = 'lots' WHERE key = 'login_window'")
    assert main(["lockouts", "--db", db_url]) == 2
    assert "app_settings row 'login_window': 'lots' is not a positive number" in capsys.readouterr().err
    with TestClient(create_app(LabelConfig(db=db_url, secure_cookies=False))):
        pass   # a restart with the defaults records them over the old ones
    assert main(["lockouts", "--db", db_url]) == 0 and capsys.readouterr().out == "no lockouts\n"
    store.dispose()
