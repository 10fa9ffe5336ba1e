"""The catalog pricings applied to the ledger (core.catalog_pricing), and the periods and lines
a change of pricing touches."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, and_, func, insert, or_, select, text, update

from billsync.core.catalog_pricing import Span
from billsync.core.periods import PeriodStatus
from billsync.db.tables import accounts, billing_periods, catalog_pricings, lines


@dataclass(frozen=True, slots=True)
class AppliedPricing:
    id: int
    digest: str
    document: dict[str, Any]
    previous_id: int | None
    source: str
    applied_by: str
    applied_at: datetime
    completed_at: datetime | None
    lines_re_rated: int
    accounts_re_rated: int


def _record(row: Any) -> AppliedPricing:
    return AppliedPricing(
        row.id, row.digest, row.document, row.previous_id, row.source, row.applied_by,
        row.applied_at, row.completed_at, row.lines_re_rated, row.accounts_re_rated,
    )  # fmt: skip


# Per schema: installations (and test processes) in other schemas of the database are not held.
APPLIERS_LOCK = "hashtextextended('billsync.catalog:' || current_schema(), 0)"


def lock_appliers(connection: Connection) -> None:
    """One applier of a catalog at a time, and no ledger write rating with the pricing it
    replaces in flight (they hold it shared), for the rest of the transaction (PostgreSQL;
    SQLite has one writer)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text(f"SELECT pg_advisory_xact_lock({APPLIERS_LOCK})"))


def share_appliers_lock(connection: Connection) -> None:
    """A ledger write that rates with the applied pricing: until it commits, no new pricing is
    recorded (PostgreSQL)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text(f"SELECT pg_advisory_xact_lock_shared({APPLIERS_LOCK})"))


def latest(connection: Connection) -> AppliedPricing | None:
    row = connection.execute(
        select(catalog_pricings).order_by(catalog_pricings.c.id.desc()).limit(1)
    ).first()
    return None if row is None else _record(row)


def since_last_completed(connection: Connection) -> list[AppliedPricing]:
    """The pricings from the last one whose re-rating finished on, oldest first: the ledger's
    lines are at one of them. Empty when none was applied."""
    last = (
        select(func.max(catalog_pricings.c.id))
        .where(catalog_pricings.c.completed_at.is_not(None))
        .scalar_subquery()
    )
    rows = connection.execute(
        select(catalog_pricings)
        .where(or_(last.is_(None), catalog_pricings.c.id >= last))
        .order_by(catalog_pricings.c.id)
    )
    return [_record(row) for row in rows]


def get(connection: Connection, pricing_id: int) -> AppliedPricing | None:
    row = connection.execute(
        select(catalog_pricings).where(catalog_pricings.c.id == pricing_id)
    ).first()
    return None if row is None else _record(row)


def latest_digest(connection: Connection) -> tuple[int, str] | None:
    """The applied pricing's id and digest: what each ingest batch reads (a primary-key
    look-up)."""
    row = connection.execute(
        select(catalog_pricings.c.id, catalog_pricings.c.digest)
        .order_by(catalog_pricings.c.id.desc())
        .limit(1)
    ).first()
    return None if row is None else (int(row.id), str(row.digest))


def record(  # noqa: PLR0917 - one row's columns
    connection: Connection,
    digest: str,
    document: dict[str, Any],
    previous_id: int | None,
    source: str,
    applied_by: str,
    now: datetime,
    *,
    completed: bool,
) -> int:
    result = connection.execute(
        insert(catalog_pricings).returning(catalog_pricings.c.id),
        {
            "digest": digest,
            "document": document,
            "previous_id": previous_id,
            "source": source[:1000],
            "applied_by": applied_by,
            "applied_at": now,
            "completed_at": now if completed else None,
            "lines_re_rated": 0,
            "accounts_re_rated": 0,
        },
    )
    return int(result.scalar_one())


def add_progress(
    connection: Connection, pricing_id: int, lines_done: int, accounts_done: int
) -> None:
    connection.execute(
        update(catalog_pricings)
        .where(catalog_pricings.c.id == pricing_id)
        .values(
            lines_re_rated=catalog_pricings.c.lines_re_rated + lines_done,
            accounts_re_rated=catalog_pricings.c.accounts_re_rated + accounts_done,
        )
    )


def complete(connection: Connection, pricing_id: int, now: datetime) -> None:
    connection.execute(
        update(catalog_pricings).where(catalog_pricings.c.id == pricing_id).values(completed_at=now)
    )


def _in_span(span: Span) -> Any:
    conditions = [accounts.c.currency == span.currency]
    if span.since is not None:
        conditions.append(billing_periods.c.start >= span.since)
    if span.until is not None:
        conditions.append(billing_periods.c.start < span.until)
    return and_(*conditions)


@dataclass(frozen=True, slots=True)
class TouchedPeriods:
    start: date
    status: PeriodStatus
    currency: str
    count: int


def periods_in(connection: Connection, spans: Sequence[Span]) -> list[TouchedPeriods]:
    """The periods, by start, status and currency, whose start lies in one of ``spans`` for
    their account's currency: one pass over the periods, when a pricing change is applied."""
    if not spans:
        return []
    rows = connection.execute(
        select(
            billing_periods.c.start,
            billing_periods.c.status,
            accounts.c.currency,
            func.count().label("n"),
        )
        .join(accounts, accounts.c.id == billing_periods.c.account_id)
        .where(or_(*(_in_span(span) for span in spans)))
        .group_by(billing_periods.c.start, billing_periods.c.status, accounts.c.currency)
        .order_by(billing_periods.c.start, billing_periods.c.status, accounts.c.currency)
    )
    return [
        TouchedPeriods(row.start, PeriodStatus(row.status), row.currency, row.n) for row in rows
    ]


