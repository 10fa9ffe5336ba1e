"""All SQL about sync state: what is owed vs what Stripe was last seen to hold, intents, and the
lifecycle columns of billing periods."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Connection,
    Select,
    String,
    and_,
    any_,
    bindparam,
    func,
    insert,
    or_,
    select,
    true,
    update,
)

from billsync.core.folding import ADJUSTMENT_METRIC
from billsync.core.periods import PeriodStatus
from billsync.core.policy import retry_delay
from billsync.db.tables import account_sync, accounts, billing_periods, lines, sync_intents
from billsync.repositories.booked import book_line
from billsync.repositories.leases import free_for
from billsync.repositories.ledger import lock_accounts

# Periods whose draft billsync keeps in step with the ledger.
# A line belongs to its account's period.
LINE_PERIOD = and_(
    billing_periods.c.account_id == lines.c.account_id,
    billing_periods.c.start == lines.c.period_start,
)

SYNCED_STATUSES = (
    PeriodStatus.OPEN.value,
    PeriodStatus.CLOSING.value,
    PeriodStatus.REVIEW.value,
    PeriodStatus.HELD.value,
)


@dataclass(frozen=True, slots=True)
class SyncAccount:
    id: str
    name: str
    email: str | None
    currency: str
    stripe_customer_id: str | None
    sync_policy: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class PeriodRow:
    account_id: str
    start: date
    end: date
    status: PeriodStatus
    stripe_invoice_id: str | None
    review_ends_at: datetime | None
    hold_remaining_seconds: int | None
    held_from: str | None
    finalize_requested_at: datetime | None
    finalized_at: datetime | None


@dataclass(frozen=True, slots=True)
class SyncLine:
    id: int
    period_start: date
    key: str
    metric: str
    grouping: dict[str, str]
    late_from: date | None
    quantity: Decimal
    amount: int
    version: int
    synced_version: int
    synced_amount: int | None
    stripe_line_item_id: str | None
    stripe_invoice_item_id: str | None
    rollup_key: str | None = None  # the roll-up item carrying it (core.rollup); None: its own


@dataclass(frozen=True, slots=True)
class Confirmation:
    """Stripe holds this line at this amount and version — as its own item, or (``rollup_key``)
    in the roll-up item ``line_item_id``."""

    line_id: int
    line_item_id: str | None
    invoice_item_id: str | None
    amount: int
    version: int
    rollup_key: str | None = None


def get_account(connection: Connection, account_id: str) -> SyncAccount | None:
    row = connection.execute(
        select(
            accounts.c.id,
            accounts.c.name,
            accounts.c.email,
            accounts.c.currency,
            accounts.c.stripe_customer_id,
            accounts.c.sync_policy,
        ).where(accounts.c.id == account_id)
    ).first()
    return None if row is None else SyncAccount(*tuple(row))


def _period(row: Any) -> PeriodRow:
    return PeriodRow(
        account_id=row.account_id,
        start=row.start,
        end=row.end,
        status=PeriodStatus(row.status),
        stripe_invoice_id=row.stripe_invoice_id,
        review_ends_at=row.review_ends_at,
        hold_remaining_seconds=row.hold_remaining_seconds,
        held_from=row.held_from,
        finalize_requested_at=row.finalize_requested_at,
        finalized_at=row.finalized_at,
    )


def get_period(connection: Connection, account_id: str, start: date) -> PeriodRow | None:
    row = connection.execute(
        select(billing_periods).where(
            billing_periods.c.account_id == account_id, billing_periods.c.start == start
        )
    ).first()
    return None if row is None else _period(row)


def period_containing(connection: Connection, account_id: str, day: date) -> date | None:
    """The start of the account's period that holds ``day``, if it has one yet."""
    start = connection.execute(
        select(billing_periods.c.start).where(
            billing_periods.c.account_id == account_id,
            billing_periods.c.start <= day,
            billing_periods.c.end > day,
        )
    ).scalar()
    return None if start is None else date.fromisoformat(str(start))


def periods_to_sync(connection: Connection, account_id: str) -> list[PeriodRow]:
    rows = connection.execute(
        select(billing_periods)
        .where(
            billing_periods.c.account_id == account_id,
            billing_periods.c.status.in_(SYNCED_STATUSES),
        )
        .order_by(billing_periods.c.start)
    )
    return [_period(row) for row in rows]


def periods_with_status(
    connection: Connection,
    statuses: Iterable[PeriodStatus],
    *,
    account_id: str | None = None,
    limit: int | None = None,
) -> list[PeriodRow]:
    query = select(billing_periods).where(
        billing_periods.c.status.in_([status.value for status in statuses])
    )
    if account_id is not None:
        query = query.where(billing_periods.c.account_id == account_id)
    query = query.order_by(billing_periods.c.start, billing_periods.c.account_id)
    if limit is not None:
        query = query.limit(limit)
    return [_period(row) for row in connection.execute(query)]


