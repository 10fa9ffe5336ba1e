"""Aggregations: how a metric's events make the quantity of its lines.

A metric's usage in one period and grouping can be carried by several lines: the period's own
line, then — for usage that arrived after that period's invoice closed — a *late* line on each
later invoice (see :func:`billsync.core.periods.late_usage_target`). Whatever the aggregation,
the period's value ``V`` is a function of all its events, and each line carries what its own
events added to it:

    quantity(line i) = V(events of lines 0..i) − V(events of lines 0..i−1)

so the lines of a period always add up to ``V`` of all its events, and a late line is rated at
the marginal rates after what was billed before it (:func:`billsync.core.rating.late_line_amount`)
exactly as late usage of a sum is. Per aggregation:

- ``sum``: V = Σ quantity; a line carries the sum of its own events.
- ``max``: V = the largest quantity; a late line carries how far its events raise the peak
  (0 when they do not).
- ``latest``: V = the quantity of the latest event, by timestamp and then by the greater event
  id (deterministic for events of the same instant); a late line carries the change a later
  report makes, which may be negative (the count went down).
- ``unique_count``: V = how many distinct values of the ``unique_by`` dimension, exactly; a line
  counts the values first seen on it.

Each is independent of the order the events arrive in and of how they are cut into batches,
and a re-sent event (the same id) is never counted again: :func:`period_quantities` is the
definition, against which ingest's incremental state (:class:`Mark`) and ``billsync verify``
are checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import NamedTuple

from billsync.core.catalog import Aggregation
from billsync.core.money import EXACT

_EARLIEST = datetime.min.replace(tzinfo=UTC)


class Observation(NamedTuple):
    """One accepted event as an aggregation sees it."""

    quantity: Decimal
    at: datetime
    event_id: str
    # The value of the metric's ``unique_by`` dimension (unique_count only).
    value: str | None = None


class Mark(NamedTuple):
    """What a ``max`` or ``latest`` line keeps of its own events: the deciding quantity and,
    for ``latest``, the (timestamp, event id) that orders it."""

    value: Decimal
    at: datetime | None = None
    event_id: str | None = None


def _order(mark: Mark) -> tuple[datetime, str]:
    return (mark.at or _EARLIEST, mark.event_id or "")


def combine(aggregation: Aggregation, first: Mark | None, second: Mark | None) -> Mark | None:
    """The mark of two sets of events together (``max`` or ``latest``)."""
    if first is None:
        return second
    if second is None:
        return first
    if aggregation is Aggregation.MAX:
        return second if second.value > first.value else first
    return second if _order(second) > _order(first) else first


def mark_of(aggregation: Aggregation, observations: Iterable[Observation]) -> Mark | None:
    """The mark of some events (``max`` or ``latest``); None for none."""
    mark: Mark | None = None
    for observation in observations:
        mark = combine(
            aggregation, mark, Mark(observation.quantity, observation.at, observation.event_id)
        )
    return mark


def increment(aggregation: Aggregation, before: Mark | None, own: Mark | None) -> Decimal:
    """A ``max`` or ``latest`` line's quantity: how far its own events (``own``) move the
    period's value from ``before`` (the mark of the lines billed before it; None for the
    period's own line)."""
    combined = combine(aggregation, before, own)
    if combined is None:
        return Decimal(0)
    if before is None:
        return combined.value
    return EXACT.subtract(combined.value, before.value)


def period_quantities(
    aggregation: Aggregation, lines: Sequence[Sequence[Observation]]
) -> list[Decimal]:
    """The quantity of each line carrying one period's usage of one metric and grouping, given
    each line's events: the period's own line first, then its late lines in invoice order.
    The definition ingest and ``billsync verify`` are held to."""
    quantities: list[Decimal] = []
    if aggregation is Aggregation.SUM:
        for observations in lines:
            total = Decimal(0)
            for observation in observations:
                total = EXACT.add(total, observation.quantity)
            quantities.append(total)
    elif aggregation is Aggregation.UNIQUE_COUNT:
        seen: set[str | None] = set()
        for observations in lines:
            values = {observation.value for observation in observations} - seen
            seen |= values
            quantities.append(Decimal(len(values)))
    else:
        before: Mark | None = None
        for observations in lines:
            own = mark_of(aggregation, observations)
            quantities.append(increment(aggregation, before, own))
            before = combine(aggregation, before, own)
    return quantities
