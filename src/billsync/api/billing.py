"""The customer's view: the bill (JSON), the Customer Portal, customer tokens, and the page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import date, datetime, timedelta
from typing import Any

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams

from billsync.api.deps import BillsyncDep
from billsync.api.responses import JSONBody
from billsync.api.schemas import ErrorRead, WholeNumber
from billsync.api.web_security import url
from billsync.bootstrap import Billsync
from billsync.core import customer_tokens
from billsync.core.catalog import Catalog
from billsync.core.display import display_unit_price, shown_quantity
from billsync.core.line_state import LineState
from billsync.core.money import decimal_text, format_minor
from billsync.errors import BillsyncError, InvalidRequest
from billsync.services.billing_view import Bill, BillLine, PastInvoice
from billsync.services.lines import parse_period
from billsync.services.usage_export import (
    DEFAULT_GROUPING,
    FORMATS,
    GROUPINGS,
    ExportPlan,
    UsageExports,
    csv_chunks,
    export_range,
    json_chunks,
)
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


def bill_body(bill: Bill, catalog: Catalog) -> dict[str, Any]:
    currency = bill.currency
    return {
        "account": bill.account.id,
        "currency": currency,
        "period": {
            "start": bill.period.start_at,
            "end": bill.period.end_at,
            "status": None if bill.status is None else bill.status.value,
        },
        "current": bill.current,  # the current period (else a past or coming one)
        "lines": [_line_body(item, bill, catalog) for item in bill.lines],
        "subtotal": bill.subtotal,
        "discount": bill.discount,  # the coupon Stripe applies to the draft
        "total": bill.total,
        "pending_total": bill.pending_total,
        "projected_total": bill.projected_total,
        "synced_at": bill.synced_at,
        "amount_due": bill.amount_due,
        "failed_payment": bill.failed_payment,
        # The period's own invoice in Stripe (draft included) with its payments, or null.
        "invoice": None if bill.invoice is None else _invoice_body(bill.invoice),
        "invoices": [_invoice_body(invoice) for invoice in bill.invoices],
        # Every period with usage, and the current one, newest first: ?period=<start>.
        "periods": [
            {
                "start": choice.start,
                "end": choice.end,
                "status": None if choice.status is None else choice.status.value,
                "current": choice.current,
                "invoice_number": choice.invoice_number,
                "invoice_status": choice.invoice_status,
            }
            for choice in bill.periods
        ],
        # Retention removed the period's raw events: its lines stand, its usage export does not.
        "usage_removed": bill.usage_removed,
        # The account's minimum commitment for the period (core.commitment): committed, used so
        # far, and what a close now would top up. Null without one.
        # What the account's prepaid credit grants have left (null: it has none).
        "credit_balance": bill.credit_balance,
        # The account's spend alerts, each with the thresholds crossed in this period.
        "alerts": [{"alert": what, "crossed": list(crossed)} for what, crossed in bill.alerts],
        "commitment": None
        if bill.commitment is None
        else {
            "minimum_amount": bill.commitment,
            "used": bill.used,
            "shortfall": bill.shortfall,
        },
    }


def _line_body(item: BillLine, bill: Bill, catalog: Catalog) -> dict[str, Any]:
    line = item.line
    metric = catalog.metrics.get(line.metric) if item.kind in ("usage", "late") else None
    shown = shown_quantity(line.quantity, metric)
    price, price_unit = display_unit_price(line.unit_price, metric)
    return {
        "key": line.key,
        "kind": item.kind,  # usage, late, credit or charge
        "description": line.description,
        "metric": line.metric,
        "dimensions": line.dimensions,
        "quantity": decimal_text(line.quantity),
        "unit": line.unit,
        "unit_price": decimal_text(line.unit_price),
        "amount": line.amount,
        "late_from": line.late_from,
        # Which price rates it (core.pricing): the catalog's version or a negotiated rate.
        "price": None
        if line.applied is None
        else {
            "source": line.applied.source,
            "effective_from": line.applied.effective_from,
            "label": line.applied.label,
        },
        # The quantity and price in the catalog's display unit, for reading (rounded there;
        # quantity, unit and unit_price above are the ledger's, exact).
        "display": {
            "quantity": shown.text,
            "unit": shown.unit,
            "unit_price": decimal_text(price),
            "price_unit": price_unit,
        },
        "sync": {
            "state": item.state.value,  # in_stripe, accepted or pending
            "label": _sync_label(item, bill, bill.currency),
            "pending_amount": item.pending_amount,
            "charged_amount": item.charged,
        },
    }


def _invoice_body(invoice: PastInvoice) -> dict[str, Any]:
    return {
        "id": invoice.invoice_id,
        "number": invoice.number,
        "period_start": invoice.period_start,
        "status": invoice.status,
        "total": invoice.total,
        "discount": invoice.discount,
        "balance_applied": invoice.balance_applied,
        "carried": invoice.carried,
        "amount_due": invoice.amount_due,
        "amount_paid": invoice.amount_paid,
        "amount_remaining": invoice.amount_remaining,
        "attempt_count": invoice.attempt_count,
        "last_payment_error": invoice.last_payment_error,
        "finalized_at": invoice.finalized_at,
        "paid_at": invoice.paid_at,
        "hosted_invoice_url": invoice.hosted_invoice_url,
        "invoice_pdf": invoice.invoice_pdf,
    }


def _sync_label(item: BillLine, bill: Bill, currency: str) -> str:
    if not item.in_stripe:
        return "pending, not yet on the invoice"
    label = "in Stripe" + (f" as of {bill.synced_at:%Y-%m-%d %H:%M} UTC" if bill.synced_at else "")
    if item.state is LineState.ACCEPTED:
        label += f", at {format_minor(item.charged, currency)} as corrected by support"
    return label


def load_bill(
    billsync: Billsync, account_id: str, period: str | date = "current", *, daily: bool = False
) -> Bill:
    with billsync.database.read() as connection:
        account = billsync.accounts.get(connection, account_id)
        return billsync.billing.bill(connection, account, period, daily=daily)


@router.get("/accounts/{account_id}/billing", responses=ERRORS)
async def get_billing(
    account_id: str,
    billsync: BillsyncDep,
    period: str = Query(default="current", description="'current' or a date YYYY-MM-DD"),
) -> Response:
    """A period line by line (each labelled in Stripe or pending) — the current one, or with
    ``period`` any other — its total and projection, late usage, its invoice and payments;
    the account's periods, past invoices, the amount due and any failed payment. Served from
    billsync's own records: no Stripe call."""
    which = parse_period(period)
    variant = which if isinstance(which, str) else which.isoformat()
    body = billsync.bill_cache.peek(account_id, variant)
    if body is None:  # compute (or wait for the computation) off the event loop
        body = await run_in_threadpool(
            billsync.bill_cache.get,
            account_id,
            lambda: orjson.dumps(
                bill_body(load_bill(billsync, account_id, which), billsync.catalog)
            ),
            variant,
        )
    return Response(body, media_type="application/json")