def accounts_with_open_period(
    connection: Connection, start: date, currency: str, after: str | None, limit: int
) -> list[str]:
    """A page of the accounts in ``currency`` whose period starting on ``start`` is not
    finalized, by id after ``after`` (the index on the periods' start and account)."""
    query = (
        select(billing_periods.c.account_id)
        .join(accounts, accounts.c.id == billing_periods.c.account_id)
        .where(
            billing_periods.c.start == start,
            billing_periods.c.status != PeriodStatus.FINALIZED.value,
            accounts.c.currency == currency,
        )
        .order_by(billing_periods.c.account_id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(billing_periods.c.account_id > after)
    return [row.account_id for row in connection.execute(query)]


def period_statuses(
    connection: Connection, account_ids: Iterable[str], start: date
) -> dict[str, PeriodStatus]:
    rows = connection.execute(
        select(billing_periods.c.account_id, billing_periods.c.status).where(
            billing_periods.c.account_id.in_(sorted(set(account_ids))),
            billing_periods.c.start == start,
        )
    )
    return {row.account_id: PeriodStatus(row.status) for row in rows}


@dataclass(frozen=True, slots=True)
class UsageLine:
    id: int
    account_id: str
    metric: str
    currency: str
    quantity: Any
    amount: int
    version: int
    event_count: int


def own_usage_lines(
    connection: Connection, account_ids: Iterable[str], start: date, metrics: Iterable[str]
) -> list[UsageLine]:
    """The usage lines of these accounts' periods starting on ``start`` for ``metrics`` — their
    own, not late usage of earlier periods (rated with those periods' prices)."""
    rows = connection.execute(
        select(
            lines.c.id,
            lines.c.account_id,
            lines.c.metric,
            lines.c.currency,
            lines.c.quantity,
            lines.c.amount,
            lines.c.version,
            lines.c.event_count,
        )
        .where(
            lines.c.account_id.in_(sorted(set(account_ids))),
            lines.c.period_start == start,
            lines.c.metric.in_(sorted(set(metrics))),
            lines.c.late_from.is_(None),
        )
        .order_by(lines.c.id)
    )
    return [
        UsageLine(
            row.id,
            row.account_id,
            row.metric,
            row.currency,
            row.quantity,
            row.amount,
            row.version,
            row.event_count,
        )
        for row in rows
    ]
