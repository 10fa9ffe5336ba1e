"""The control plane (``/_emulator/...``): reset, clock, faults, configuration, statistics, and
the pages behind hosted invoice, PDF and Customer Portal links."""

from __future__ import annotations

import dataclasses
import html
import time
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from billsync.emulator import invoices, render

if TYPE_CHECKING:
    from billsync.emulator.app import Emulator


async def _json(request: Request) -> dict[str, Any]:
    body = await request.body()
    if not body:
        return {}
    data = orjson.loads(body)
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    return data


def _bad(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


def _money(amount: int, currency: str) -> str:
    digits = 0 if currency in ("jpy", "krw", "vnd", "clp") else 2
    return f"{amount / 10**digits:,.{digits}f} {currency.upper()}"


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}"
        "</title><meta name='viewport' content='width=device-width,initial-scale=1'><style>"
        "body{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;"
        "color:#1a1f36}table{width:100%;border-collapse:collapse}td,th{padding:.4rem;"
        "border-bottom:1px solid #e3e8ee;text-align:left}.num{text-align:right}</style></head>"
        "<body><p style='color:#635bff'>Stripe emulator — for billsync's tests and demo</p>"
        f"{body}</body></html>"
    )


def routes(emulator: Emulator) -> list[Route]:
    state = emulator.state

    async def reset(_request: Request) -> JSONResponse:
        state.reset()
        state.reset_config()
        state.clock.set(time.time())  # back to real time, unfrozen
        emulator.faults.clear()
        emulator.webhooks.reset()
        emulator.locked_invoices.clear()
        return JSONResponse({"reset": True})

    async def clock(request: Request) -> JSONResponse:
        if request.method == "POST":
            try:
                spec = await _json(request)
                if "advance" in spec:
                    state.clock.advance(float(spec["advance"]))
                elif "set" in spec:
                    state.clock.set(float(spec["set"]), freeze=bool(spec.get("freeze", False)))
                elif spec.get("freeze") is False:
                    state.clock.unfreeze()
                else:
                    return _bad('give {"advance": seconds} or {"set": unix, "freeze": bool}')
            except (ValueError, TypeError) as error:
                return _bad(str(error))
            invoices.advance_due_drafts(state)
            emulator.webhooks.wake()
        return JSONResponse(state.clock.describe())

    async def faults(request: Request) -> JSONResponse:
        if request.method == "DELETE":
            emulator.faults.clear()
        elif request.method == "POST":
            try:
                spec = await _json(request)
                if "seed" in spec:
                    emulator.faults.seed(int(spec["seed"]))
                for rule in spec.get("rules", [spec] if "kind" in spec else []):
                    emulator.faults.add(rule)
            except (ValueError, TypeError) as error:
                return _bad(str(error))
        return JSONResponse({"rules": [rule.describe() for rule in emulator.faults.rules]})

    async def config(request: Request) -> JSONResponse:
        if request.method == "POST":
            try:
                spec = await _json(request)
                fields = {f.name: f.type for f in dataclasses.fields(state.config)}
                for key, value in spec.items():
                    if key not in fields:
                        return _bad(f"unknown setting {key!r}; known: {sorted(fields)}")
                    current = getattr(state.config, key)
                    setattr(state.config, key, type(current)(value))
            except (ValueError, TypeError) as error:
                return _bad(str(error))
        return JSONResponse(dataclasses.asdict(state.config))

    async def stats(request: Request) -> JSONResponse:
        if request.method == "DELETE":
            state.stats = type(state.stats)()
        timeline = request.query_params.get("per_second") in {"1", "true"}
        return JSONResponse(state.stats.as_dict(per_second=timeline))

    async def chaos(request: Request) -> JSONResponse:
        if request.method == "POST":
            try:
                spec = await _json(request)
                if spec.get("flush"):
                    emulator.webhooks.flush_held()
                else:
                    emulator.webhooks.configure(spec)
            except (ValueError, TypeError) as error:
                return _bad(str(error))
            emulator.webhooks.wake()
        return JSONResponse(
            {
                "chaos": emulator.webhooks.chaos.describe(),
                "pending": emulator.webhooks.pending(),
                "deliveries": emulator.webhooks.log[-100:],
            }
        )

    async def portal(request: Request) -> Response:
        session = state.portal_sessions.get(request.path_params["session_id"])
        if session is None:
            return _page("Not found", "<h1>This portal session does not exist</h1>")
        customer = state.customers[session["customer"]]
        rows = []
        mine = [
            i
            for i in state.invoices.values()
            if i["customer"] == customer["id"] and not i.get("deleted") and i["status"] != "draft"
        ]
        for invoice in sorted(mine, key=lambda i: i["created"], reverse=True):
            amounts = render.totals(state, invoice)
            rows.append(
                f"<tr><td><a href='{html.escape(invoice['hosted_invoice_url'] or '#')}'>"
                f"{html.escape(invoice['number'] or invoice['id'])}</a></td>"
                f"<td>{html.escape(invoice['status'])}</td>"
                f"<td class='num'>{_money(amounts['total'], invoice['currency'])}</td></tr>"
            )
        back = session["return_url"]
        who = html.escape(customer["name"] or customer["id"])
        table = "".join(rows) or "<tr><td colspan=3>No invoices yet</td></tr>"
        method = html.escape(str(customer["invoice_settings"]["default_payment_method"] or "none"))
        link = f"<p><a id='return' href='{html.escape(back)}'>Return</a></p>" if back else ""
        return _page(
            "Billing portal",
            f"<h1 id='portal-title'>Billing portal</h1><p>{who}</p><h2>Invoices</h2>"
            "<table id='invoices'><tr><th>Invoice</th><th>Status</th><th class='num'>Total</th>"
            f"</tr>{table}</table><h2>Payment methods</h2><p>{method}</p>{link}",
        )

    async def hosted_invoice(request: Request) -> Response:
        invoice = state.invoices.get(request.path_params["invoice_id"])
        if invoice is None:
            return _page("Not found", "<h1>No such invoice</h1>")
        rendered = render.invoice(state, invoice)
        lines = "".join(
            f"<tr><td>{html.escape(line['description'] or '')}</td>"
            f"<td class='num'>{_money(line['amount'], line['currency'])}</td></tr>"
            for line in rendered["lines"]["data"]
        )
        currency = rendered["currency"]
        # What the customer is shown besides the lines, as on Stripe's page: the subtotal and
        # each discount when there are discounts, and the balance applied when there is one.
        summary = ""
        if rendered["total_discount_amounts"]:
            summary += (
                f"<tr><td>Subtotal</td><td class='num' id='subtotal'>"
                f"{_money(rendered['subtotal'], currency)}</td></tr>"
            )
            for part in rendered["total_discount_amounts"]:
                coupon = state.discounts[part["discount"]]["_coupon"]
                summary += (
                    f"<tr><td>{html.escape(coupon['name'] or coupon['id'])}</td>"
                    f"<td class='num discount'>-{_money(part['amount'], currency)}</td></tr>"
                )
        total = _money(rendered["total"], currency)
        applied = rendered["amount_due"] - rendered["total"]
        balance = (
            f"<tr><td>Applied balance</td><td class='num' id='applied-balance'>"
            f"{_money(applied, currency)}</td></tr>"
            if applied
            else ""
        )
        due = _money(rendered["amount_remaining"], currency)
        return _page(
            f"Invoice {rendered['number']}",
            f"<h1>Invoice {html.escape(rendered['number'] or rendered['id'])}</h1>"
            f"<p>Status: <b id='status'>{rendered['status']}</b></p><table>{lines}{summary}"
            f"<tr><th>Total</th><th class='num' id='total'>{total}</th></tr>{balance}"
            f"</table><p>Amount due: <span id='amount-due'>{due}</span></p>",
        )

    async def peek_invoice(request: Request) -> JSONResponse:
        """An invoice as the API would render it, outside the rate limit and the request
        counters: for tests and benchmarks that watch Stripe without taking from billsync's
        share of the limit."""
        invoice = state.invoices.get(request.path_params["invoice_id"])
        if invoice is None:
            return JSONResponse({"error": "no such invoice"}, status_code=404)
        return JSONResponse(render.invoice(state, invoice))

    async def peek_totals(request: Request) -> JSONResponse:
        """Many invoices' totals in one request (``{"invoices": [ids]}``), outside the rate
        limit: a benchmark watching a sample of drafts without one request per draft."""
        try:
            ids = (await _json(request)).get("invoices", [])
            if not isinstance(ids, list):
                raise TypeError("invoices is a list of invoice ids")
        except (ValueError, TypeError) as error:
            return _bad(str(error))
        totals = {
            str(invoice_id): render.totals(state, state.invoices[invoice_id])["total"]
            for invoice_id in ids
            if invoice_id in state.invoices
        }
        return JSONResponse({"totals": totals})

    async def invoice_pdf(request: Request) -> Response:
        invoice = state.invoices.get(request.path_params["invoice_id"])
        if invoice is None:
            return Response("not found", 404)
        text = f"Invoice {invoice['number']} total {render.totals(state, invoice)['total']}"
        return Response(_minimal_pdf(text), media_type="application/pdf")

    async def credit_note_pdf(request: Request) -> Response:
        note = state.credit_notes.get(request.path_params["credit_note_id"])
        if note is None:
            return Response("not found", 404)
        text = f"Credit note {note['number']} total {note['total']} for invoice {note['invoice']}"
        return Response(_minimal_pdf(text), media_type="application/pdf")

    return [
        Route("/_emulator/reset", reset, methods=["POST"]),
        Route("/_emulator/clock", clock, methods=["GET", "POST"]),
        Route("/_emulator/faults", faults, methods=["GET", "POST", "DELETE"]),
        Route("/_emulator/config", config, methods=["GET", "POST"]),
        Route("/_emulator/stats", stats, methods=["GET", "DELETE"]),
        Route("/_emulator/webhooks/chaos", chaos, methods=["GET", "POST"]),
        Route("/_emulator/portal/{session_id}", portal),
        Route("/_emulator/invoices/{invoice_id}", hosted_invoice),
        Route("/_emulator/peek/invoices/{invoice_id}", peek_invoice),
        Route("/_emulator/peek/totals", peek_totals, methods=["POST"]),
        Route("/_emulator/invoices/{invoice_id}/pdf", invoice_pdf),
        Route("/_emulator/credit_notes/{credit_note_id}/pdf", credit_note_pdf),
    ]


def _minimal_pdf(text: str) -> bytes:
    """A one-page PDF with one line of text (enough for a link to open something real)."""
    safe = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    stream = f"BT /F1 14 Tf 72 720 Td ({safe}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return bytes(out)
