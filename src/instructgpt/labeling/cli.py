"""``instructgpt label ...``: serve, migrate, create-admin, create-user, invite, import, release, lockouts, unlock, export.

``register(subparsers)`` adds the ``label`` command to an argparse subparsers
object; each sub-subcommand sets ``handler(args) -> int`` on the namespace.
``python -m instructgpt.labeling ARGS`` runs ``instructgpt label ARGS``.

Passwords are never taken from the command line: they come from an
environment variable (``--password-env``, default ``INSTRUCTGPT_LABEL_PASSWORD``),
from standard input when it is not a terminal, or from an interactive prompt.
"""

from __future__ import annotations

import argparse
import getpass
import importlib.util
import ipaddress
import json
import os
import sys

#: Seconds an idle keep-alive connection is kept: longer than the usual proxies' 60 s idle timeout.
KEEP_ALIVE_S = 75
REQUIRED = ("fastapi", "uvicorn", "sqlalchemy", "alembic", "argon2", "jinja2", "multipart")
PASSWORD_ENV = "INSTRUCTGPT_LABEL_PASSWORD"
DESCRIPTION = """\
The labeling web app: people write demonstrations and rank K sampled responses.

  instructgpt label create-admin --db labels.db --username root
  instructgpt label import --db labels.db --kind rank samples.jsonl
  instructgpt label serve --db labels.db          # http://127.0.0.1:8000
  instructgpt label export --db labels.db --out labels/

Passwords come from $INSTRUCTGPT_LABEL_PASSWORD (or --password-env VAR), from
piped stdin, or from a prompt; never from the command line. See docs/labeling.md.
"""


def _check_extra() -> None:
    missing = [m for m in REQUIRED if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"instructgpt label needs: pip install 'instructgpt[label]' (missing {', '.join(missing)})")


def _db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=None,
                   help="SQLAlchemy URL (sqlite:///file.db, postgresql://user@host/db) or a SQLite file "
                        "path; default $INSTRUCTGPT_LABEL_DB, else ./labeling.db")


def _password_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--password-env", default=PASSWORD_ENV, metavar="VAR",
                   help=f"environment variable holding the password (default {PASSWORD_ENV}); "
                        "otherwise read from stdin if piped, else prompted for")


def read_password(args: argparse.Namespace) -> str:
    """The password from the environment, piped stdin, or an interactive prompt (twice)."""
    value = os.environ.get(args.password_env)
    if value:
        return value
    if args.password_env != PASSWORD_ENV:  # named on purpose: a typo or an unset variable is not an empty password
        print(f"instructgpt label: error: --password-env {args.password_env}: the variable is not set", file=sys.stderr)
        raise SystemExit(2)
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Password again: "):
        raise SystemExit("the two passwords differ")
    return first


# ---------------------------------------------------------------- handlers

