"""The detailed statement of a period as CSV: every ledger line with its amount, beside the
item of the Stripe invoice that carries it (its own, or a roll-up: core.rollup) — so that a
customer whose invoice rolls thousands of lines up can see where each cent went, and check
that the lines and the invoice's items add up to the same total."""

from __future__ import annotations

import csv
import io

import orjson

from billsync.core.money import decimal_text, format_minor
from billsync.services.billing_view import Bill

COLUMNS = (
    "line", "metric", "description", "dimensions", "late_from", "quantity", "unit", "currency",
    "amount", "on_invoice", "invoice_item", "invoice_item_description", "invoice_item_amount",
)  # fmt: skip
# A cell a spreadsheet would read as a formula gets a quote in front (OWASP "CSV injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(text: str) -> str:
    return f"'{text}" if text.startswith(_FORMULA_STARTS) else text


def statement_csv(bill: Bill) -> bytes:
    """RFC 4180, CRLF line ends, UTF-8; amounts in the currency's major units, exact."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    items = bill.item_of()
    currency = bill.currency
    for row in bill.lines:
        line = row.line
        item = items.get(line.key)
        writer.writerow(
            [
                _cell(line.key), line.metric, _cell(line.description),
                orjson.dumps(line.dimensions).decode() if line.dimensions else "",
                line.late_from.isoformat() if line.late_from else "",
                decimal_text(line.quantity), line.unit, currency.upper(),
                format_minor(line.amount, currency),
                "yes" if row.in_stripe else "pending",
                "" if item is None else str(item.number),
                "" if item is None else _cell(item.description),
                "" if item is None else format_minor(item.amount, currency),
            ]
        )  # fmt: skip
    return buffer.getvalue().encode()
