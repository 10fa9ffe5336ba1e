"""POST /v1/stripe/webhook: Stripe's deliveries, verified by signature (no API token)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from billsync.api.deps import BillsyncDep
from billsync.api.guard import SignedRoute
from billsync.api.responses import JSONBody
from billsync.api.schemas import ErrorRead
from billsync.config import Settings
from billsync.core import webhook_signature

router = APIRouter(tags=["stripe"])
WEBHOOK_PATH = "/v1/stripe/webhook"


def signed_route(settings: Settings) -> SignedRoute:
    """What the API's gate checks before this route reads a byte: anyone may call it."""
    return SignedRoute(
        path=WEBHOOK_PATH,
        method="POST",
        signature_header=b"stripe-signature",
        well_formed=webhook_signature.well_formed,
        max_body_bytes=settings.webhook_max_body_bytes,
        max_concurrent=settings.webhook_max_concurrent,
    )


@router.post(
    "/stripe/webhook",
    responses={400: {"model": ErrorRead}, 413: {"model": ErrorRead}, 503: {"model": ErrorRead}},
)
async def receive_webhook(request: Request, billsync: BillsyncDep) -> JSONBody:
    """Verify ``Stripe-Signature`` on the raw body, store the event once, answer at once; the
    event is processed later. A duplicate is acknowledged and ignored. A malformed signature
    header is refused before the body is read (400), a body over
    ``BILLSYNC_WEBHOOK_MAX_BODY_BYTES`` with 413, and deliveries beyond
    ``BILLSYNC_WEBHOOK_MAX_CONCURRENT`` at once with 503 and ``Retry-After`` (Stripe retries)."""
    body = await request.body()  # bounded by the ApiGuard
    receipt = await run_in_threadpool(
        billsync.webhooks.receive, body, request.headers.get("stripe-signature")
    )
    return JSONBody({"received": True, "id": receipt.event_id, "duplicate": receipt.duplicate})
