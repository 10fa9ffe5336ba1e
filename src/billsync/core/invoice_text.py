"""What the Stripe invoice says of each item — one line, or a roll-up of lines (core.rollup) —
written once, for the sync engine (the invoice) and the customer's statement (page and CSV),
so that both always say the same."""

from __future__ import annotations

from collections.abc import Sequence

from billsync.core.catalog import Catalog
from billsync.core.folding import ADJUSTMENT_METRIC, BOOKED_METRICS
from billsync.core.money import decimal_text
from billsync.core.rollup import Item, RolledLine, Rollup, roll_up


def invoice_items(catalog: Catalog, lines: Sequence[RolledLine]) -> Rollup:
    """The items of a period's invoice: its lines, or their roll-up at the catalog's levels."""
    return roll_up(lines, catalog.rollup)


def line_text(catalog: Catalog, line: RolledLine) -> str:
    """A line's text on the invoice: what, how much, and for late usage, from when."""
    if line.metric in BOOKED_METRICS:
        return str(line.grouping.get("description", "Adjustment"))[:500]
    metric = catalog.metrics.get(line.metric)
    name = line.metric if metric is None else metric.description
    unit = "" if metric is None else f" {metric.unit}"
    grouping = ", ".join(f"{k} {v}" for k, v in sorted(line.grouping.items()))
    text = f"{name}{f' ({grouping})' if grouping else ''}: {decimal_text(line.quantity)}{unit}"
    if line.late_from is not None:
        text += f" — late usage from the period starting {line.late_from.isoformat()}"
    return text[:500]


def item_text(catalog: Catalog, item: Item, members: Sequence[RolledLine]) -> str:
    """A roll-up item's text: what it sums and how many lines it carries, each itemised in the
    detailed statement the invoice links to. One line: that line's own text."""
    if len(members) == 1:
        return line_text(catalog, members[0])
    metric = catalog.metrics.get(item.metric)
    if item.metric in BOOKED_METRICS:
        name = "Adjustments" if item.metric == ADJUSTMENT_METRIC else item.metric
    else:
        name = item.metric if metric is None else metric.description
    kept = ", ".join(f"{k} {v}" for k, v in item.kept)
    text = f"{name}{f' ({kept})' if kept else ''}"
    if metric is not None and metric.aggregation == "sum":
        text += f": {decimal_text(item.quantity)} {metric.unit}"
    text += f" — {len(members)} lines, itemised in the detailed statement"
    if item.late_from is not None:
        text += f" — late usage from the period starting {item.late_from.isoformat()}"
    return text[:500]
