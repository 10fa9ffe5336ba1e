"""POST /v1/stripe/webhook: Stripe's deliveries, verified by signature (no API token)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from billsync.api.deps import BillsyncDep
from billsync.api.responses import JSONBody
from billsync.api.schemas import ErrorRead

router = APIRouter(tags=["stripe"])
WEBHOOK_PATH = "/v1/stripe/webhook"


@router.post("/stripe/webhook", responses={400: {"model": ErrorRead}})
async def receive_webhook(request: Request, billsync: BillsyncDep) -> JSONBody:
    """Verify ``Stripe-Signature`` on the raw body, store the event once, answer at once; the
    event is processed later. A duplicate is acknowledged and ignored."""
    body = await request.body()
    receipt = await run_in_threadpool(
        billsync.webhooks.receive, body, request.headers.get("stripe-signature")
    )
    return JSONBody({"received": True, "id": receipt.event_id, "duplicate": receipt.duplicate})