def cmd_serve(args: argparse.Namespace) -> int:
    import dataclasses

    import uvicorn

    from instructgpt.config import ConfigError

    from .app import CONFIG_ENV, create_app
    from .settings import LabelConfig

    cfg = LabelConfig(db=args.db or "", host=args.host, port=args.port, workers=args.workers,
                      secure_cookies=not args.insecure_cookies, migrate=not args.no_migrate,
                      login_limit=args.login_limit, login_window=args.login_window,
                      login_concurrency=args.login_concurrency, claim_batch=args.claim_batch,
                      claim_lease_hours=args.claim_lease_hours, max_pending=args.max_pending,
                      behind_proxy=args.behind_proxy)
    try:
        cfg.validate()
    except ConfigError as e:
        print(f"instructgpt label serve: error: {e}", file=sys.stderr)
        return 2
    if not _is_loopback(cfg.host):
        print(f"warning: listening on {cfg.host}, not loopback; put a TLS proxy in front", file=sys.stderr)
    if not cfg.secure_cookies:
        print("warning: --insecure-cookies: session cookies are sent over plain http", file=sys.stderr)
    # Idle keep-alive connections stay open KEEP_ALIVE_S (uvicorn's default is 5 s): a proxy (nginx,
    # a cloud load balancer: 60 s idle by default) or a client that reuses a connection the server
    # has just closed gets a reset, i.e. a 502 or "server disconnected" for a labeler mid-task.
    common = {"host": cfg.host, "port": cfg.port, "log_level": args.log_level, "timeout_keep_alive": KEEP_ALIVE_S,
              "proxy_headers": cfg.behind_proxy, "server_header": False, "date_header": False}
    # Migrate and create the secret key once, here: a database that cannot be opened is an error before the
    # server starts; several workers then get the config (uvicorn starts them from an import string).
    from .security import server_key
    from .store import open_store

    store = _migrate_on_start(cfg.db or None) if cfg.migrate else open_store(cfg.db or None, migrate=False)
    with store.tx() as s:
        server_key(s)
    store.dispose()
    if cfg.workers == 1:
        uvicorn.run(create_app(cfg), workers=1, **common)
        return 0
    os.environ[CONFIG_ENV] = json.dumps({**dataclasses.asdict(cfg), "migrate": False})
    uvicorn.run("instructgpt.labeling.app:app_from_env", factory=True, workers=cfg.workers, **common)
    return 0


def _migrate_on_start(db: str | None):
    """A ``Store`` for ``db`` upgraded to the newest revision; an upgrade is named on stderr with the revision
    the database was at (the one a downgrade would go back to)."""
    from .store import Store, current_revision

    store = Store(db)
    try:
        before = current_revision(store.engine)
        store.migrate()
        after = current_revision(store.engine)
    except BaseException:
        store.dispose()
        raise
    if before != after:
        url = store.engine.url.render_as_string(hide_password=True)
        change = f"upgraded from revision {before} to" if before else "created at revision"
        print(f"database {url}: {change} {after}", file=sys.stderr)
    return store


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_migrate(args: argparse.Namespace) -> int:
    from .store import SchemaError, Store, current_revision, downgrade, resolve_revision, upgrade

    if args.downgrade and args.revision == "head":
        print("instructgpt label migrate: error: --downgrade needs --revision (the revision to go back to)",
              file=sys.stderr)
        return 2
    store = Store(args.db)
    try:
        before = current_revision(store.engine)
        (downgrade if args.downgrade else upgrade)(store.engine, args.revision)
        after, target = current_revision(store.engine), resolve_revision(args.revision)
        if after != target:   # an upgrade to an older revision does nothing
            raise SchemaError(f"at revision {after}, newer than {target}: migrate only upgrades; "
                              f"to go back to {target}, add --downgrade")
        was = f" (was {before})" if before and before != after else ""
        print(f"{store.engine.url.render_as_string(hide_password=True)}: at revision {after}{was}")
    finally:
        store.dispose()
    return 0


def _create(args: argparse.Namespace, role: str) -> int:
    from . import accounts
    from .security import AuthError
    from .store import open_store

    store = open_store(args.db)
    try:
        password = read_password(args)
        try:
            if getattr(args, "reset_password", False) and args.username in {u.username for u in accounts.list_users(store)}:
                ended = accounts.set_password(store, args.username, password)
                print(f"password of {args.username} changed; {ended} session(s) logged out")
                return 0
            user = accounts.create_user(store, args.username, password, role=role,
                                        held_out=getattr(args, "held_out", False))
        except AuthError as e:
            print(f"instructgpt label: error: {e}", file=sys.stderr)
            return 2
        print(f"created {user.role} {user.username}" + (" (held-out)" if user.held_out else ""))
        return 0
    finally:
        store.dispose()


def cmd_create_admin(args: argparse.Namespace) -> int:
    return _create(args, "admin")


def cmd_create_user(args: argparse.Namespace) -> int:
    return _create(args, "labeler")


