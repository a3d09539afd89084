"""Alembic environment for the labeling database.

The database comes from (first found): a connection handed over by
``instructgpt.labeling.store.upgrade``; ``-x db=URL`` on the alembic command
line; ``$INSTRUCTGPT_LABEL_DB``; ``sqlalchemy.url`` in the ini file.
"""

from __future__ import annotations

from alembic import context

from instructgpt.labeling.store import ENV_DB, make_engine, migration_connection
from instructgpt.labeling.tables import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str | None:
    import os

    x = context.get_x_argument(as_dictionary=True)
    return x.get("db") or os.environ.get(ENV_DB) or config.get_main_option("sqlalchemy.url")


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = _url()
    if not url:
        raise SystemExit(f"no database: pass -x db=URL or set ${ENV_DB}")
    engine = make_engine(url)
    try:
        with migration_connection(engine) as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
