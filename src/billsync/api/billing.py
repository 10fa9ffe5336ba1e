"""The customer's view: the bill (JSON), the Customer Portal, customer tokens, and the page."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from billsync.api.deps import BillsyncDep
from billsync.api.responses import JSONBody
from billsync.api.schemas import ErrorRead, WholeNumber
from billsync.api.web_security import url
from billsync.bootstrap import Billsync
from billsync.core import customer_tokens
from billsync.core.line_state import LineState
from billsync.core.money import decimal_text, format_minor
from billsync.errors import BillsyncError, InvalidRequest
from billsync.services.billing_view import Bill, BillLine
from billsync.sync.budget import Lane
from billsync.sync.port import StripeRejected

router = APIRouter(tags=["billing"])
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorRead}, 404: {"model": ErrorRead}, 503: {"model": ErrorRead},
}  # fmt: skip


class StripeUnavailable(BillsyncError):
    status_code = 503
    code = "stripe_unavailable"


class PortalNotConfigured(BillsyncError):
    """Stripe refuses portal sessions until the portal's settings are saved for the mode."""

    status_code = 503
    code = "portal_not_configured"


# Stripe's words when the Customer Portal's settings were never saved for the key's mode (the
# refusal has no error code of its own: "You can’t create a portal session in test mode until
# you save your customer portal settings in test mode at …").
PORTAL_NOT_SET_UP = "save your customer portal settings"


# Where the portal sends the customer back: an http(s) address with a host, no spaces or
# control characters (a ``javascript:`` or ``data:`` URL would run in the customer's browser on
# the way back). The published schema says so; ``check_return_url`` holds the same rule for
# callers that do not go through the schema (the customer page's form).
RETURN_URL = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\x00-\x20\x7F/?#\[\]\\]+[^\x00-\x20\x7F]*$"
_RETURN_URL = re.compile(RETURN_URL)


class PortalCreate(BaseModel):
    return_url: str | None = Field(default=None, max_length=2000, pattern=RETURN_URL)


class CustomerTokenCreate(BaseModel):
    ttl_seconds: WholeNumber = Field(default=900, ge=1, le=86_400)


def bill_body(bill: Bill) -> dict[str, Any]:
    currency = bill.currency
    return {
        "account": bill.account.id,
        "currency": currency,
        "period": {"start": bill.period.start_at, "end": bill.period.end_at},
        "lines": [
            {
                "key": item.line.key,
                "description": item.line.description,
                "metric": item.line.metric,
                "dimensions": item.line.dimensions,
                "quantity": decimal_text(item.line.quantity),
                "unit": item.line.unit,
                "unit_price": decimal_text(item.line.unit_price),
                "amount": item.line.amount,
                "late_from": item.line.late_from,
                "sync": {
                    "state": item.state.value,  # in_stripe, accepted or pending
                    "label": _sync_label(item, bill, currency),
                    "pending_amount": item.pending_amount,
                    "charged_amount": item.charged,
                },
            }
            for item in bill.lines
        ],
        "subtotal": bill.subtotal,
        "discount": bill.discount,  # the coupon Stripe applies to the draft
        "total": bill.total,
        "pending_total": bill.pending_total,
        "projected_total": bill.projected_total,
        "synced_at": bill.synced_at,
        "amount_due": bill.amount_due,
        "failed_payment": bill.failed_payment,
        "invoices": [
            {
                "id": invoice.invoice_id,
                "number": invoice.number,
                "period_start": invoice.period_start,
                "status": invoice.status,
                "total": invoice.total,
                "discount": invoice.discount,
                "balance_applied": invoice.balance_applied,
                "carried": invoice.carried,
                "amount_due": invoice.amount_due,
                "amount_remaining": invoice.amount_remaining,
                "paid_at": invoice.paid_at,
                "hosted_invoice_url": invoice.hosted_invoice_url,
                "invoice_pdf": invoice.invoice_pdf,
            }
            for invoice in bill.invoices
        ],
    }


def _sync_label(item: BillLine, bill: Bill, currency: str) -> str:
    if not item.in_stripe:
        return "pending, not yet on the invoice"
    label = "in Stripe" + (f" as of {bill.synced_at:%Y-%m-%d %H:%M} UTC" if bill.synced_at else "")
    if item.state is LineState.ACCEPTED:
        label += f", at {format_minor(item.charged, currency)} as corrected by support"
    return label


