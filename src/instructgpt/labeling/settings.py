"""Settings of the labeling server (``instructgpt label serve`` options)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from instructgpt.config import ConfigError, opt


@dataclass
class LabelConfig:
    db: str = opt("", "SQLAlchemy URL or SQLite file path (default $INSTRUCTGPT_LABEL_DB, else labeling.db).")
    host: str = opt("127.0.0.1", "Address to listen on (keep it on loopback unless behind a TLS proxy).")
    port: int = opt(8000, "Port to listen on.")
    workers: int = opt(1, "Server processes (uvicorn workers); they share the database, rate limits included.")
    secure_cookies: bool = opt(True, "Mark cookies Secure (HTTPS only); turn off only for plain-http testing.")
    migrate: bool = opt(True, "Upgrade the database schema to the newest revision on start.")
    login_limit: int = opt(5, "Login attempts allowed per client IP and per user name (a browser that "
                              "logged in as that user before: per device instead), within login_window seconds "
                              "(a successful login gives its attempt back).")
    login_window: float = opt(60.0, "Length of the login rate-limit window, in seconds.")
    login_concurrency: int = opt(4, "Password checks running at once per process (argon2id takes 64 MiB each); "
                                    "more logins wait their turn.")
    claim_batch: int = opt(10, "Tasks a labeler gets per 'Get tasks' click.")
    claim_lease_hours: float = opt(12.0, "A pending task goes back to the pool this many hours after it was claimed.")
    max_pending: int = opt(30, "Pending tasks one labeler may hold at once.")
    max_upload_mb: int = opt(200, "Largest task file the admin may upload, in MiB.")
    max_body_kb: int = opt(1024, "Largest request body (forms and the JSON API; not uploads), in KiB.")
    behind_proxy: bool = opt(False, "Trust X-Forwarded-For/Proto from a reverse proxy on loopback.")

    def validate(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"port: must be 1-65535, got {self.port}")
        if not 1 <= self.workers <= 64:
            raise ConfigError(f"workers: must be 1-64, got {self.workers}")
        if self.login_limit < 1 or not self.login_window > 0:
            raise ConfigError("login_limit and login_window must be positive")
        if not 1 <= self.login_concurrency <= 64:
            raise ConfigError(f"login_concurrency: must be 1-64, got {self.login_concurrency}")
        if not 1 <= self.claim_batch <= 100:
            raise ConfigError("claim_batch: must be 1-100")
        if not (math.isfinite(self.claim_lease_hours) and self.claim_lease_hours > 0):
            raise ConfigError(f"claim_lease_hours: must be a positive number, got {self.claim_lease_hours}")
        if not 1 <= self.max_pending <= 10_000:
            raise ConfigError(f"max_pending: must be 1-10000, got {self.max_pending}")
        if self.max_body_kb < 64:
            raise ConfigError(f"max_body_kb: must be at least 64, got {self.max_body_kb}")

    def claim_policy(self):
        from .tasks import ClaimPolicy

        return ClaimPolicy(lease=timedelta(hours=self.claim_lease_hours), max_pending=self.max_pending)