def start_closing(
    connection: Connection, ended_by: date, now: datetime, limit: int
) -> list[tuple[str, date]]:
    """Open periods that ended on or before ``ended_by`` become ``closing``, at most about
    ``limit`` of them (those of ``limit`` accounts), in one statement (both accept usage: no
    lock needed); returns them."""
    ended = (
        select(billing_periods.c.account_id)
        .where(
            billing_periods.c.status == PeriodStatus.OPEN.value,
            billing_periods.c.end <= ended_by,
        )
        .limit(limit)
    )
    rows = connection.execute(
        update(billing_periods)
        .where(
            billing_periods.c.status == PeriodStatus.OPEN.value,
            billing_periods.c.end <= ended_by,
            billing_periods.c.account_id.in_(ended.scalar_subquery()),
        )
        .values(status=PeriodStatus.CLOSING.value, status_changed_at=now, updated_at=now)
        .returning(billing_periods.c.account_id, billing_periods.c.start)
    )
    return sorted((row[0], row[1]) for row in rows)


def closing_due(connection: Connection, ended_by: date, limit: int) -> list[PeriodRow]:
    """Closing periods whose grace is over (they ended on or before ``ended_by``)."""
    query = (
        select(billing_periods)
        .where(
            billing_periods.c.status == PeriodStatus.CLOSING.value,
            billing_periods.c.end <= ended_by,
        )
        # By end only: ix_billing_periods_status_end gives them in that order and the scan
        # stops at the limit (ties in any order: a month's end closes together).
        .order_by(billing_periods.c.end)
        .limit(limit)
    )
    return [_period(row) for row in connection.execute(query)]


def reviews_due(connection: Connection, now: datetime, limit: int) -> list[PeriodRow]:
    """Periods in review whose draft is not complete yet (no review window set), or whose
    review window is over."""
    query = (
        select(billing_periods)
        .where(
            billing_periods.c.status == PeriodStatus.REVIEW.value,
            or_(
                billing_periods.c.review_ends_at.is_(None),
                billing_periods.c.review_ends_at <= now,
            ),
        )
        .order_by(billing_periods.c.end, billing_periods.c.account_id)
        .limit(limit)
    )
    return [_period(row) for row in connection.execute(query)]


def stop_usage_due(
    connection: Connection, ended_by: date, now: datetime, limit: int
) -> list[tuple[str, date]]:
    """Closing periods whose grace is over (ended on or before ``ended_by``) stop taking
    usage: at most ``limit`` of them, in one conditional statement taken under their accounts'
    ledger locks (as :func:`transition` is for one), so that each event is placed wholly
    before the change or after it. Returns the periods moved to review."""
    due = closing_due(connection, ended_by, limit)
    ids = sorted({period.account_id for period in due})
    if not ids:
        return []
    lock_accounts(connection, ids)
    rows = connection.execute(
        update(billing_periods)
        .where(
            billing_periods.c.account_id.in_(ids),
            billing_periods.c.status == PeriodStatus.CLOSING.value,
            billing_periods.c.end <= ended_by,
        )
        .values(
            status=PeriodStatus.REVIEW.value,
            status_changed_at=now,
            updated_at=now,
            review_ends_at=None,
        )
        .returning(billing_periods.c.account_id, billing_periods.c.start)
    )
    return sorted((row[0], row[1]) for row in rows)


def start_windows_in_step(
    connection: Connection, account_ids: Sequence[str], ends_at: datetime, now: datetime
) -> list[tuple[str, date]]:
    """The review window starts for these accounts' periods in review whose draft Stripe
    already holds whole (no line, or an invoice and every line pushed), in one statement.
    Drafts not complete yet are the closing lane's (their window starts after that sync)."""
    if not account_ids:
        return []
    out_of_step_line = (
        select(lines.c.id)
        .where(
            lines.c.account_id == billing_periods.c.account_id,
            lines.c.period_start == billing_periods.c.start,
            pending_line(),
        )
        .exists()
    )
    any_line = (
        select(lines.c.id)
        .where(
            lines.c.account_id == billing_periods.c.account_id,
            lines.c.period_start == billing_periods.c.start,
        )
        .exists()
    )
    rows = connection.execute(
        update(billing_periods)
        .where(
            billing_periods.c.account_id.in_(sorted(set(account_ids))),
            billing_periods.c.status == PeriodStatus.REVIEW.value,
            billing_periods.c.review_ends_at.is_(None),
            or_(~any_line, billing_periods.c.stripe_invoice_id.is_not(None)),
            ~out_of_step_line,
        )
        .values(review_ends_at=ends_at, updated_at=now)
        .returning(billing_periods.c.account_id, billing_periods.c.start)
    )
    return sorted((row[0], row[1]) for row in rows)


