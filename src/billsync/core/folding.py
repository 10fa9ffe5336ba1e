"""Folding: accepted usage events → one line per (account, period, metric, grouping).

A line's identity is its key within an account-period: the metric, the values of the metric's
``group_by`` dimensions, and — for late usage — the period the usage originally belonged to.
Folding sums quantities exactly; rating happens once per line, on the line's total.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date
from decimal import Decimal, localcontext
from typing import NamedTuple
from urllib.parse import quote

from billsync.core.money import EXACT

LATE_FROM = "late_from"
# The metric of the lines support adds by hand (credits and charges): no catalog metric, one
# line per adjustment.
ADJUSTMENT_METRIC = "adjustment"
# The metric of the line that tops a period up to the account's minimum commitment, once the
# period stops taking usage (core.commitment): one line, key ``commitment``.
COMMITMENT_METRIC = "commitment"
# The metric of the line that draws the account's prepaid credit grants down when a period's
# usage is final (core.credits): one line, key ``credits``, negative.
CREDIT_METRIC = "prepaid_credit"
# Lines booked by billsync or support rather than folded from usage: each described by its
# grouping's ``description``, none counted as usage.
BOOKED_METRICS = frozenset({ADJUSTMENT_METRIC, COMMITMENT_METRIC, CREDIT_METRIC})


def line_key(metric: str, grouping: Mapping[str, str], late_from: date | None = None) -> str:
    """Stable, readable key: ``metric``, ``metric[region=iad]``, ``metric[late_from=2026-10-01]``.

    Dimension values are percent-encoded so that no value can forge another key.
    """
    parts = [f"{name}={quote(grouping[name], safe='-_.~:/')}" for name in sorted(grouping)]
    if late_from is not None:
        parts.append(f"{LATE_FROM}={late_from.isoformat()}")
    return f"{metric}[{','.join(parts)}]" if parts else metric


class LineRef(NamedTuple):
    """Where a line lives: an account's period (by its start date) and the key within it."""

    account: str
    period_start: date
    key: str


# One accepted event: (account, metric, quantity, dimensions, the period it happened in, the
# period whose invoice carries it — a later one for late usage). A plain tuple: one is built
# per event on the ingest hot path.
Placement = tuple[str, str, Decimal, Mapping[str, str], date, date]


class LineDelta:
    """What a batch adds to one line."""

    __slots__ = ("event_count", "grouping", "late_from", "metric", "quantity", "ref")

    def __init__(
        self, ref: LineRef, metric: str, grouping: Mapping[str, str], late_from: date | None
    ) -> None:
        self.ref = ref
        self.metric = metric
        self.grouping = grouping
        self.late_from = late_from
        self.quantity = Decimal(0)
        self.event_count = 0


def fold(
    placements: Iterable[Placement], group_by: Mapping[str, tuple[str, ...]]
) -> tuple[dict[LineRef, LineDelta], list[LineRef]]:
    """Sum usage per line, exactly: the deltas by line, and each placement's line in order.

    ``group_by`` maps a metric to the dimensions that split it into lines. Independent of the
    order of ``placements``: addition of Decimals in the EXACT context is exact.
    """
    deltas: dict[LineRef, LineDelta] = {}
    refs: list[LineRef] = []
    memo: dict[tuple[object, ...], LineDelta] = {}
    with localcontext(EXACT):
        for account, metric, quantity, dimensions, period_start, target_start in placements:
            names = group_by[metric]
            values = tuple([dimensions[name] for name in names]) if names else ()
            slot = (account, metric, period_start, target_start, values)
            delta = memo.get(slot)
            if delta is None:
                grouping = dict(zip(names, values, strict=True))
                late_from = period_start if target_start != period_start else None
                ref = LineRef(account, target_start, line_key(metric, grouping, late_from))
                delta = deltas.get(ref)
                if delta is None:
                    delta = deltas[ref] = LineDelta(ref, metric, grouping, late_from)
                memo[slot] = delta
            delta.quantity += quantity
            delta.event_count += 1
            refs.append(delta.ref)
    return deltas, refs
