"""Sync state you can see: per account, how far Stripe is behind and why."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import Connection

from billsync.core.line_state import is_pending
from billsync.repositories import sync as repository
from billsync.repositories.sync import SyncLine


@dataclass(frozen=True, slots=True)
class PeriodSync:
    start: date
    end: date
    status: str
    stripe_invoice_id: str | None
    review_ends_at: datetime | None
    lines: int
    pending_lines: int


@dataclass(frozen=True, slots=True)
class SyncStatus:
    account_id: str
    stripe_customer_id: str | None
    last_synced_at: datetime | None
    last_attempt_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    consecutive_failures: int
    stripe_calls: int
    unsynced_amount: int
    pending_lines: int
    periods: list[PeriodSync]


def sync_status(connection: Connection, account_id: str) -> SyncStatus | None:
    account = repository.get_account(connection, account_id)
    if account is None:
        return None
    row = repository.sync_row(connection, account_id) or {}
    periods = repository.periods_to_sync(connection, account_id)
    lines = repository.lines_of(connection, account_id, [p.start for p in periods])
    views = []
    for period in periods:
        mine = [line for line in lines if line.period_start == period.start]
        views.append(
            PeriodSync(
                period.start,
                period.end,
                period.status.value,
                period.stripe_invoice_id,
                period.review_ends_at,
                len(mine),
                sum(
                    1
                    for line in mine
                    if is_pending(
                        line.version, line.synced_version, line.amount, line.synced_amount
                    )
                ),
            )
        )
    return SyncStatus(
        account_id=account_id,
        stripe_customer_id=account.stripe_customer_id,
        last_synced_at=row.get("last_synced_at"),
        last_attempt_at=row.get("last_attempt_at"),
        last_error=row.get("last_error"),
        last_error_at=row.get("last_error_at"),
        consecutive_failures=row.get("consecutive_failures", 0),
        stripe_calls=row.get("stripe_calls", 0),
        unsynced_amount=repository.unsynced_amount(connection, account_id),
        pending_lines=sum(view.pending_lines for view in views),
        periods=views,
    )


def _pending(line: SyncLine) -> bool:
    return is_pending(line.version, line.synced_version, line.amount, line.synced_amount)
