"""The customer billing page: ``/billing/{account}`` — server-rendered, works without
JavaScript, readable on a phone. Opened with a customer token (``?token=`` once: the page
moves it into a cookie scoped to the page and redirects to the same address without it, so the
token leaves the address bar and the history) or the platform's API token. ``?period=`` shows
any period line by line; ``/billing/{account}/usage.csv?period=`` downloads its usage."""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams

from billsync.api.billing import (
    StripeUnavailable,
    export_response,
    load_bill,
    open_export,
    open_portal,
)
from billsync.api.deps import BillsyncDep
from billsync.api.web_security import root, secure_cookies, url
from billsync.bootstrap import Billsync
from billsync.core import customer_tokens
from billsync.core.catalog import Catalog, Metric
from billsync.core.display import (
    display_unit_price,
    format_money,
    format_price,
    in_display_unit,
    plain,
    shown_quantity,
    unit_label,
)
from billsync.core.periods import PeriodStatus
from billsync.core.pricing import CATALOG
from billsync.errors import InvalidRequest, NotFound
from billsync.services.billing_view import Bill, BillLine
from billsync.services.lines import parse_period
from billsync.services.statement import statement_csv
from billsync.services.usage_export import UsageRemoved

router = APIRouter(include_in_schema=False)
TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parent.parent / "templates"),
    autoescape=select_autoescape(["html"]),
)
TEMPLATES.globals["root"] = root  # links and forms under the prefix billsync is served at
COOKIE = "billsync_customer"
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
PERIOD_STATES = {
    PeriodStatus.OPEN: "open",
    PeriodStatus.CLOSING: "closing",
    PeriodStatus.REVIEW: "in review",
    PeriodStatus.HELD: "in review",
    PeriodStatus.FINALIZED: "invoiced",
}


def page_path(account_id: str) -> str:
    """The page's address as the browser asks for it (and the cookie's path): account ids
    are URL-safe as they are ([A-Za-z0-9_.:-])."""
    return url(f"/billing/{quote(account_id, safe=':')}")


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


# --- the daily charts: inline SVG with labelled days and a value scale --------------------

WIDTH, HEIGHT = 320, 150
LEFT, RIGHT, TOP, BOTTOM = 46, 6, 8, 20  # room for the scale's labels and the days'
NICE_STEPS = (Decimal(1), Decimal(2), Decimal("2.5"), Decimal(5), Decimal(10))
# A period is a month; the one that follows a change of anchor day can run up to two.
MAX_CHART_DAYS = 62


def nice_ceiling(peak: Decimal) -> Decimal:
    """The smallest of 1, 2, 2.5, 5 × 10ⁿ at or above ``peak``: the top of a readable scale."""
    if peak <= 0:
        return Decimal(1)
    power = Decimal(1).scaleb(peak.adjusted())
    return next(step * power for step in NICE_STEPS if step * power >= peak)


def _day_label(day: date, first: bool) -> str:
    return f"{MONTHS[day.month - 1]} {day.day}" if first or day.day == 1 else str(day.day)


@dataclass(frozen=True, slots=True)
class Axis:
    y: float
    label: str


