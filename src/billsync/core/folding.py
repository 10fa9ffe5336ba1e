"""Folding: accepted usage events → one line per (account, period, metric, grouping).

A line's identity is its key within an account-period: the metric, the values of the metric's
``group_by`` dimensions, and — for late usage — the period the usage originally belonged to.
Folding sums quantities exactly; rating happens once per line, on the line's total.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, localcontext
from urllib.parse import quote

from billsync.core.money import EXACT

LATE_FROM = "late_from"


def line_key(metric: str, grouping: Mapping[str, str], late_from: date | None = None) -> str:
    """Stable, readable key: ``metric``, ``metric[region=iad]``, ``metric[late_from=2026-10-01]``.

    Dimension values are percent-encoded so that no value can forge another key.
    """
    parts = [f"{name}={quote(grouping[name], safe='-_.~:/')}" for name in sorted(grouping)]
    if late_from is not None:
        parts.append(f"{LATE_FROM}={late_from.isoformat()}")
    return f"{metric}[{','.join(parts)}]" if parts else metric


@dataclass(frozen=True, slots=True)
class LineRef:
    """Where a line lives: an account's period (by its start date) and the key within it."""

    account: str
    period_start: date
    key: str


@dataclass(frozen=True, slots=True)
class PlacedUsage:
    """One accepted event, with the period it belongs to and the period it lands on."""

    event_id: str
    account: str
    metric: str
    quantity: Decimal
    grouping: Mapping[str, str]
    period_start: date  # the period the usage happened in
    target_start: date  # the period whose invoice carries it (differs for late usage)

    @property
    def late_from(self) -> date | None:
        return self.period_start if self.target_start != self.period_start else None

    @property
    def line(self) -> LineRef:
        return LineRef(
            self.account, self.target_start, line_key(self.metric, self.grouping, self.late_from)
        )


@dataclass(slots=True)
class LineDelta:
    """What a batch adds to one line."""

    ref: LineRef
    metric: str
    grouping: Mapping[str, str]
    late_from: date | None
    quantity: Decimal = Decimal(0)
    event_ids: list[str] = field(default_factory=list)


def fold(usages: Iterable[PlacedUsage]) -> dict[LineRef, LineDelta]:
    """Sum usage per line, exactly. Independent of the order of ``usages``."""
    deltas: dict[LineRef, LineDelta] = {}
    with localcontext(EXACT):
        for usage in usages:
            ref = usage.line
            delta = deltas.get(ref)
            if delta is None:
                delta = deltas[ref] = LineDelta(
                    ref=ref, metric=usage.metric, grouping=usage.grouping, late_from=usage.late_from
                )
            delta.quantity += usage.quantity
            delta.event_ids.append(usage.event_id)
    return deltas


def grouping_of(dimensions: Mapping[str, str], group_by: Iterable[str]) -> dict[str, str]:
    """The dimensions that identify a line; the rest stay on the raw event for drill-down."""
    return {name: dimensions[name] for name in group_by}