def request_finalize_due(
    connection: Connection, now: datetime, limit: int
) -> list[tuple[str, date]]:
    """Periods whose review window is over have their finalize requested (the closing lane
    does it), at most ``limit``, by ``ix_billing_periods_finalize_due``; their accounts are
    marked behind. Returns them."""
    due = connection.execute(
        select(billing_periods.c.account_id, billing_periods.c.start)
        .where(
            billing_periods.c.status == PeriodStatus.REVIEW.value,
            billing_periods.c.review_ends_at.is_not(None),
            billing_periods.c.finalize_requested_at.is_(None),
            billing_periods.c.review_ends_at <= now,
        )
        .order_by(billing_periods.c.review_ends_at)
        .limit(limit)
    ).all()
    ids = sorted({row[0] for row in due})
    if not ids:
        return []
    rows = connection.execute(
        update(billing_periods)
        .where(
            billing_periods.c.account_id.in_(ids),
            billing_periods.c.status == PeriodStatus.REVIEW.value,
            billing_periods.c.review_ends_at <= now,
            billing_periods.c.finalize_requested_at.is_(None),
        )
        .values(finalize_requested_at=now, updated_at=now)
        .returning(billing_periods.c.account_id, billing_periods.c.start)
    )
    requested = sorted((row[0], row[1]) for row in rows)
    mark_behind(connection, ids)
    return requested


def start_review_window(
    connection: Connection, account_id: str, start: date, ends_at: datetime, now: datetime
) -> bool:
    """The draft is complete: the review window starts (once)."""
    changed = connection.execute(
        update(billing_periods)
        .where(
            billing_periods.c.account_id == account_id,
            billing_periods.c.start == start,
            billing_periods.c.status == PeriodStatus.REVIEW.value,
            billing_periods.c.review_ends_at.is_(None),
        )
        .values(review_ends_at=ends_at, updated_at=now)
    )
    return changed.rowcount == 1


def lines_of(connection: Connection, account_id: str, starts: Sequence[date]) -> list[SyncLine]:
    if not starts:
        return []
    rows = connection.execute(
        select(
            lines.c.id,
            lines.c.period_start,
            lines.c.line_key,
            lines.c.metric,
            lines.c.grouping,
            lines.c.late_from,
            lines.c.quantity,
            lines.c.amount,
            lines.c.version,
            lines.c.synced_version,
            lines.c.synced_amount,
            lines.c.stripe_line_item_id,
            lines.c.stripe_invoice_item_id,
            lines.c.rollup_key,
        )
        .where(lines.c.account_id == account_id, lines.c.period_start.in_(list(starts)))
        .order_by(lines.c.period_start, lines.c.late_from.is_not(None), lines.c.line_key)
    )
    return [SyncLine(*tuple(row)) for row in rows]


def set_customer(connection: Connection, account_id: str, customer_id: str, now: datetime) -> None:
    connection.execute(
        update(accounts)
        .where(accounts.c.id == account_id)
        .values(stripe_customer_id=customer_id, updated_at=now)
    )


def set_invoice(
    connection: Connection, account_id: str, start: date, invoice_id: str | None, now: datetime
) -> None:
    connection.execute(
        update(billing_periods)
        .where(billing_periods.c.account_id == account_id, billing_periods.c.start == start)
        .values(stripe_invoice_id=invoice_id, updated_at=now)
    )


def _lock_owners(connection: Connection, line_ids: Sequence[int]) -> None:
    """Take the per-account ledger locks of these lines' accounts (PostgreSQL) before writing
    them: ingest rewrites the same rows under those locks, and two writers locking rows in
    different orders deadlock."""
    if connection.dialect.name != "postgresql" or not line_ids:
        return
    owners = connection.execute(
        select(lines.c.account_id).where(lines.c.id.in_(list(line_ids))).distinct()
    ).scalars()
    lock_accounts(connection, list(owners))


def _mark_owners_behind(connection: Connection, line_ids: Sequence[int]) -> None:
    if line_ids:
        owners = connection.execute(
            select(lines.c.account_id).where(lines.c.id.in_(list(line_ids))).distinct()
        ).scalars()
        mark_behind(connection, list(owners))


def confirm_lines(
    connection: Connection, confirmations: Sequence[Confirmation], now: datetime
) -> None:
    """Record what Stripe holds; a line confirmed with its item id is its own item or the
    roll-up item ``rollup_key`` (both set: a line moves between the two with its item)."""
    _lock_owners(connection, [confirmation.line_id for confirmation in confirmations])
    for confirmation in sorted(confirmations, key=lambda c: c.line_id):
        values: dict[str, Any] = {
            "synced_amount": confirmation.amount,
            "synced_version": confirmation.version,
            "synced_at": now,
        }
        if confirmation.line_item_id is not None:
            values["stripe_line_item_id"] = confirmation.line_item_id
            values["rollup_key"] = confirmation.rollup_key
        if confirmation.invoice_item_id is not None:
            values["stripe_invoice_item_id"] = confirmation.invoice_item_id
        connection.execute(update(lines).where(lines.c.id == confirmation.line_id).values(**values))


