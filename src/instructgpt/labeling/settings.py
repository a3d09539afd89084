"""Settings of the labeling server (``instructgpt label serve`` options)."""

from __future__ import annotations

from dataclasses import dataclass

from instructgpt.config import ConfigError, opt


@dataclass
class LabelConfig:
    db: str = opt("", "SQLAlchemy URL or SQLite file path (default $INSTRUCTGPT_LABEL_DB, else labeling.db).")
    host: str = opt("127.0.0.1", "Address to listen on (keep it on loopback unless behind a TLS proxy).")
    port: int = opt(8000, "Port to listen on.")
    secure_cookies: bool = opt(True, "Mark cookies Secure (HTTPS only); turn off only for plain-http testing.")
    migrate: bool = opt(True, "Upgrade the database schema to the newest revision on start.")
    login_limit: int = opt(5, "Failed logins allowed per username and per IP within login_window seconds.")
    login_window: float = opt(60.0, "Length of the login rate-limit window, in seconds.")
    claim_batch: int = opt(10, "Tasks a labeler gets per 'Get tasks' click.")
    max_upload_mb: int = opt(200, "Largest task file the admin may upload, in MiB.")
    behind_proxy: bool = opt(False, "Trust X-Forwarded-For/Proto from a reverse proxy on loopback.")

    def validate(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"port: must be 1-65535, got {self.port}")
        if self.login_limit < 1 or self.login_window <= 0:
            raise ConfigError("login_limit and login_window must be positive")
        if not 1 <= self.claim_batch <= 100:
            raise ConfigError("claim_batch: must be 1-100")