def load_bill(billsync: Billsync, account_id: str, *, daily: bool = False) -> Bill:
    with billsync.database.read() as connection:
        account = billsync.accounts.get(connection, account_id)
        return billsync.billing.bill(connection, account, daily=daily)


@router.get("/accounts/{account_id}/billing", responses=ERRORS)
async def get_billing(account_id: str, billsync: BillsyncDep) -> Response:
    """The current period line by line (each labelled in Stripe or pending), its total and
    projection, late usage, past invoices, the amount due and any failed payment. Served from
    billsync's own records: no Stripe call."""
    body = billsync.bill_cache.peek(account_id)
    if body is None:  # compute (or wait for the computation) off the event loop
        body = await run_in_threadpool(
            billsync.bill_cache.get,
            account_id,
            lambda: orjson.dumps(bill_body(load_bill(billsync, account_id))),
        )
    return Response(body, media_type="application/json")


def check_return_url(url: str) -> None:
    if len(url) > 2000 or _RETURN_URL.match(url) is None:
        raise InvalidRequest(
            "return_url must be an http:// or https:// address with a host (at most 2000 "
            "characters, no spaces or control characters)",
            code="invalid_return_url",
        )


def open_portal(billsync: Billsync, account_id: str, return_url: str | None) -> dict[str, Any]:
    """Flush pending usage (bounded wait), then open a Customer Portal session."""
    if return_url is not None:
        check_return_url(return_url)
    syncing = billsync.sync
    if syncing is None:
        raise StripeUnavailable("billsync has no Stripe key", code="stripe_not_configured")
    with billsync.database.read() as connection:
        billsync.accounts.get(connection, account_id)
    outcome = syncing.scheduler.request(account_id, wait=billsync.settings.on_demand_wait_seconds)
    bill = load_bill(billsync, account_id)
    customer = bill.account.stripe_customer_id
    try:
        if customer is None:  # nothing to sync yet, or the sync is still on its way
            customer = syncing.service.ensure_customer(account_id)
        portal = syncing.on_lane(Lane.ON_DEMAND)  # a person is waiting
        url = portal.create_portal_session(customer=customer, return_url=return_url)
    except StripeRejected as refused:
        if PORTAL_NOT_SET_UP in refused.message:
            raise PortalNotConfigured(
                "the Stripe Customer Portal is not set up for this Stripe account in this mode: "
                "save its settings in the Dashboard (Settings → Billing → Customer portal; "
                "https://dashboard.stripe.com/test/settings/billing/portal in test mode), "
                f"then try again — `billsync doctor` checks it. Stripe said: {refused.message}"
            ) from None
        raise StripeUnavailable(f"Stripe did not open the portal: {refused}") from None
    except Exception as failure:  # the gateway's failures: Stripe is down or slow
        raise StripeUnavailable(f"Stripe did not open the portal: {failure}") from None
    return {
        "url": url,
        "synced": outcome is not None and outcome.ok and bill.pending_lines == 0,
        "pending_lines": bill.pending_lines,
        "pending_total": bill.pending_total,
        "note": None
        if bill.pending_lines == 0
        else f"{bill.pending_lines} line(s) are still on their way to the invoice",
    }


@router.post("/accounts/{account_id}/portal", responses=ERRORS)
async def post_portal(account_id: str, body: PortalCreate, billsync: BillsyncDep) -> JSONBody:
    """The Stripe Customer Portal for this account, after an on-demand sync (bounded: if Stripe
    is slow, the portal still opens and the answer says what is pending)."""
    result = await run_in_threadpool(open_portal, billsync, account_id, body.return_url)
    return JSONBody(result)


@router.post("/accounts/{account_id}/customer-tokens", status_code=201, responses=ERRORS)
def post_customer_token(
    account_id: str, body: CustomerTokenCreate, billsync: BillsyncDep, request: Request
) -> JSONBody:
    """A short-lived token for this account's customer: it opens their billing page and portal
    and nothing else. Platform token only."""
    if getattr(request.state, "customer_account", None) is not None:
        raise InvalidRequest("customers cannot mint tokens", code="forbidden")
    with billsync.database.read() as connection:
        billsync.accounts.get(connection, account_id)
    now = billsync.clock.now()
    ttl = timedelta(seconds=body.ttl_seconds)
    token = customer_tokens.issue(billsync.customer_token_secret, account_id, now, ttl)
    return JSONBody(
        {
            "token": token,
            "account": account_id,
            "expires_at": now + ttl,
            "billing_url": url(f"/billing/{account_id}?token={token}"),
        },
        status_code=201,
    )