def forget_lines(connection: Connection, line_ids: Sequence[int]) -> None:
    """These lines are not (or no longer) in Stripe: the next sync adds them again."""
    _lock_owners(connection, line_ids)
    _mark_owners_behind(connection, line_ids)
    if line_ids:
        connection.execute(
            update(lines)
            .where(lines.c.id.in_(list(line_ids)))
            .values(
                synced_version=0,
                synced_amount=None,
                stripe_line_item_id=None,
                stripe_invoice_item_id=None,
                rollup_key=None,
                synced_at=None,
            )
        )


def lines_in_items(
    connection: Connection,
    account_id: str,
    start: date,
    line_item_ids: Collection[str],
    carried: Collection[int],
) -> list[int]:
    """The period's lines confirmed in these Stripe items, other than ``carried``."""
    if not line_item_ids:
        return []
    rows = connection.execute(
        select(lines.c.id).where(
            lines.c.account_id == account_id,
            lines.c.period_start == start,
            lines.c.stripe_line_item_id.in_(sorted(line_item_ids)),
        )
    )
    return [row.id for row in rows if row.id not in carried]


def mark_stripe_holds(connection: Connection, line_id: int, line_item_id: str, amount: int) -> None:
    """Stripe holds this line at ``amount`` (someone edited it there), not at what billsync
    last pushed: the next sync's plan sees the difference and updates it back to the ledger."""
    _lock_owners(connection, [line_id])
    _mark_owners_behind(connection, [line_id])
    connection.execute(
        update(lines)
        .where(lines.c.id == line_id)
        .values(synced_amount=amount, stripe_line_item_id=line_item_id)
    )


def transition(
    connection: Connection,
    account_id: str,
    start: date,
    expected: Iterable[PeriodStatus],
    *,
    to: PeriodStatus,
    now: datetime,
    not_finalizing: bool = False,
    **values: Any,
) -> bool:
    """Move the period to ``to`` if it is still in one of ``expected`` (and, with
    ``not_finalizing``, its finalization not requested); False if another process moved it
    first. Taken under the account's ledger lock (the one ingest holds while
    it places usage), so that a change of whether the period accepts usage falls cleanly
    between two ingest transactions: an event is placed either before it (on this period) or
    after it (on the next one, as late usage), never in between."""
    lock_accounts(connection, [account_id])
    changed = connection.execute(
        update(billing_periods)
        .where(
            billing_periods.c.account_id == account_id,
            billing_periods.c.start == start,
            billing_periods.c.status.in_([state.value for state in expected]),
            billing_periods.c.finalize_requested_at.is_(None) if not_finalizing else true(),
        )
        .values(status=to.value, status_changed_at=now, updated_at=now, **values)
    )
    return changed.rowcount == 1


def mark_finalized(connection: Connection, account_id: str, start: date, now: datetime) -> bool:
    """Stripe took over the period's invoice (or, under the zero-total "delete" rule, there is
    none): billsync no longer changes it. Conditional, as every status change: from any state
    but finalized (Stripe's fact stands whatever billsync's state was), so that a second
    report of it (a recovery, a webhook, a sweep) keeps the first ``finalized_at``; False
    when the period was finalized already."""
    return transition(
        connection, account_id, start,
        [status for status in PeriodStatus if status is not PeriodStatus.FINALIZED],
        to=PeriodStatus.FINALIZED, now=now, finalized_at=now,
    )  # fmt: skip


def update_period(
    connection: Connection, account_id: str, start: date, now: datetime, **values: Any
) -> None:
    connection.execute(
        update(billing_periods)
        .where(billing_periods.c.account_id == account_id, billing_periods.c.start == start)
        .values(updated_at=now, **values)
    )


def record_intent(  # noqa: PLR0917 - one row's columns, named at every call site
    connection: Connection,
    account_id: str,
    start: date | None,
    operation: str,
    key: str,
    payload: dict[str, Any],
    now: datetime,
) -> int:
    result = connection.execute(
        insert(sync_intents).returning(sync_intents.c.id),
        {
            "account_id": account_id,
            "period_start": start,
            "operation": operation,
            "idempotency_key": key,
            "payload": payload,
            "status": "pending",
            "created_at": now,
            "updated_at": now,
        },
    )
    return int(result.scalar_one())


def settle_intent(
    connection: Connection, intent_id: int, status: str, now: datetime, error: str | None = None
) -> None:
    connection.execute(
        update(sync_intents)
        .where(sync_intents.c.id == intent_id)
        .values(status=status, error=None if error is None else error[:2000], updated_at=now)
    )


# Intents whose outcome is unknown until Stripe is read back: a call that never answered (or
# a crash before its record), and a write Stripe answered 5xx (it may have written).
UNSETTLED = ("pending", "answered_5xx")


