"""The read side of the ledger: an account's lines for a period, rated and labelled."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from sqlalchemy import Connection

from billsync.clock import Clock
from billsync.core.catalog import Catalog, Tier
from billsync.core.folding import BOOKED_METRICS
from billsync.core.periods import Period
from billsync.core.pricing import AppliedPrice, applied_price
from billsync.errors import InvalidRequest
from billsync.repositories import ledger
from billsync.repositories.accounts import AccountRecord


@dataclass(frozen=True, slots=True)
class LineView:
    key: str
    metric: str
    description: str
    dimensions: dict[str, str]
    late_from: date | None
    quantity: Decimal
    unit: str
    unit_price: Decimal
    tiers: tuple[Tier, ...] | None
    amount: int
    version: int
    event_count: int
    # The price that rates it (core.pricing): None for an adjustment or a metric the catalog
    # no longer has.
    applied: AppliedPrice | None = None

    @property
    def is_period_usage(self) -> bool:
        """Usage of this very period — not a support adjustment, not a past period's late
        usage: the part of a bill that grows with time."""
        return self.metric not in BOOKED_METRICS and self.late_from is None


@dataclass(frozen=True, slots=True)
class PeriodLines:
    account: str
    period: Period
    currency: str
    lines: list[LineView]

    @property
    def total(self) -> int:
        return sum(line.amount for line in self.lines)


def parse_period(value: str) -> str | date:
    """``current`` or a date (YYYY-MM-DD) inside the wanted period."""
    if value == "current":
        return value
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(
            f"period must be 'current' or a date YYYY-MM-DD, got '{value}'", code="invalid_period"
        ) from None


class LineService:
    def __init__(self, catalog: Catalog, clock: Clock, default_anchor_day: int) -> None:
        self.catalog = catalog
        self.clock = clock
        self.default_anchor_day = default_anchor_day

    def period_of(self, account: AccountRecord, which: str | date) -> Period:
        day = self.clock.now().date() if which == "current" else which
        assert isinstance(day, date)
        try:
            return account.schedule(self.default_anchor_day).period_for_date(day)
        except ValueError:
            raise InvalidRequest(
                f"no billing period around {day}: the date is at the edge of the calendar",
                code="invalid_period",
            ) from None

    def period_lines(
        self, connection: Connection, account: AccountRecord, which: str | date
    ) -> PeriodLines:
        period = self.period_of(account, which)
        views: list[LineView] = []
        for record in ledger.lines_of_period(connection, account.id, period.start):
            metric = self.catalog.metrics.get(record.metric)
            applied = (
                None
                if metric is None
                else applied_price(
                    metric,
                    account.rate_cards,
                    record.currency,
                    record.late_from or record.period_start,
                )
            )
            price = None if applied is None else applied.price
            views.append(
                LineView(
                    key=record.key,
                    metric=record.metric,
                    description=str(record.grouping.get("description", record.metric))
                    if metric is None
                    else metric.description,
                    dimensions={} if metric is None else dict(record.grouping),
                    late_from=record.late_from,
                    quantity=record.quantity,
                    unit="" if metric is None else metric.unit,
                    unit_price=Decimal(0)
                    if price is None
                    else price.marginal_unit_price(record.quantity),
                    tiers=None if price is None or price.is_flat else price.tiers,
                    amount=record.amount,
                    version=record.version,
                    event_count=record.event_count,
                    applied=applied,
                )
            )
        return PeriodLines(account.id, period, account.currency, views)