def _chart(bill: Bill, catalog: Catalog) -> list[dict[str, Any]]:
    """Per metric, a bar per day of the period, in the metric's display unit, with the days
    labelled under the bars and a scale (0, half, top) beside them."""
    days: list[date] = []
    day = bill.period.start
    while day < bill.period.end and len(days) < MAX_CHART_DAYS:
        days.append(day)
        day += timedelta(days=1)
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_width / max(len(days), 1)
    every = 1 if len(days) <= 10 else 5 if len(days) <= 31 else 7
    titles = {item.line.metric: item.line.description for item in bill.lines}
    charts = []
    for metric_id, values in sorted(bill.daily.items()):
        metric = catalog.metrics.get(metric_id)
        shown = {d: in_display_unit(q, metric) for d, q in values.items()}
        top = nice_ceiling(max(shown.values(), default=Decimal(0)))
        unit = shown_quantity(Decimal(0), metric).unit
        bars = []
        for index, when in enumerate(days):
            quantity = values.get(when.isoformat(), Decimal(0))
            value = shown.get(when.isoformat(), Decimal(0))
            height = round(float(value / top) * plot_height, 2)
            bars.append(
                {
                    "x": round(LEFT + index * slot + slot * 0.15, 2),
                    "y": round(TOP + plot_height - height, 2),
                    "width": round(slot * 0.7, 2),
                    "height": height,
                    "title": f"{when.isoformat()}: {shown_quantity(quantity, metric).label}",
                    "label": _day_label(when, index == 0) if index % every == 0 else None,
                    "label_x": round(LEFT + index * slot + slot / 2, 2),
                }
            )
        scale = [
            Axis(
                round(TOP + plot_height * (1 - float(fraction)), 2),
                plain((top * fraction).normalize()),
            )
            for fraction in (Decimal(0), Decimal("0.5"), Decimal(1))
        ]
        charts.append(
            {
                "metric": metric_id,
                "title": titles.get(
                    metric_id, metric_id if metric is None else metric.description
                ).split(" (")[0],
                "unit": unit_label(unit),
                "bars": bars,
                "scale": scale,
                "peak": shown_quantity(max(values.values(), default=Decimal(0)), metric).label,
            }
        )
    return charts


# --- the page ----------------------------------------------------------------------------


def _line(item: BillLine, catalog: Catalog, currency: str) -> dict[str, Any]:
    """A line of the table as the customer reads it: a credit as a credit, quantities and
    prices in the display unit, amounts in the currency."""
    line = item.line
    metric: Metric | None = (
        catalog.metrics.get(line.metric) if item.kind in ("usage", "late") else None
    )
    if item.kind in ("credit", "charge", "commitment", "prepaid"):
        quantity = unit_price = ""
        description = line.description
        for prefix in ("Credit: ", "Charge: "):
            description = description.removeprefix(prefix)
    else:
        quantity = shown_quantity(line.quantity, metric).label
        price, per = display_unit_price(line.unit_price, metric)
        unit_price = (
            f"{format_price(price, currency)} per {per}" if per else format_price(price, currency)
        )
        description = line.description
    return {
        "item": item,
        "kind": item.kind,
        "description": description,
        "dimensions": ", ".join(line.dimensions.values()) if metric is not None else "",
        "quantity": quantity,
        "unit_price": unit_price,
        # Said when it is not the catalog's first price: a later version, a negotiated rate.
        "price_label": ""
        if line.applied is None
        or (line.applied.source == CATALOG and line.applied.effective_from is None)
        else line.applied.label,
        "amount": format_money(item.charged, currency),
    }


def _period_label(start: date, end: date) -> str:
    """'Nov 2026' for a calendar month, else 'Nov 15 – Dec 14, 2026'."""
    if start.day == 1:
        return f"{MONTHS[start.month - 1]} {start.year}"
    last = end - timedelta(days=1)
    return (
        f"{MONTHS[start.month - 1]} {start.day} – {MONTHS[last.month - 1]} {last.day}, {last.year}"
    )


def _render(bill: Bill, catalog: Catalog, token: str, message: str | None = None) -> str:
    currency = bill.currency

    def money(amount: int) -> str:
        return format_money(amount, currency)

    page = page_path(bill.account.id)
    query = urlencode({"period": bill.period.start.isoformat()})
    return TEMPLATES.get_template("billing.html").render(
        bill=bill, money=money, charts=_chart(bill, catalog), token=token,
        currency=currency.upper(), message=message, page=page,
        lines=[_line(item, catalog, currency) for item in bill.lines],
        period_label=_period_label(bill.period.start, bill.period.end), label_of=_period_label,
        period_state=None if bill.status is None else PERIOD_STATES[bill.status],
        states=PERIOD_STATES,
        box={"width": WIDTH, "height": HEIGHT, "left": LEFT, "right": RIGHT},
        csv_url=f"{page}/usage.csv?{query}", statement_url=f"{page}/statement.csv?{query}",
        item_of=bill.item_of(),
    )  # fmt: skip


