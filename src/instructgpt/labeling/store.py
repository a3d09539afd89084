"""The database: engine setup, transactions and schema migrations.

SQLite (the default) runs in WAL mode with ``synchronous=FULL`` and foreign
keys on, and every transaction starts with ``BEGIN IMMEDIATE`` so that writers
queue on the busy timeout instead of failing when a read lock must be upgraded.
Any other SQLAlchemy URL (PostgreSQL with psycopg is tested) is used as is.

A ``commit`` returns only once the data is durable; the web layer answers a
submission only after its commit, so an acknowledged label survives a crash.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
ENV_DB = "INSTRUCTGPT_LABEL_DB"
DEFAULT_DB = "sqlite:///labeling.db"
MIGRATION_LOCK = 0x1ab3_11e6   # PostgreSQL advisory lock key held by a migration (one at a time per database)


def normalize_url(db: str | None) -> str:
    """A SQLAlchemy URL from ``db``; a plain file path means a SQLite file.

    ``None`` falls back to ``$INSTRUCTGPT_LABEL_DB`` and then ``labeling.db``.
    ``postgresql://`` is given the psycopg (v3) driver.
    """
    db = db or os.environ.get(ENV_DB) or DEFAULT_DB
    if "://" not in db:
        return f"sqlite:///{Path(db).expanduser().resolve()}"
    if db.startswith("postgresql://") or db.startswith("postgres://"):
        return "postgresql+psycopg://" + db.split("://", 1)[1]
    return db


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    """Take transaction control from the driver and set durability pragmas."""
    dbapi_connection.isolation_level = None
    cur = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=30000"):
        cur.execute(f"PRAGMA {pragma}")
    cur.close()


def _sqlite_begin(conn) -> None:
    """Writers take the write lock up front; read-only transactions do not."""
    read_only = conn.get_execution_options().get("read_only", False)
    conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def make_engine(db: str | None = None, **kwargs) -> Engine:
    """An engine for ``db`` (see ``normalize_url``), with SQLite set up for durability."""
    url = make_url(normalize_url(db))
    if url.get_backend_name() == "sqlite":
        if url.database in (None, "", ":memory:"):
            raise ValueError("an in-memory SQLite database cannot be shared; give a file")
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {"check_same_thread": False, "timeout": 30})
        kwargs.setdefault("pool_size", 8)
        kwargs.setdefault("max_overflow", 32)
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 30)
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


class Store:
    """An engine plus a session factory; ``tx()`` is one committed transaction."""

    def __init__(self, db: str | None = None, engine: Engine | None = None):
        self.engine = engine or make_engine(db)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(self.engine.execution_options(read_only=True),
                                           expire_on_commit=False)
        # SQLite has one writer at a time, and its busy handler polls with sleeps that
        # starve some waiters under load; queueing writers of this process on a lock
        # first keeps tail latency low. Other processes still meet the busy timeout.
        self._write_lock = threading.RLock() if self.dialect == "sqlite" else None

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def tx(self, read_only: bool = False) -> Iterator[Session]:
        """A session whose work is committed on normal exit and rolled back on error.

        ``read_only=True`` promises no writes: on SQLite it then does not queue
        for the write lock (a plain deferred ``BEGIN``).
        """
        if read_only or self._write_lock is None:
            factory = self._read_sessions if read_only else self._sessions
            with factory() as session, session.begin():
                yield session
            return
        with self._write_lock, self._sessions() as session, session.begin():
            yield session

    def migrate(self) -> None:
        """Upgrade the schema to the newest Alembic revision."""
        upgrade(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()


def alembic_config(url: str | None = None):
    """An Alembic ``Config`` pointing at the migrations shipped in this package."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@contextmanager
def migration_connection(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction for running migrations; committed on normal exit.

    On SQLite, foreign keys are switched off for the migration and checked
    before the commit: Alembic's batch mode copies a table, and dropping the
    old copy with foreign keys on would cascade-delete the rows that refer to
    it (every label of every assignment, when the assignments table is copied).

    Migrations run one at a time: SQLite's ``BEGIN IMMEDIATE`` queues them, and on
    PostgreSQL the transaction first takes the advisory lock ``MIGRATION_LOCK``, so
    servers starting at once do not all run the same migrations (the first upgrades;
    the others then read its revision and have nothing to do).
    """
    with engine.connect() as conn:
        sqlite = engine.dialect.name == "sqlite"
        if sqlite:  # must happen outside a transaction, so on the DB-API connection
            conn.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")
        try:
            with conn.begin():
                if engine.dialect.name == "postgresql":
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
                yield conn
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise RuntimeError(f"migration left broken foreign keys: {broken[:5]}")
        finally:
            if sqlite:
                conn.connection.dbapi_connection.execute("PRAGMA foreign_keys=ON")


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run the Alembic migrations up to ``revision`` on ``engine`` (``SchemaError`` on a database at a
    revision this release does not have)."""
    from alembic import command

    check_known_revision(engine)
    cfg = alembic_config()
    with migration_connection(engine) as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Run the Alembic migrations down to ``revision`` on ``engine``."""
    from alembic import command

    cfg = alembic_config()
    with migration_connection(engine) as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at (None before the first migration)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


class SchemaError(RuntimeError):
    """The database is not at the revision this code needs (and was not to be migrated)."""


def head_revision() -> str:
    """The newest revision of the migrations shipped with this package."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def resolve_revision(revision: str) -> str:
    """The revision id ``revision`` names (``head`` and the like resolved); Alembic's error if none."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_revision(revision).revision


def check_revision(engine: Engine) -> None:
    """``SchemaError`` unless the database is at ``head_revision()``: older code paths would fail on
    missing tables or columns, or run without the indexes they count on (``serve --no-migrate``)."""
    current, head = check_known_revision(engine), head_revision()
    if current != head:
        raise SchemaError(f"the database is at revision {current or '(none: it has no tables)'}, this "
                          f"instructgpt needs {head}: run instructgpt label migrate (or serve without --no-migrate)")


def check_known_revision(engine: Engine) -> str | None:
    """The database's revision; ``SchemaError`` if this release's migrations do not have it (a newer
    release upgraded the database)."""
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

    current = current_revision(engine)
    try:
        known = current is None or ScriptDirectory.from_config(alembic_config()).get_revision(current) is not None
    except CommandError:
        known = False
    if not known:
        raise SchemaError(f"the database is at revision {current}, which this instructgpt does not know "
                          f"(its newest is {head_revision()}): a newer release upgraded it; downgrade it with "
                          "that release")
    return current


def open_store(db: str | None = None, migrate: bool = True) -> Store:
    """A ``Store`` for ``db``, upgraded to the newest schema; with ``migrate`` False, checked to be at it
    (``SchemaError`` if not)."""
    store = Store(db)
    try:
        if migrate:
            store.migrate()
        else:
            check_revision(store.engine)
    except BaseException:
        store.dispose()
        raise
    return store