def answered_attempts(
    connection: Connection, account_id: str, key: str, *, applied: bool = False
) -> int:
    """How many attempts of the write keyed ``key`` (or ``key:retry-N``) Stripe answered with
    a 5xx, or refused after it started — each answer stored under its key, so each next
    attempt needs a new one. ``applied``: those applied too (the same write made again)."""
    statuses = ["answered_5xx", "answered_read", "refused"] + (["applied"] if applied else [])
    count = connection.execute(
        select(func.count())
        .select_from(sync_intents)
        .where(
            sync_intents.c.account_id == account_id,
            sync_intents.c.status.in_(statuses),
            or_(
                sync_intents.c.idempotency_key == key,
                sync_intents.c.idempotency_key.startswith(f"{key}:retry-", autoescape=True),
            ),
        )
    ).scalar_one()
    return int(count)


def pending_intents(connection: Connection, account_id: str) -> list[tuple[int, str, date | None]]:
    """The account's writes whose outcome is not known yet (``UNSETTLED``): read Stripe back
    before writing again."""
    rows = connection.execute(
        select(sync_intents.c.id, sync_intents.c.operation, sync_intents.c.period_start)
        .where(sync_intents.c.account_id == account_id, sync_intents.c.status.in_(UNSETTLED))
        .order_by(sync_intents.c.id)
    )
    return [(row.id, row.operation, row.period_start) for row in rows]


def items_removed_by_us(
    connection: Connection, account_id: str, start: date, item_ids: Iterable[str]
) -> set[str]:
    """Of ``item_ids``, those a ``remove_lines`` write of ours for the period named — whatever
    became of its answer. A removal whose answer was lost (a timeout while Stripe went on, or
    a request still running when the draft was read back) is ours, not someone's in Stripe."""
    wanted = set(item_ids)
    if not wanted:
        return set()
    rows = connection.execute(
        select(sync_intents.c.payload).where(
            sync_intents.c.account_id == account_id,
            sync_intents.c.period_start == start,
            sync_intents.c.operation == "remove_lines",
        )
    )
    named: set[str] = set()
    for row in rows:
        named.update(str(item) for item in (row.payload or {}).get("line_items", []))
    return wanted & named


def settle_pending(connection: Connection, account_id: str, status: str, now: datetime) -> None:
    """Stripe was read back: the unsettled intents are settled (``status``); those answered
    5xx become ``answered_read`` — still counted as attempts whose key Stripe keeps."""
    for was, becomes in (("pending", status), ("answered_5xx", "answered_read")):
        connection.execute(
            update(sync_intents)
            .where(sync_intents.c.account_id == account_id, sync_intents.c.status == was)
            .values(status=becomes, updated_at=now)
        )


def _ensure_sync_row(connection: Connection, account_id: str, now: datetime) -> None:
    exists = connection.execute(
        select(account_sync.c.account_id).where(account_sync.c.account_id == account_id)
    ).first()
    if exists is None:
        connection.execute(
            insert(account_sync),
            {
                "account_id": account_id,
                "consecutive_failures": 0,
                "stripe_calls": 0,
                "updated_at": now,
            },
        )


def record_attempt(
    connection: Connection,
    account_id: str,
    now: datetime,
    *,
    calls: int,
    error: str | None,
) -> None:
    """A sync ran: a success clears the failures; a failure counts one more and sets when the
    account may be tried again (``retry_at``)."""
    _ensure_sync_row(connection, account_id, now)
    values: dict[str, Any] = {
        "last_attempt_at": now,
        "updated_at": now,
        "stripe_calls": account_sync.c.stripe_calls + calls,
    }
    if error is None:
        values.update(last_synced_at=now, consecutive_failures=0, last_error=None)
    else:
        failures = (
            1
            + connection.execute(
                select(account_sync.c.consecutive_failures).where(
                    account_sync.c.account_id == account_id
                )
            ).scalar_one()
        )
        values.update(
            last_error=error[:2000],
            last_error_at=now,
            consecutive_failures=failures,
            retry_at=now + retry_delay(failures),
        )
    if error is None:
        values["retry_at"] = None
    connection.execute(
        update(account_sync).where(account_sync.c.account_id == account_id).values(**values)
    )


def sync_row(connection: Connection, account_id: str) -> dict[str, Any] | None:
    row = (
        connection.execute(select(account_sync).where(account_sync.c.account_id == account_id))
        .mappings()
        .first()
    )
    return None if row is None else dict(row)


def pending_line() -> ColumnElement[bool]:
    """A line Stripe does not hold as the ledger says: ``core.line_state.is_pending`` in SQL
    (its version is not the one confirmed, or Stripe was seen holding another amount)."""
    return or_(
        lines.c.version != lines.c.synced_version,
        lines.c.synced_amount.is_(None),
        lines.c.amount != lines.c.synced_amount,
    )


