"""The FastAPI application: ``create_app(cfg)``.

Everything shared lives in the database (sessions, login rate limits, tasks),
so ``instructgpt label serve --workers N`` may run several processes. Each
process runs at most ``cfg.login_concurrency`` password checks at once.
"""

from __future__ import annotations

import asyncio
import json
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from . import api, views_admin, views_auth, views_labeler
from .quality import AgreementTally
from .security import LoginLimiter, record_login_limits, server_key
from .settings import LabelConfig
from .store import Store, check_revision
from .tasks import TaskError
from .web import (
    HERE,
    BodyLimit,
    LoginRequired,
    PlainServerErrors,
    SecurityHeaders,
    SizeLimit,
    error_response,
    redirect,
)

ROUTERS = (views_auth.router, views_labeler.router, views_admin.router, api.router)
CONFIG_ENV = "INSTRUCTGPT_LABEL_SERVE_CONFIG"  # the config of --workers N processes (JSON)


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired):
        if _wants_json(request):
            return error_response(request, 401, "log in first")
        return redirect("/login")

    @app.exception_handler(TaskError)
    async def task_error(request: Request, exc: TaskError):
        return error_response(request, exc.status, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return error_response(request, exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        # Only path parameters are declared (ids): one that is not an id names nothing.
        if any(err.get("loc", ("",))[0] == "path" for err in exc.errors()):
            return error_response(request, 404, "not found")
        return error_response(request, 422, "invalid request")


def create_app(cfg: LabelConfig | None = None, store: Store | None = None) -> FastAPI:
    """The labeling web app for ``cfg`` (its database is migrated on start; if told not to, a database at
    another revision is refused with ``SchemaError``)."""
    cfg = cfg or LabelConfig()
    store = store or Store(cfg.db or None)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if cfg.migrate:
            store.migrate()
        else:
            check_revision(store.engine)
        with store.tx() as s:
            app.state.secret = server_key(s)
            record_login_limits(s, cfg.login_limit, cfg.login_window)   # what `label lockouts` judges by
        app.state.password_checks = asyncio.Semaphore(cfg.login_concurrency)
        yield
        store.dispose()

    app = FastAPI(title="instructgpt label", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.cfg, app.state.store = cfg, store
    app.state.limiter = LoginLimiter(store, cfg.login_limit, cfg.login_window)
    app.state.claims = cfg.claim_policy()
    app.state.agreement = AgreementTally(store)   # the admin page's agreement, read incrementally
    # Added innermost first: SecurityHeaders wraps everything, so error pages get the headers too.
    app.add_middleware(BodyLimit, limit=SizeLimit.kib(cfg.max_body_kb),
                       upload_limit=SizeLimit.upload_mib(cfg.max_upload_mb))
    app.add_middleware(PlainServerErrors)
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    for router in ROUTERS:
        app.include_router(router)
    _install_error_handlers(app)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return Response(status_code=204)

    @app.get("/healthz")
    def healthz():
        return {"ok": True, "db": store.dialect}

    return app


def app_from_env() -> FastAPI:
    """The app of one ``--workers`` process: its config comes from ``$INSTRUCTGPT_LABEL_SERVE_CONFIG``."""
    return create_app(LabelConfig(**json.loads(os.environ[CONFIG_ENV])))