def cmd_invite(args: argparse.Namespace) -> int:
    from . import accounts
    from .store import open_store

    store = open_store(args.db)
    try:
        links = []
        for _ in range(args.count):
            token = accounts.create_invite(store, role=args.role, held_out=args.held_out)
            links.append(f"{args.base_url.rstrip('/')}/invite/{token}")
    finally:
        store.dispose()
    print("\n".join(links))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from instructgpt import config as config_mod
    from instructgpt.data import DataError

    from .store import open_store
    from .tasks import import_file

    kwargs = {"overlap_fraction": args.overlap_fraction, "overlap_k": args.overlap_k, "batch": args.batch}
    store = open_store(args.db)
    try:
        from instructgpt.curate import CurateConfig

        # a rank import scrubs its prompts' PII as the prompts import does (scrub_pii of the same options)
        kwargs["curate_cfg"] = config_mod.load(CurateConfig, args.curate_config, args.curate or [],
                                               section="curate")
        if args.kind == "prompts":
            kwargs["splits"] = tuple(args.splits.split(","))
        result = import_file(store, args.kind, args.file, **kwargs)
    except (DataError, config_mod.ConfigError, ValueError) as e:
        print(f"instructgpt label import: error: {e}", file=sys.stderr)
        return 2
    finally:
        store.dispose()
    print(result.describe())
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from .store import open_store
    from .tables import User
    from .tasks import release_pending

    store = open_store(args.db)
    try:
        with store.tx(read_only=True) as s:
            user_id = s.scalar(select(User.id).where(User.username == args.username))
        if user_id is None:
            print(f"instructgpt label release: error: no user {args.username!r}", file=sys.stderr)
            return 2
        n = release_pending(store, user_id, "admin")
    finally:
        store.dispose()
    print(f"released {n} pending task(s) of {args.username}")
    return 0


def lockout_limits(store, limit: int | None, window: float | None) -> tuple[int, float, str]:
    """(limit, window, where they came from) for ``lockouts``: the flags given, else what the server recorded
    at its last start, else the server's defaults. ``ValueError`` if a recorded one is not a number."""
    from .security import recorded_login_limits
    from .settings import LabelConfig

    with store.tx(read_only=True) as s:
        recorded = recorded_login_limits(s)
    base, source = (recorded, "as the server recorded them at its last start") if recorded else \
        ((LabelConfig.login_limit, LabelConfig.login_window), "the defaults: no server has started on this database")
    if limit is not None or window is not None:
        one = "--login-limit" if window is None else "--login-window"
        source = "as given" if limit is not None and window is not None else f"{one} as given, the other {source}"
    return (base[0] if limit is None else limit), (base[1] if window is None else window), source


def cmd_lockouts(args: argparse.Namespace) -> int:
    from .security import LoginLimiter
    from .store import open_store

    bad_limit = args.login_limit is not None and args.login_limit < 1
    if bad_limit or (args.login_window is not None and not 0 < args.login_window < float("inf")):
        print("instructgpt label lockouts: error: --login-limit and --login-window must be positive",
              file=sys.stderr)
        return 2
    store = open_store(args.db)
    try:
        limit, window, source = lockout_limits(store, args.login_limit, args.login_window)
        locks = LoginLimiter(store, limit, window).lockouts()
    except ValueError as e:
        print(f"instructgpt label lockouts: error: {e}", file=sys.stderr)
        return 2
    finally:
        store.dispose()
    print(f"limits: {limit} failed logins in {window:g} s ({source})", file=sys.stderr)
    for lock in locks:
        tried = f"  (user names tried: {', '.join(lock.user_names)})" if lock.user_names else ""
        print(f"{lock.key}  {lock.failures} failed  until {lock.until:%Y-%m-%d %H:%M:%S} UTC{tried}")
    if not locks:
        print("no lockouts")
    return 0