def out_of_step(*columns: Any) -> Select[Any]:
    """``columns`` of the lines not in step with Stripe: their version or amount differs from
    what Stripe was last seen to hold, in a period billsync still keeps in step."""
    return (
        select(*columns)
        .select_from(lines)
        .join(billing_periods, LINE_PERIOD)
        .where(
            billing_periods.c.status.in_(SYNCED_STATUSES),
            pending_line(),
        )
    )


def mark_behind(connection: Connection, account_ids: Iterable[str]) -> None:
    """These accounts have changes Stripe does not hold yet (in the writer's transaction).
    Rows already marked are not written again: the steady state costs an index look-up."""
    ids = sorted(set(account_ids))
    if connection.dialect.name == "postgresql":
        # One array parameter: an IN list of a batch's hundreds of accounts made PostgreSQL
        # plan a statement of hundreds of parameters on every batch (1.8 µs per event).
        connection.execute(
            update(account_sync)
            .where(account_sync.c.account_id == any_(bindparam("ids", ids, ARRAY(String))))
            .where(account_sync.c.behind.is_(False))
            .values(behind=True)
        )
        return
    # SQLite: one JSON parameter read by json_each, for the same reason.
    connection.execute(
        update(account_sync)
        .where(
            account_sync.c.account_id.in_(
                select(
                    func.json_each(bindparam("ids", orjson.dumps(ids).decode()))
                    .table_valued("value")
                    .c.value
                )
            )
        )
        .where(account_sync.c.behind.is_(False))
        .values(behind=True)
    )


def settle_behind(connection: Connection, account_id: str) -> bool:
    """After a sync: whether the account is still behind, written back. Taken under the
    account's ledger lock, so that usage committed meanwhile is seen (it keeps the flag) and
    usage committing later sets it again after us; returns the flag."""
    lock_accounts(connection, [account_id])
    still = (
        connection.execute(
            out_of_step(lines.c.account_id).where(lines.c.account_id == account_id).limit(1)
        ).first()
        is not None
        or connection.execute(
            select(billing_periods.c.account_id)
            .where(
                billing_periods.c.account_id == account_id,
                billing_periods.c.status.in_(SYNCED_STATUSES),
                billing_periods.c.finalize_requested_at.is_not(None),
            )
            .limit(1)
        ).first()
        is not None
    )
    connection.execute(
        update(account_sync).where(account_sync.c.account_id == account_id).values(behind=still)
    )
    return still


def not_waiting_to_retry(now: datetime | None) -> ColumnElement[bool]:
    """Accounts not in their back-off after failed syncs (``account_sync.retry_at``)."""
    if now is None:
        return true()
    return or_(account_sync.c.retry_at.is_(None), account_sync.c.retry_at <= now)


@dataclass(frozen=True)
class Claimant:
    """The worker asking what is due: accounts another live lease holds are not offered to it
    (``owner`` and the wall-clock ``now`` its leases are dated by). Without this, N workers
    each read the same head of the queue, which the first of them has claimed already, and
    the others claim nothing until it drains: one worker's worth of syncs, not N."""

    owner: str
    now: datetime


def not_leased_elsewhere(claimant: Claimant | None) -> ColumnElement[bool]:
    return true() if claimant is None else free_for(claimant.owner, claimant.now)


def queued_on_the_platforms_policy(
    now: datetime | None, claimant: Claimant | None
) -> list[ColumnElement[bool]]:
    """In the due queue (marked behind), on the platform's policy (no override of their own),
    not in a retry's back-off, not leased by another worker: the accounts a policy weighs."""
    return [
        account_sync.c.behind.is_(True),
        accounts.c.sync_policy.is_(None),
        not_waiting_to_retry(now),
        not_leased_elsewhere(claimant),
    ]


def _line_unsynced() -> ColumnElement[Any]:
    """How far Stripe is behind one line: |amount − synced amount|."""
    return func.abs(lines.c.amount - func.coalesce(lines.c.synced_amount, 0))


def due_by_interval(
    connection: Connection,
    window_start: datetime,
    limit: int,
    *,
    now: datetime | None = None,
    claimant: Claimant | None = None,
) -> list[tuple[str, datetime | None]]:
    """Accounts behind, on the platform's policy (no override of their own), not synced in
    this window: never synced first, then least recently synced, at most ``limit``. Two range
    scans of the partial index ``ix_account_sync_due`` (last_synced_at, account_id), each in
    the order it keeps: the cost is the rows returned (and those leased by other workers it
    steps over, at most their claims), not the accounts behind."""

    def due(condition: Any, order: list[Any], room: int) -> list[tuple[str, datetime | None]]:
        query = (
            select(account_sync.c.account_id, account_sync.c.last_synced_at)
            .join(accounts, accounts.c.id == account_sync.c.account_id)
            .where(*queued_on_the_platforms_policy(now, claimant), condition)
            .order_by(*order)
            .limit(room)
        )
        return [(row[0], row[1]) for row in connection.execute(query)]

    in_index_order = [account_sync.c.last_synced_at, account_sync.c.account_id]
    never = due(account_sync.c.last_synced_at.is_(None), in_index_order, limit)
    if len(never) >= limit:
        return never
    return never + due(
        account_sync.c.last_synced_at < window_start, in_index_order, limit - len(never)
    )


