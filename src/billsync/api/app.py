"""The FastAPI application: routes under /v1, all behind the API token."""

from __future__ import annotations

from fastapi import Depends, FastAPI

from billsync import __version__
from billsync.api import accounts, catalog, usage
from billsync.api.deps import require_api_token
from billsync.api.errors import install_error_handlers
from billsync.bootstrap import Billsync, build
from billsync.config import Settings


def create_app(billsync: Billsync) -> FastAPI:
    app = FastAPI(
        title="billsync",
        version=__version__,
        description="Usage ledger and Stripe invoice sync.",
    )
    app.state.billsync = billsync
    install_error_handlers(app)
    protected = [Depends(require_api_token)]
    app.include_router(accounts.router, prefix="/v1", dependencies=protected)
    app.include_router(usage.router, prefix="/v1", dependencies=protected)
    app.include_router(catalog.router, prefix="/v1", dependencies=protected)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (each API worker process builds its own)."""
    return create_app(build(Settings()))
