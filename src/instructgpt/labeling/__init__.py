"""``instructgpt label``: a small web app where people write demonstrations and rank responses.

- ``store``: database engine, transactions, Alembic migrations.
- ``tables``: the SQL tables (SQLAlchemy models; not ``instructgpt.models``, the neural models).
- ``security``: passwords (argon2id), sessions, CSRF tokens, login rate limits.
- ``tasks``: importing tasks, handing them out, recording labels.
- ``quality``: inter-labeler agreement and throughput.
- ``export``: JSONL files for SFT, the reward model and evaluation.
- ``app``: the FastAPI web application.
- ``cli``: ``register(subparsers)`` adds the ``label`` command.

See docs/labeling.md.
"""

from pathlib import Path

ALEMBIC_INI = str(Path(__file__).resolve().parent / "alembic.ini")
