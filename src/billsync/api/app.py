"""The FastAPI application: routes under /v1, all behind the API token; health, readiness and
metrics beside them."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from billsync import __version__
from billsync.api import (
    accounts,
    billing,
    catalog,
    console,
    observability,
    openapi,
    pages,
    stripe_webhook,
    sync,
    usage,
)
from billsync.api.customer_rate import CustomerRateLimit
from billsync.api.errors import install_error_handlers
from billsync.api.guard import ApiGuard
from billsync.api.request_text import RefuseUnsafeText
from billsync.api.responses import JSONBody
from billsync.api.web_security import SecurityHeaders
from billsync.bootstrap import Billsync, build
from billsync.config import RUN_SCHEDULER, Settings
from billsync.core import customer_tokens
from billsync.db import migrate
from billsync.observability import metrics
from billsync.runtime import settle_heap

# Every router of the app, with the prefix it is served under.
ROUTERS: tuple[tuple[APIRouter, str], ...] = (
    (accounts.router, "/v1"),
    (usage.router, "/v1"),
    (catalog.router, "/v1"),
    (sync.router, "/v1"),
    (stripe_webhook.router, "/v1"),
    (billing.router, "/v1"),
    (pages.router, ""),
    (console.router, ""),
)


def customer_reader(billsync: Billsync) -> Callable[[str], str | None]:
    def account_of(token: str) -> str | None:
        try:
            return customer_tokens.read(
                billsync.customer_token_secret, token, billsync.clock.now()
            ).account_id
        except customer_tokens.TokenError:
            return None

    return account_of


def create_app(billsync: Billsync, *, owns_billsync: bool = False) -> FastAPI:
    """The ASGI app. With ``owns_billsync`` it also shuts billsync down (group commit drained,
    connections closed) when the server stops."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        settings = billsync.settings
        if owns_billsync:  # a server process: its long-lived heap is built now
            settle_heap()
        if owns_billsync and billsync.sync is not None and os.environ.get(RUN_SCHEDULER) == "1":
            billsync.sync.scheduler.start(
                workers=settings.sync_workers, tick_seconds=settings.scheduler_tick_seconds
            )
        yield
        if owns_billsync:
            billsync.close()

    app = FastAPI(
        title="billsync",
        version=__version__,
        description="Usage ledger and Stripe invoice sync.",
        lifespan=lifespan,
    )
    app.state.billsync = billsync
    install_error_handlers(app)
    # Innermost: a path or query string with characters no text may carry (NUL, bidi
    # overrides...) is refused before any route looks it up — after the guard (no token: 401).
    app.add_middleware(RefuseUnsafeText)
    # Inside the guard: a customer token is counted once the guard has checked it.
    app.add_middleware(
        CustomerRateLimit,
        per_minute=billsync.settings.customer_requests_per_minute,
        now=lambda: billsync.clock.now().timestamp(),
    )
    # Every /v1 route is behind the guard: token and body size checked before any parsing.
    app.add_middleware(
        ApiGuard,
        tokens=billsync.settings.api_tokens(),
        max_body_bytes=billsync.settings.max_body_bytes,
        body_timeout_seconds=billsync.settings.body_timeout_seconds,
        signed_routes=[stripe_webhook.signed_route(billsync.settings)],
        customer_account_of=customer_reader(billsync),
    )
    # Outermost, so refusals carry the headers too.
    app.add_middleware(SecurityHeaders, settings=billsync.settings)
    for router, prefix in ROUTERS:
        app.include_router(router, prefix=prefix)

    openapi.install(app, billsync)
    observability.install(app, metrics.registry_for(billsync), ROUTERS)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        """Liveness: the process answers (it never touches the database)."""
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> JSONBody:
        """Readiness: the database answers and its schema is the one this code expects; a
        load balancer sends no traffic to a process that says 503."""
        database = billsync.database
        try:
            current = migrate.current_revision(database)
        except (DBAPIError, PoolTimeout, OSError) as error:
            detail = f"unreachable: {type(getattr(error, 'orig', None) or error).__name__}"
            return JSONBody({"status": "not_ready", "database": detail}, status_code=503)
        head = migrate.head_revision(database)
        if current != head:
            return JSONBody(
                {"status": "not_ready", "database": "ok",
                 "schema": f"at {current}, this code needs {head}: run `billsync db upgrade`"},
                status_code=503,
            )  # fmt: skip
        return JSONBody({"status": "ready", "database": "ok", "schema": head})

    return app


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (each API worker process builds its own)."""
    return create_app(build(Settings()), owns_billsync=True)
