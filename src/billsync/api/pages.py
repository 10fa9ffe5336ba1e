"""The customer billing page: ``/billing/{account}`` — server-rendered, works without
JavaScript, readable on a phone. Opened with a customer token (``?token=`` once, then a
cookie scoped to the page) or the platform's API token."""

from __future__ import annotations

import hmac
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from billsync.api.billing import StripeUnavailable, load_bill, open_portal
from billsync.api.deps import BillsyncDep
from billsync.api.web_security import root, secure_cookies, url
from billsync.bootstrap import Billsync
from billsync.core import customer_tokens
from billsync.core.money import decimal_text, format_minor
from billsync.errors import NotFound
from billsync.services.billing_view import Bill

router = APIRouter(include_in_schema=False)
TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parent.parent / "templates"),
    autoescape=select_autoescape(["html"]),
)
TEMPLATES.globals["root"] = root  # links and forms under the prefix billsync is served at
COOKIE = "billsync_customer"


def _allowed(
    billsync: Billsync, account_id: str, request: Request, token: str | None
) -> str | None:
    """The customer token in use, "" for the platform's API token, None if neither."""
    for candidate in (token, request.cookies.get(COOKIE)):
        if not candidate:
            continue
        try:
            opened = customer_tokens.read(
                billsync.customer_token_secret, candidate, billsync.clock.now()
            )
        except customer_tokens.TokenError:
            continue
        if opened.account_id == account_id:
            return candidate
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and any(
        hmac.compare_digest(presented.encode(), t.encode()) for t in billsync.settings.api_tokens()
    ):
        return ""
    return None


def _form_allowed(billsync: Billsync, account_id: str, request: Request, token: str) -> bool:
    """The portal form proves itself with the token it carries — a valid customer token for
    this very account (the page's cookie alone does not do: another site can make the browser
    send it) — or, for the platform, the API token in the Authorization header."""
    if token:
        try:
            opened = customer_tokens.read(
                billsync.customer_token_secret, token, billsync.clock.now()
            )
        except customer_tokens.TokenError:
            return False
        return opened.account_id == account_id
    return _allowed(billsync, account_id, request, None) == "" and bool(
        request.headers.get("authorization")
    )


def _chart(bill: Bill) -> list[dict[str, Any]]:
    """Per metric, a bar per day of the period so far, scaled to the metric's busiest day."""
    days: list[str] = []
    day = bill.period.start
    while day < bill.period.end and len(days) < 31:
        days.append(day.isoformat())
        day += timedelta(days=1)
    by_metric: dict[str, dict[str, Decimal]] = defaultdict(dict)
    for when, metric, quantity in bill.daily:
        by_metric[metric][when] = quantity
    units = {item.line.metric: (item.line.description, item.line.unit) for item in bill.lines}
    charts = []
    for metric, values in sorted(by_metric.items()):
        peak = max(values.values(), default=Decimal(0)) or Decimal(1)
        description, unit = units.get(metric, (metric, ""))
        charts.append(
            {
                "metric": metric,
                "title": description.split(" (")[0],
                "unit": unit,
                "bars": [
                    {
                        "day": d,
                        "height": float(values.get(d, Decimal(0)) / peak),
                        "label": f"{d}: {decimal_text(values.get(d, Decimal(0)))} {unit}",
                    }
                    for d in days
                ],
                "peak": decimal_text(peak),
            }
        )
    return charts


def _render(bill: Bill, token: str, message: str | None = None) -> str:
    def money(amount: int) -> str:
        return format_minor(amount, bill.currency)

    return TEMPLATES.get_template("billing.html").render(
        bill=bill, money=money, decimal=decimal_text, charts=_chart(bill), token=token,
        currency=bill.currency.upper(), message=message,
    )  # fmt: skip


def _refused() -> HTMLResponse:
    return HTMLResponse(TEMPLATES.get_template("expired.html").render(), status_code=401)


@router.get("/billing/{account_id}")
async def billing_page(
    account_id: str, request: Request, billsync: BillsyncDep, token: str | None = None
) -> Response:
    allowed = _allowed(billsync, account_id, request, token)
    if allowed is None:
        return _refused()
    try:
        bill = await run_in_threadpool(load_bill, billsync, account_id, daily=True)
    except NotFound:
        return HTMLResponse("<h1>No such account</h1>", status_code=404)
    response = HTMLResponse(_render(bill, allowed))
    if allowed and token:
        opened = customer_tokens.read(billsync.customer_token_secret, allowed, billsync.clock.now())
        life = max(1, opened.expires_at - int(billsync.clock.now().timestamp()))
        response.set_cookie(
            COOKIE, allowed, max_age=life, path=url(f"/billing/{account_id}"),
            httponly=True, samesite="strict", secure=secure_cookies(billsync.settings, request),
        )  # fmt: skip
    return response


@router.post("/billing/{account_id}/portal")
async def billing_portal(
    account_id: str, request: Request, billsync: BillsyncDep, token: str = Form(default="")
) -> Response:
    """The page's "manage payment methods and invoices" button. The form carries the page's
    token, so another site cannot post it on the customer's behalf."""
    if not _form_allowed(billsync, account_id, request, token):
        return _refused()
    base = billsync.settings.public_url
    return_url = (
        f"{base.rstrip('/')}/billing/{quote(account_id, safe='')}"
        if base
        else str(request.url_for("billing_page", account_id=account_id))
    )
    try:
        result = await run_in_threadpool(open_portal, billsync, account_id, return_url)
    except StripeUnavailable as failure:
        bill = await run_in_threadpool(load_bill, billsync, account_id, daily=True)
        return HTMLResponse(_render(bill, token, failure.message), status_code=503)
    return RedirectResponse(result["url"], status_code=303)
