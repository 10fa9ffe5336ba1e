"""The reads of ``billsync verify``: the ledger as it is, nothing computed on the way."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import Connection, select

from billsync.core.commitment import Commitment, commitments_of
from billsync.core.pricing import RateCard, cards_of
from billsync.db.tables import accounts as accounts_table
from billsync.db.tables import billing_periods, lines, problems, usage_events
from billsync.repositories.problems import ACCEPTED
from billsync.repositories.sync import PeriodRow, _period

STREAM_ROWS = 10_000


@dataclass(frozen=True, slots=True)
class AccountRow:
    id: str
    currency: str
    stripe_customer_id: str | None
    rate_cards: tuple[RateCard, ...] = ()
    commitments: tuple[Commitment, ...] = ()


@dataclass(frozen=True, slots=True)
class LedgerLine:
    id: int
    account_id: str
    period_start: date
    key: str
    metric: str
    grouping: dict[str, str]
    late_from: date | None
    currency: str
    quantity: Decimal
    amount: int
    version: int
    event_count: int
    synced_version: int
    synced_amount: int | None
    stripe_line_item_id: str | None
    rollup_key: str | None


@dataclass(frozen=True, slots=True)
class EventRow:
    id: str
    account_id: str
    metric: str
    period_start: date
    line_id: int
    quantity: Decimal


@dataclass
class AcceptedDifferences:
    """Per account: (period, line) pairs and Stripe object ids a person accepted."""

    lines: dict[str, set[tuple[date | None, int]]] = field(default_factory=dict)
    objects: dict[str, set[str]] = field(default_factory=dict)


def accounts(connection: Connection, account_id: str | None) -> list[AccountRow]:
    query = select(
        accounts_table.c.id,
        accounts_table.c.currency,
        accounts_table.c.stripe_customer_id,
        accounts_table.c.rate_cards,
        accounts_table.c.commitments,
    ).order_by(accounts_table.c.id)
    if account_id is not None:
        query = query.where(accounts_table.c.id == account_id)
    return [
        AccountRow(account, currency, customer, cards_of(cards), commitments_of(commitments))
        for account, currency, customer, cards, commitments in connection.execute(query)
    ]


def periods(connection: Connection, account_id: str | None) -> dict[str, dict[date, PeriodRow]]:
    query = select(billing_periods)
    if account_id is not None:
        query = query.where(billing_periods.c.account_id == account_id)
    found: dict[str, dict[date, PeriodRow]] = defaultdict(dict)
    for row in connection.execute(query):
        period = _period(row)
        found[period.account_id][period.start] = period
    return dict(found)


def ledger_lines(connection: Connection, account_id: str | None) -> dict[int, LedgerLine]:
    query = select(
        lines.c.id,
        lines.c.account_id,
        lines.c.period_start,
        lines.c.line_key.label("key"),
        lines.c.metric,
        lines.c.grouping,
        lines.c.late_from,
        lines.c.currency,
        lines.c.quantity,
        lines.c.amount,
        lines.c.version,
        lines.c.event_count,
        lines.c.synced_version,
        lines.c.synced_amount,
        lines.c.stripe_line_item_id,
        lines.c.rollup_key,
    )
    if account_id is not None:
        query = query.where(lines.c.account_id == account_id)
    found: dict[int, LedgerLine] = {}
    for row in connection.execute(query):
        line = LedgerLine(**row._mapping)
        found[line.id] = line
    return found


def events(connection: Connection, account_id: str | None) -> Iterator[EventRow]:
    """Every stored event, streamed (the table can hold millions)."""
    query = select(
        usage_events.c.id,
        usage_events.c.account_id,
        usage_events.c.metric,
        usage_events.c.period_start,
        usage_events.c.line_id,
        usage_events.c.quantity,
    )
    if account_id is not None:
        query = query.where(usage_events.c.account_id == account_id)
    result = connection.execution_options(yield_per=STREAM_ROWS).execute(query)
    for row in result:
        yield EventRow(*row)


@dataclass(frozen=True, slots=True)
class ObservedEvent:
    """An event of a metric that is not a sum, with what its aggregation reads."""

    id: str
    line_id: int
    quantity: Decimal
    occurred_at: datetime
    dimensions: dict[str, str]


def observed_events(
    connection: Connection, account_id: str | None, metrics: Sequence[str]
) -> Iterator[ObservedEvent]:
    """The stored events of these metrics, streamed."""
    query = select(
        usage_events.c.id,
        usage_events.c.line_id,
        usage_events.c.quantity,
        usage_events.c.occurred_at,
        usage_events.c.dimensions,
    ).where(usage_events.c.metric.in_(metrics))
    if account_id is not None:
        query = query.where(usage_events.c.account_id == account_id)
    result = connection.execution_options(yield_per=STREAM_ROWS).execute(query)
    for row in result:
        yield ObservedEvent(*row)


def accepted_differences(connection: Connection, account_id: str | None) -> AcceptedDifferences:
    query = select(
        problems.c.account_id,
        problems.c.period_start,
        problems.c.line_id,
        problems.c.stripe_object_id,
    ).where(problems.c.resolution.startswith(ACCEPTED), problems.c.account_id.is_not(None))
    if account_id is not None:
        query = query.where(problems.c.account_id == account_id)
    found = AcceptedDifferences()
    for row in connection.execute(query):
        if row.line_id is not None:
            found.lines.setdefault(row.account_id, set()).add((row.period_start, int(row.line_id)))
        if row.stripe_object_id is not None:
            found.objects.setdefault(row.account_id, set()).add(row.stripe_object_id)
    return found