def _refused() -> HTMLResponse:
    return HTMLResponse(TEMPLATES.get_template("expired.html").render(), status_code=401)


def _message(title: str, text: str, status: int, page: str | None = None) -> HTMLResponse:
    return HTMLResponse(
        TEMPLATES.get_template("expired.html").render(title=title, text=text, page=page),
        status_code=status,
    )


def _clean_address(account_id: str, query: QueryParams) -> str:
    """The page's address without ``token`` (the other parameters kept)."""
    kept = [(name, value) for name, value in query.multi_items() if name != "token"]
    return page_path(account_id) + (f"?{urlencode(kept)}" if kept else "")


@router.get("/billing/{account_id}")
async def billing_page(
    account_id: str,
    request: Request,
    billsync: BillsyncDep,
    token: str | None = None,
    period: str = "current",
) -> Response:
    allowed = _allowed(billsync, account_id, request, token)
    if allowed is None:
        return _refused()
    if "token" in request.query_params:
        # The token leaves the address bar and the history: the cookie is set on a redirect to
        # the same page without it (303: the browser follows with a GET and keeps no entry
        # for the address that carried the token).
        response: Response = RedirectResponse(
            _clean_address(account_id, request.query_params), status_code=303
        )
        if allowed and allowed == token:
            opened = customer_tokens.read(
                billsync.customer_token_secret, allowed, billsync.clock.now()
            )
            life = max(1, opened.expires_at - int(billsync.clock.now().timestamp()))
            response.set_cookie(
                COOKIE, allowed, max_age=life, path=page_path(account_id),
                httponly=True, samesite="strict", secure=secure_cookies(billsync.settings, request),
            )  # fmt: skip
        return response
    try:
        which = parse_period(period)
        bill = await run_in_threadpool(load_bill, billsync, account_id, which, daily=True)
    except NotFound:
        return _message("No such account", "There is no billing account at this address.", 404)
    except InvalidRequest as refused:
        return _message("No such period", f"{refused.message}.", 422, page_path(account_id))
    return HTMLResponse(_render(bill, billsync.catalog, allowed))


@router.get("/billing/{account_id}/usage.csv")
async def billing_usage_csv(
    account_id: str, request: Request, billsync: BillsyncDep, period: str = "current"
) -> Response:
    """The page's "Download CSV": the period's usage per line and day (the usage export's
    CSV), opened with the page's cookie."""
    if _allowed(billsync, account_id, request, request.query_params.get("token")) is None:
        return _refused()
    try:
        which = parse_period(period)
        opened = await run_in_threadpool(
            open_export, billsync, account_id, QueryParams(), default_period=which
        )
    except NotFound:
        return _message("No such account", "There is no billing account at this address.", 404)
    except UsageRemoved as removed:
        return _message("Usage no longer kept", removed.message, 410, page_path(account_id))
    except InvalidRequest as refused:
        return _message("No such period", f"{refused.message}.", 422, page_path(account_id))
    return export_response(billsync, opened, "csv")


@router.get("/billing/{account_id}/statement.csv")
async def billing_statement_csv(
    account_id: str, request: Request, billsync: BillsyncDep, period: str = "current"
) -> Response:
    """The page's "Download statement": the period's lines with their amounts, beside the
    Stripe invoice's item carrying each (services.statement), opened with the page's cookie."""
    if _allowed(billsync, account_id, request, request.query_params.get("token")) is None:
        return _refused()
    try:
        which = parse_period(period)
        bill = await run_in_threadpool(load_bill, billsync, account_id, which)
    except NotFound:
        return _message("No such account", "There is no billing account at this address.", 404)
    except InvalidRequest as refused:
        return _message("No such period", f"{refused.message}.", 422, page_path(account_id))
    safe_id = re.sub(r"[^A-Za-z0-9._-]", "_", account_id)
    name = f"statement-{safe_id}-{bill.period.start.isoformat()}.csv"
    return Response(
        statement_csv(bill),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


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
        return HTMLResponse(
            _render(bill, billsync.catalog, token, failure.message), status_code=503
        )
    return RedirectResponse(result["url"], status_code=303)