def cmd_unlock(args: argparse.Namespace) -> int:
    from .security import AuthError, LoginLimiter, check_lock_key, user_key
    from .store import open_store

    keys = [user_key(n) for n in args.username or ()] + [f"ip:{a}" for a in args.address or ()] + list(args.key or ())
    if not keys:
        print("instructgpt label unlock: error: name a --username, --address or --key "
              "(`instructgpt label lockouts` lists them)", file=sys.stderr)
        return 2
    try:
        keys = [check_lock_key(k) for k in keys]
    except AuthError as e:
        print(f"instructgpt label unlock: error: {e}", file=sys.stderr)
        return 2
    store = open_store(args.db)
    try:
        limiter = LoginLimiter(store)
        lifted = {k: limiter.lift(k, by="instructgpt label unlock") for k in keys}
    finally:
        store.dispose()
    for key, n in lifted.items():
        print(f"{key}: {n} failed login(s) forgotten" if n else f"{key}: was not locked")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_dir
    from .store import open_store

    store = open_store(args.db)
    try:
        manifest = export_dir(store, args.out)
    finally:
        store.dispose()
    print(json.dumps(manifest["counts"], indent=2))
    return 0


# ---------------------------------------------------------------- parser

def _add_serve(sub) -> None:
    """``label serve``: the web app and its security and task-claiming options."""
    p = sub.add_parser("serve", help="run the web app (uvicorn, 127.0.0.1:8000 by default)")
    _db_arg(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--insecure-cookies", action="store_true",
                   help="drop the Secure cookie flag, for scripts (httpx, requests) on plain http; "
                        "browsers already accept Secure cookies from http://localhost and 127.0.0.1")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes (default 1); they share sessions and rate limits through the database")
    p.add_argument("--no-migrate", action="store_true", help="do not upgrade the schema on start")
    p.add_argument("--login-limit", type=int, default=5,
                   help="login attempts per IP and per user name (a browser that logged in as that user "
                        "before: per device instead) within --login-window (default 5)")
    p.add_argument("--login-window", type=float, default=60.0, help="seconds (default 60)")
    p.add_argument("--login-concurrency", type=int, default=4,
                   help="password checks at once per process; each takes 64 MiB (default 4)")
    p.add_argument("--claim-batch", type=int, default=10, help="tasks per 'Get tasks' click")
    p.add_argument("--claim-lease-hours", type=float, default=12.0,
                   help="a pending task goes back to the pool this long after it was claimed (default 12)")
    p.add_argument("--max-pending", type=int, default=30, help="pending tasks one labeler may hold (default 30)")
    p.add_argument("--behind-proxy", action="store_true", help="trust X-Forwarded-* from a proxy on loopback")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug", "trace"))
    p.set_defaults(handler=cmd_serve)


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``label`` and its sub-subcommands to ``subparsers``; returns the ``label`` parser."""
    _check_extra()
    label = subparsers.add_parser("label", help="Labeling web app: demonstrations and rankings by people.",
                                  description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    label.set_defaults(handler=lambda args: (label.print_help(), 2)[1])
    sub = label.add_subparsers(dest="label_command", metavar="SUBCOMMAND")

    _add_serve(sub)

    p = sub.add_parser("migrate", help="upgrade the database schema (Alembic)")
    _db_arg(p)
    p.add_argument("--revision", default="head")
    p.add_argument("--downgrade", action="store_true",
                   help="go down to --revision (drops what the newer revisions added)")
    p.set_defaults(handler=cmd_migrate)

    p = sub.add_parser("create-admin", help="create an admin account (or --reset-password)")
    _db_arg(p)
    p.add_argument("--username", required=True)
    p.add_argument("--reset-password", action="store_true", help="change the password of an existing user")
    _password_args(p)
    p.set_defaults(handler=cmd_create_admin)

    p = sub.add_parser("create-user", help="create a labeler account directly (instead of an invite)")
    _db_arg(p)
    p.add_argument("--username", required=True)
    p.add_argument("--held-out", action="store_true", help="labels go to the evaluation export only")
    _password_args(p)
    p.set_defaults(handler=cmd_create_user)

    p = sub.add_parser("invite", help="print one-time invite links for new labelers")
    _db_arg(p)
    p.add_argument("--role", choices=("labeler", "admin"), default="labeler")
    p.add_argument("--held-out", action="store_true", help="the invited labeler is held out (evaluation only)")
    p.add_argument("--count", type=_positive_int, default=1)
    p.add_argument("--base-url", default="http://127.0.0.1:8000")
    p.set_defaults(handler=cmd_invite)

    p = sub.add_parser("import", help="create tasks from JSONL (prompts are curated first; the prompts of rank "
                                      "tasks are scrubbed of PII)")
    _db_arg(p)
    p.add_argument("--kind", choices=("prompts", "rank"), required=True,
                   help="prompts: demonstration tasks; rank: ranking tasks from `instructgpt sample`")
    p.add_argument("file")
    p.add_argument("--overlap-fraction", type=float, default=0.1,
                   help="share of tasks given to several labelers (default 0.1)")
    p.add_argument("--overlap-k", type=int, default=2, help="labelers per overlapping task (default 2)")
    p.add_argument("--batch", default="", help="name of this import, in every exported label (default: the file's "
                                               "name; give each round its own, e.g. round2)")
    p.add_argument("--splits", default="train,valid,test", help="prompts: which curated splits become tasks")
    p.add_argument("--curate-config", help="TOML/YAML file of curate options (rank: only scrub_pii is read)")
    p.add_argument("--curate", nargs="*", metavar="key=value",
                   help="curate option overrides (rank: only scrub_pii is read)")
    p.set_defaults(handler=cmd_import)

    p = sub.add_parser("release", help="give a labeler's pending tasks back to the pool")
    _db_arg(p)
    p.add_argument("--username", required=True)
    p.set_defaults(handler=cmd_release)

    p = sub.add_parser("lockouts", help="list the user names, addresses and browsers locked by failed logins")
    _db_arg(p)
    p.add_argument("--login-limit", type=int,
                   help="failed logins that lock a key (default: the server's, as it recorded them at its start)")
    p.add_argument("--login-window", type=float,
                   help="seconds failures count for (default: the server's, as it recorded them at its start)")
    p.set_defaults(handler=cmd_lockouts)

    p = sub.add_parser("unlock", help="lift login lockouts: forget the failed logins of a user name, address or key")
    _db_arg(p)
    p.add_argument("--username", action="append", help="a user name (repeatable)")
    p.add_argument("--address", action="append", help="a client address, e.g. 10.0.0.1 (repeatable)")
    p.add_argument("--key", action="append", help="a key as `lockouts` prints it, e.g. device:<id> (repeatable)")
    p.set_defaults(handler=cmd_unlock)

    p = sub.add_parser("export", help="write demonstrations.jsonl, rankings.jsonl (train split), their _valid and "
                                      "_test files and the evaluation export")
    _db_arg(p)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(handler=cmd_export)
    return label


def main(argv: list[str] | None = None) -> int:
    """``instructgpt label`` on its own (``python -m instructgpt.labeling``)."""
    parser = argparse.ArgumentParser(prog="instructgpt")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["label", *(sys.argv[1:] if argv is None else argv)])
    return run_handler(args)


def run_handler(args: argparse.Namespace) -> int:
    """A subcommand, with a database that cannot be opened or migrated (a file that is not one, a folder, an
    unreachable server, an unknown revision, a revision serve --no-migrate cannot run on) and a path of the
    wrong kind as exit code 2 and one line."""
    from alembic.util.exc import CommandError
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from .store import SchemaError
    try:
        return int(args.handler(args) or 0)
    except (SQLAlchemyError, ArgumentError, CommandError, SchemaError) as e:
        detail = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        print(f"instructgpt label: error: database {getattr(args, 'db', None) or '(default)'}: {detail}",
              file=sys.stderr)
    except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        print(f"instructgpt label: error: {e.filename or e}: {e.strerror or e}", file=sys.stderr)
    return 2


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
