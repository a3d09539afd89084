"""Shared helpers of the labeling tests: users, task files, logins, servers."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path

import httpx

PASSWORD = "correct horse battery"
NASTY = [
    "'; DROP TABLE labels; --",
    'Robert"); DROP TABLE users;-- \\ back\\slash \\\\ %s %% _ ? :name $1',
    "unicode: żółć 日本語 🤖 \u200b RTL \u202e ‮ emoji 👍🏽",
    "<script>alert(1)</script>\"'><img src=x onerror=alert(1)>",
]


@lru_cache(maxsize=1)
def password_hash() -> str:
    """One argon2id hash of PASSWORD, shared by test users (hashing is slow on purpose)."""
    from instructgpt.labeling.security import hash_password

    return hash_password(PASSWORD)


def add_user(store, username: str, role: str = "labeler", held_out: bool = False):
    from instructgpt.labeling.accounts import create_user

    return create_user(store, username, PASSWORD, role=role, held_out=held_out, password_hash=password_hash())


def write_rank_tasks(path: Path, n: int, k: int = 4, prefix: str = "p", prompt: str | None = None) -> Path:
    """A ranking-task JSONL file as ``instructgpt sample`` writes it."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": prompt or f"Prompt {prefix}{i}: explain topic {i}.",
                                "prompt_id": f"{prefix}{i}",
                                "responses": [f"Sample {j} for {prefix}{i}" for j in range(k)]},
                               ensure_ascii=False) + "\n")
    return path


def write_prompts(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def form_value(html: str, name: str) -> str:
    m = re.search(rf'name="{re.escape(name)}" value="([^"]*)"', html)
    assert m, f"no hidden field {name!r} in the page"
    return m.group(1)


def login(client: httpx.Client, username: str, password: str = PASSWORD) -> httpx.Response:
    """Log in through the HTML form (with its pre-login CSRF token)."""
    page = client.get("/login")
    return client.post("/login", data={"username": username, "password": password,
                                       "csrf_token": form_value(page.text, "csrf_token")})


def csrf(client: httpx.Client) -> str:
    return client.get("/api/me").json()["csrf_token"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """``instructgpt label serve`` in a subprocess on 127.0.0.1 (a real uvicorn)."""

    def __init__(self, db_url: str, log_path: Path, insecure_cookies: bool = True, args: tuple[str, ...] = ()):
        self.db_url, self.log_path = db_url, log_path
        # httpx, like Python's cookiejar, sends Secure cookies only over https; browsers
        # also send them to http://localhost, so browser tests keep the default.
        self.extra = (("--insecure-cookies",) if insecure_cookies else ()) + tuple(args)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> LiveServer:
        cmd = [sys.executable, "-m", "instructgpt.labeling", "serve", "--db", self.db_url,
               "--port", str(self.port), "--log-level", "warning", *self.extra]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.base_url + "/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not come up in {timeout}s:\n{self.log()}")

    def pids(self) -> list[int]:
        """The server's process and, with --workers, its worker processes."""
        pids = [self.proc.pid]
        for pid in list(pids):
            try:
                with open(f"/proc/{pid}/task/{pid}/children") as f:
                    pids += [int(p) for p in f.read().split()]
            except OSError:
                pass
        return pids

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, no flushing; like a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