class UsageRowRead(BaseModel):
    metric: str
    description: str
    unit: str = Field(description="The catalog's unit of the metric (the ledger's and Stripe's).")
    dimensions: dict[str, str] = Field(description="The metric's group_by dimensions.")
    day: str | None = Field(default=None, description="UTC day (group_by=metric,day).")
    hour: str | None = Field(
        default=None, description="UTC hour, 2026-11-15T12:00:00Z (group_by=metric,hour)."
    )
    quantity: str = Field(description="Exact decimal sum of the events, in the catalog's unit.")
    invoice_period: date = Field(description="Start of the period whose invoice carries it.")


class UsageExportRead(BaseModel):
    account: str
    from_: datetime = Field(alias="from")
    to: datetime
    group_by: str
    rows: list[UsageRowRead]


_MOMENT_SCHEMA = {
    "anyOf": [{"type": "string", "format": "date"}, {"type": "string", "format": "date-time"}]
}
USAGE_PARAMETERS = [
    {
        "name": "from", "in": "query", "required": False, "schema": _MOMENT_SCHEMA,
        "description": "Start of the range, inclusive: a date (midnight UTC) or an RFC 3339 "
        "moment with an offset. Default: the start of the current period.",
    },
    {
        "name": "to", "in": "query", "required": False, "schema": _MOMENT_SCHEMA,
        "description": "End of the range, exclusive (same forms). Default: the end of the "
        "current period. After from; at most 400 days later (45 with group_by=metric,hour).",
    },
    {
        "name": "group_by", "in": "query", "required": False,
        "schema": {"type": "string", "enum": list(GROUPINGS), "default": DEFAULT_GROUPING},
        "description": "A row per line (metric and its group_by dimensions) and UTC day or "
        "hour, or over the whole range (metric).",
    },
    {
        "name": "format", "in": "query", "required": False,
        "schema": {"type": "string", "enum": list(FORMATS), "default": "json"},
        "description": "json, or csv (columns metric, description, unit, dimensions, day or "
        "hour, quantity, invoice_period).",
    },
]  # fmt: skip
USAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": UsageExportRead,
        "description": "The usage, streamed: JSON, or CSV with format=csv.",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    },
    404: {"model": ErrorRead, "description": "No such account (account_not_found)."},
    410: {
        "model": ErrorRead,
        "description": "Retention removed raw usage in the range (usage_removed): the "
        "message names the periods and where exportable usage starts.",
    },
    422: {
        "model": ErrorRead,
        "description": "A parameter is not valid: invalid_range (from/to unreadable or not in "
        "order), range_too_long, invalid_group_by, invalid_format, repeated_parameter.",
    },
}