def due_by_threshold(
    connection: Connection,
    threshold: int,
    limit: int,
    *,
    now: datetime | None = None,
    claimant: Claimant | None = None,
) -> list[tuple[str, int]]:
    """Accounts behind, on the platform's policy, whose unsynced amount (Σ |amount − synced
    amount| over their pending lines, as :func:`unsynced_amount`) reached ``threshold``: the
    largest first, at most ``limit``. One grouped statement over the pending lines of the
    accounts in the due queue, instead of a read per account behind."""
    owed = func.sum(_line_unsynced())
    query = (
        select(account_sync.c.account_id, owed.label("unsynced"))
        .join(accounts, accounts.c.id == account_sync.c.account_id)
        .join(lines, lines.c.account_id == account_sync.c.account_id)
        .join(billing_periods, LINE_PERIOD)
        .where(
            *queued_on_the_platforms_policy(now, claimant),
            billing_periods.c.status.in_(SYNCED_STATUSES),
            pending_line(),
        )
        .group_by(account_sync.c.account_id)
        .having(owed >= threshold)
        .order_by(owed.desc(), account_sync.c.account_id)
        .limit(limit)
    )
    return [(row[0], int(row[1])) for row in connection.execute(query)]


def due_for_closing(
    connection: Connection,
    limit: int,
    *,
    now: datetime | None = None,
    claimant: Claimant | None = None,
) -> list[str]:
    """Accounts with a period to complete (in review, its draft not complete yet) or to
    finalize (requested): the closing lane's work, oldest period first, at most ``limit`` —
    one range of ``ix_billing_periods_closing_work``, however many periods are in review. An
    account waiting to retry after failed syncs is left out until ``retry_at``, and one
    another worker's live lease holds (its claim is on the way)."""
    held_back: list[ColumnElement[bool]] = []
    if now is not None:
        held_back.append(account_sync.c.retry_at > now)
    if claimant is not None:
        held_back.append(~not_leased_elsewhere(claimant))
    waiting = (
        ~select(account_sync.c.account_id)
        .where(account_sync.c.account_id == billing_periods.c.account_id, or_(*held_back))
        .exists()
        if held_back
        else true()
    )
    query = (
        select(billing_periods.c.account_id)
        .where(
            billing_periods.c.status == PeriodStatus.REVIEW.value,
            or_(
                billing_periods.c.review_ends_at.is_(None),
                billing_periods.c.finalize_requested_at.is_not(None),
            ),
            waiting,
        )
        .order_by(billing_periods.c.end, billing_periods.c.account_id)
        .limit(limit)
    )
    # An account with two periods in that state (rare) comes once, with its oldest.
    return list(dict.fromkeys(row[0] for row in connection.execute(query)))


def behind_accounts(
    connection: Connection,
    *,
    with_override: bool,
    limit: int | None = None,
    now: datetime | None = None,
    claimant: Claimant | None = None,
) -> list[tuple[str, dict[str, Any] | None, datetime | None]]:
    """Accounts behind, with their policy override and when they were last synced: those with
    an override of their own (few), or those on the platform's policy."""
    query = (
        select(accounts.c.id, accounts.c.sync_policy, account_sync.c.last_synced_at)
        .join(account_sync, accounts.c.id == account_sync.c.account_id)
        .where(
            account_sync.c.behind.is_(True),
            accounts.c.sync_policy.is_not(None)
            if with_override
            else accounts.c.sync_policy.is_(None),
            not_waiting_to_retry(now),
            not_leased_elsewhere(claimant),
        )
        .order_by(account_sync.c.last_synced_at.asc().nulls_first(), accounts.c.id)
    )
    if limit is not None:
        query = query.limit(limit)
    return [(row[0], row[1], row[2]) for row in connection.execute(query)]


def mark_forgotten_behind(connection: Connection, now: datetime) -> list[str]:
    """The backstop: accounts out of step that no writer marked (a change made outside
    billsync, or a writer that forgot); marks them and returns them. One statement, so that
    the lines out of step and the mark are read in the same snapshot: an account whose sync
    settled between two separate reads is not taken for a forgotten one. Reads every
    out-of-step line: run it seldom."""
    dirty = out_of_step(lines.c.account_id).union(
        select(billing_periods.c.account_id).where(
            billing_periods.c.status.in_(SYNCED_STATUSES),
            billing_periods.c.finalize_requested_at.is_not(None),
        )
    )
    rows = connection.execute(
        update(account_sync)
        .where(account_sync.c.behind.is_(False), account_sync.c.account_id.in_(dirty))
        .values(behind=True)
        .returning(account_sync.c.account_id)
    )
    return sorted(row[0] for row in rows)


