"""HTTP endpoints of the sync engine: sync an account now, and see its sync state."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from billsync.api.deps import BillsyncDep
from billsync.api.responses import JSONBody
from billsync.api.schemas import ErrorRead
from billsync.bootstrap import Billsync
from billsync.errors import BillsyncError, NotFound
from billsync.services.sync_status import SyncStatus, sync_status

router = APIRouter(tags=["sync"])
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorRead},
    404: {"model": ErrorRead},
    503: {"model": ErrorRead},
}


class StripeNotConfigured(BillsyncError):
    status_code = 503
    code = "stripe_not_configured"


def _status(billsync: Billsync, account_id: str) -> SyncStatus:
    with billsync.database.read() as connection:
        status = sync_status(connection, account_id)
    if status is None:
        raise NotFound(f"account '{account_id}' does not exist", code="account_not_found")
    return status


def _body(status: SyncStatus) -> dict[str, Any]:
    body = dataclasses.asdict(status)
    body["account"] = body.pop("account_id")
    return body


@router.get("/accounts/{account_id}/sync", responses=ERRORS)
def get_sync(account_id: str, billsync: BillsyncDep) -> JSONBody:
    """Sync state: last synced, unsynced amount, pending lines, last error, per-period state."""
    return JSONBody(_body(_status(billsync, account_id)))


@router.post("/accounts/{account_id}/sync", responses=ERRORS)
async def post_sync(
    account_id: str,
    billsync: BillsyncDep,
    wait: float | None = Query(
        default=None,
        ge=0,
        le=60,
        description="Seconds to wait (default BILLSYNC_ON_DEMAND_WAIT_SECONDS).",
    ),
) -> JSONBody:
    """Sync the account now, ahead of everything else; wait a bounded time. Answers what is in
    Stripe and what is still pending — even when Stripe is slow, never an error for that."""
    syncing = billsync.sync
    if syncing is None:
        raise StripeNotConfigured("billsync has no Stripe key (BILLSYNC_STRIPE_API_KEY)")
    _status(billsync, account_id)
    limit = billsync.settings.on_demand_wait_seconds if wait is None else wait
    outcome = await run_in_threadpool(syncing.scheduler.request, account_id, wait=limit)
    status = _status(billsync, account_id)
    if outcome is None:
        state = "pending"
    elif not outcome.ok:
        state = "failed"
    else:
        state = "synced" if status.pending_lines == 0 else "pending"
    body = _body(status)
    body.update(
        sync="still running" if outcome is None else "recent" if outcome.spaced else "done",
        status=state,
        calls=None if outcome is None else outcome.calls,
        error=None if outcome is None else outcome.error,
    )
    return JSONBody(body)