def _single(query: QueryParams, name: str) -> str | None:
    values = query.getlist(name)
    if len(values) > 1:
        raise InvalidRequest(
            f"give {name} once, not {len(values)} times", code="repeated_parameter"
        )
    return values[0] if values else None


def open_export(
    billsync: Billsync,
    account_id: str,
    query: QueryParams,
    *,
    default_period: str | date = "current",
) -> tuple[ExitStack, Connection, ExportPlan]:
    """The export's plan, checked, and the read transaction its rows are streamed from (the
    caller closes the stack once the last row is sent)."""
    exports = UsageExports(billsync.lines)
    stack = ExitStack()
    try:
        connection = stack.enter_context(billsync.database.read())
        account = billsync.accounts.get(connection, account_id)
        default = billsync.lines.period_of(account, default_period)
        wanted = export_range(
            _single(query, "from"), _single(query, "to"), _single(query, "group_by"), default
        )
        plan = exports.plan(connection, account, wanted)
    except BaseException:
        stack.close()
        raise
    return stack, connection, plan


def export_response(
    billsync: Billsync, opened: tuple[ExitStack, Connection, ExportPlan], kind: str
) -> Response:
    stack, connection, plan = opened
    rows = UsageExports(billsync.lines).rows(connection, plan)

    def stream() -> Iterator[bytes]:
        with stack:  # the read transaction ends with the last chunk (or a dropped download)
            yield from (csv_chunks if kind == "csv" else json_chunks)(plan, rows)

    if kind == "json":
        return StreamingResponse(stream(), media_type="application/json")
    wanted = plan.range
    safe_id = re.sub(r"[^A-Za-z0-9._-]", "_", plan.account.id)
    name = f"usage-{safe_id}-{wanted.start:%Y%m%dT%H%MZ}-{wanted.end:%Y%m%dT%H%MZ}.csv"
    return StreamingResponse(
        stream(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get(
    "/accounts/{account_id}/usage",
    responses=USAGE_RESPONSES,
    openapi_extra={"parameters": USAGE_PARAMETERS},
)
async def get_usage(account_id: str, request: Request, billsync: BillsyncDep) -> Response:
    """The account's usage from the ledger's raw events, per line (metric and dimensions) and
    UTC day or hour, exact: the rows of one ``invoice_period`` summed per metric and
    dimensions are that invoice's usage lines. Platform token, or the account's customer
    token. Streamed; refused (410) where retention removed the raw events."""
    kind = _single(request.query_params, "format") or "json"
    if kind not in FORMATS:
        raise InvalidRequest(
            f"format must be json or csv, got {kind[:40]!r}", code="invalid_format"
        )
    opened = await run_in_threadpool(open_export, billsync, account_id, request.query_params)
    return export_response(billsync, opened, kind)


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