def accounts_needing_sync(connection: Connection) -> list[str]:
    """Accounts with a line not in step with Stripe, or a period waiting to be finalized."""
    dirty = out_of_step(lines.c.account_id)
    finalizing = select(billing_periods.c.account_id).where(
        billing_periods.c.status.in_(SYNCED_STATUSES),
        billing_periods.c.finalize_requested_at.is_not(None),
    )
    rows = connection.execute(dirty.union(finalizing))
    return sorted({row[0] for row in rows})


def unsynced_amount(connection: Connection, account_id: str) -> int:
    """Σ |amount − synced amount| over the account's pending lines: how far Stripe is behind
    (``core.line_state.behind``)."""
    total = connection.execute(
        select(func.coalesce(func.sum(_line_unsynced()), 0))
        .join(billing_periods, LINE_PERIOD)
        .where(
            lines.c.account_id == account_id,
            billing_periods.c.status.in_(SYNCED_STATUSES),
            pending_line(),
        )
    ).scalar_one()
    return int(total)


def account_of_customer(connection: Connection, customer_id: str) -> str | None:
    """The account whose Stripe customer this is (``stripe_customer_id`` is unique: indexed)."""
    return connection.execute(
        select(accounts.c.id).where(accounts.c.stripe_customer_id == customer_id)
    ).scalar_one_or_none()


def all_account_ids(connection: Connection) -> list[str]:
    return [row[0] for row in connection.execute(select(accounts.c.id).order_by(accounts.c.id))]


def add_adjustment_line(
    connection: Connection,
    *,
    account_id: str,
    period_start: date,
    key: str,
    description: str,
    amount: int,
    currency: str,
    now: datetime,
) -> int:
    """A credit (negative) or charge added by support: a line of its own, pushed like any."""
    mark_behind(connection, [account_id])
    return book_line(
        connection, account_id=account_id, start=period_start, key=key,
        metric=ADJUSTMENT_METRIC, description=description, amount=amount, currency=currency,
        now=now,
    )  # fmt: skip


def count_adjustments(connection: Connection, account_id: str, period_start: date) -> int:
    return int(
        connection.execute(
            select(func.count())
            .select_from(lines)
            .where(
                lines.c.account_id == account_id,
                lines.c.period_start == period_start,
                lines.c.metric == ADJUSTMENT_METRIC,
            )
        ).scalar_one()
    )


def health(connection: Connection, now: datetime) -> dict[str, Any]:
    """Numbers for the console's health page."""
    behind = connection.execute(
        select(func.min(lines.c.updated_at), func.count())
        .join(billing_periods, LINE_PERIOD)
        .where(billing_periods.c.status.in_(SYNCED_STATUSES), pending_line())
    ).first()
    failing = (
        connection.execute(
            select(
                account_sync.c.account_id,
                account_sync.c.consecutive_failures,
                account_sync.c.last_error,
                account_sync.c.last_error_at,
            )
            .where(account_sync.c.consecutive_failures > 0)
            .order_by(account_sync.c.consecutive_failures.desc())
            .limit(50)
        )
        .mappings()
        .all()
    )
    oldest = None if behind is None else behind[0]
    return {
        "pending_lines": 0 if behind is None else int(behind[1]),
        "oldest_pending_change": oldest,
        "sync_lag_seconds": None if oldest is None else int((now - oldest).total_seconds()),
        "failing_accounts": [dict(row) for row in failing],
    }


@dataclass(frozen=True, slots=True)
class PlatformSummary:
    accounts: int
    behind: int
    never_synced_behind: int
    oldest_behind_sync: datetime | None
    periods: dict[str, int]
    active_accounts: int  # with a line in a period that is open or closing


def platform_summary(connection: Connection) -> PlatformSummary:
    """The whole platform in a few aggregate statements (``billsync status``)."""
    total = connection.execute(select(func.count()).select_from(accounts)).scalar_one()
    queue = connection.execute(
        select(
            func.count(),
            func.count().filter(account_sync.c.last_synced_at.is_(None)),
            func.min(account_sync.c.last_synced_at),
        ).where(account_sync.c.behind.is_(True))
    ).one()
    periods = {
        str(status): int(count)
        for status, count in connection.execute(
            select(billing_periods.c.status, func.count()).group_by(billing_periods.c.status)
        )
    }
    active = connection.execute(
        select(func.count(func.distinct(lines.c.account_id)))
        .select_from(lines)
        .join(billing_periods, LINE_PERIOD)
        .where(billing_periods.c.status.in_([PeriodStatus.OPEN.value, PeriodStatus.CLOSING.value]))
    ).scalar_one()
    return PlatformSummary(
        accounts=int(total), behind=int(queue[0]), never_synced_behind=int(queue[1]),
        oldest_behind_sync=queue[2], periods=periods, active_accounts=int(active),
    )  # fmt: skip
