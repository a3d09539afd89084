"""The FastAPI application: ``create_app(cfg)``.

One process serves everything (the login rate limiter lives in its memory).
Run it with ``instructgpt label serve`` (uvicorn on 127.0.0.1 by default).
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from . import api, views_admin, views_auth, views_labeler
from .security import RateLimiter, server_key
from .settings import LabelConfig
from .store import Store
from .tasks import TaskError
from .web import HERE, LoginRequired, SecurityHeaders, redirect, render

ROUTERS = (views_auth.router, views_labeler.router, views_admin.router, api.router)


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _error(request: Request, status: int, message: str):
    if _wants_json(request):
        return JSONResponse({"detail": message}, status_code=status)
    return render(request, "error.html", status=status, message=message)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired):
        if _wants_json(request):
            return JSONResponse({"detail": "log in first"}, status_code=401)
        return redirect("/login")

    @app.exception_handler(TaskError)
    async def task_error(request: Request, exc: TaskError):
        return _error(request, exc.status, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return _error(request, exc.status_code, str(exc.detail))


def create_app(cfg: LabelConfig | None = None, store: Store | None = None) -> FastAPI:
    """The labeling web app for ``cfg`` (its database is migrated on start unless told not to)."""
    cfg = cfg or LabelConfig()
    store = store or Store(cfg.db or None)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if cfg.migrate:
            store.migrate()
        with store.tx() as s:
            app.state.secret = server_key(s)
        yield
        store.dispose()

    app = FastAPI(title="instructgpt label", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.cfg, app.state.store = cfg, store
    app.state.limiter = RateLimiter(cfg.login_limit, cfg.login_window)
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
