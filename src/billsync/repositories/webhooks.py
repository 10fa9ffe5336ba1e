"""All SQL about Stripe's side: the webhook inbox, the invoice mirror, cursors."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from billsync.db.tables import billing_periods, cursors, invoice_mirror, lines, webhook_events


@dataclass(frozen=True, slots=True)
class InboxEvent:
    id: str
    type: str
    created: int
    payload: dict[str, Any]
    attempts: int


def _insert_ignore(connection: Connection, table: Any) -> Any:
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing()


def store_event(
    connection: Connection,
    *,
    event_id: str,
    event_type: str,
    created: int,
    livemode: bool,
    payload: dict[str, Any],
    source: str,
    now: datetime,
) -> bool:
    """Into the inbox once; False when the event was already there (a duplicate)."""
    result = connection.execute(
        _insert_ignore(connection, webhook_events).returning(webhook_events.c.id),
        {
            "id": event_id, "type": event_type, "created": created, "livemode": livemode,
            "payload": payload, "source": source, "received_at": now, "attempts": 0,
        },
    )  # fmt: skip
    return result.first() is not None


def pending_events(connection: Connection, now: datetime, limit: int) -> list[InboxEvent]:
    rows = connection.execute(
        select(
            webhook_events.c.id, webhook_events.c.type, webhook_events.c.created,
            webhook_events.c.payload, webhook_events.c.attempts,
        )
        .where(
            webhook_events.c.handled_at.is_(None),
            or_(
                webhook_events.c.next_attempt_at.is_(None),
                webhook_events.c.next_attempt_at <= now,
            ),
        )
        .order_by(webhook_events.c.created, webhook_events.c.received_at, webhook_events.c.id)
        .limit(limit)
    )  # fmt: skip
    return [InboxEvent(*tuple(row)) for row in rows]


def mark_handled(connection: Connection, event_id: str, outcome: str, now: datetime) -> None:
    connection.execute(
        update(webhook_events)
        .where(webhook_events.c.id == event_id)
        .values(handled_at=now, outcome=outcome[:100], last_error=None, next_attempt_at=None,
                attempts=webhook_events.c.attempts + 1)
    )  # fmt: skip


def mark_failed(
    connection: Connection, event_id: str, error: str, next_attempt_at: datetime
) -> None:
    connection.execute(
        update(webhook_events)
        .where(webhook_events.c.id == event_id)
        .values(last_error=error[:2000], next_attempt_at=next_attempt_at,
                attempts=webhook_events.c.attempts + 1)
    )  # fmt: skip


def counts(connection: Connection) -> dict[str, int]:
    rows = connection.execute(
        select(webhook_events.c.handled_at.is_(None), webhook_events.c.id)
    ).all()
    pending = sum(1 for row in rows if row[0])
    return {"received": len(rows), "pending": pending, "handled": len(rows) - pending}


def invoice_owner(connection: Connection, invoice_id: str) -> tuple[str, date] | None:
    row = connection.execute(
        select(billing_periods.c.account_id, billing_periods.c.start).where(
            billing_periods.c.stripe_invoice_id == invoice_id
        )
    ).first()
    return None if row is None else (row[0], row[1])


def line_of_invoice_item(connection: Connection, item_id: str) -> tuple[int, str, date] | None:
    row = connection.execute(
        select(lines.c.id, lines.c.account_id, lines.c.period_start).where(
            lines.c.stripe_invoice_item_id == item_id
        )
    ).first()
    return None if row is None else (row[0], row[1], row[2])


def get_mirror(connection: Connection, invoice_id: str) -> dict[str, Any] | None:
    row = (
        connection.execute(
            select(invoice_mirror).where(invoice_mirror.c.stripe_invoice_id == invoice_id)
        )
        .mappings()
        .first()
    )
    return None if row is None else dict(row)


def put_mirror(connection: Connection, invoice_id: str, values: dict[str, Any]) -> None:
    """Insert or update in one statement: the webhook processor and a sync can mirror the same
    invoice at the same moment."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(invoice_mirror).values(stripe_invoice_id=invoice_id, **values)
    connection.execute(
        statement.on_conflict_do_update(index_elements=["stripe_invoice_id"], set_=values)
    )


def put_mirror_if_newer(connection: Connection, invoice_id: str, values: dict[str, Any]) -> bool:
    """Apply an event's view of the invoice unless the mirror already holds a newer event's
    (one conditional statement: a concurrent writer cannot be rolled back by an older event).
    False when it did not apply."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(invoice_mirror).values(stripe_invoice_id=invoice_id, **values)
    result = connection.execute(
        statement.on_conflict_do_update(
            index_elements=["stripe_invoice_id"],
            set_=values,
            where=invoice_mirror.c.last_event_created <= values["last_event_created"],
        ).returning(invoice_mirror.c.stripe_invoice_id)
    )
    return result.first() is not None


def record_totals(connection: Connection, invoice_id: str, values: dict[str, Any]) -> None:
    """A write's answer says what the invoice totals now (subtotal, discount, total, …): the
    mirror keeps it without waiting for the webhook. Which event was applied last stays the
    webhooks' own bookkeeping."""
    put_mirror(connection, invoice_id, values)


def mirrors_of(connection: Connection, account_id: str) -> list[dict[str, Any]]:
    rows = connection.execute(
        select(invoice_mirror)
        .where(invoice_mirror.c.account_id == account_id)
        .order_by(invoice_mirror.c.period_start.desc())
    ).mappings()
    return [dict(row) for row in rows]


def get_cursor(connection: Connection, name: str) -> str | None:
    row = connection.execute(select(cursors.c.value).where(cursors.c.name == name)).first()
    return None if row is None else str(row[0])


def set_cursor(connection: Connection, name: str, value: str, now: datetime) -> None:
    if get_cursor(connection, name) is None:
        connection.execute(insert(cursors), {"name": name, "value": value, "updated_at": now})
    else:
        connection.execute(
            update(cursors).where(cursors.c.name == name).values(value=value, updated_at=now)
        )


def open_invoices_due(connection: Connection, account_id: str) -> list[dict[str, Any]]:
    rows = connection.execute(
        select(invoice_mirror).where(
            invoice_mirror.c.account_id == account_id,
            invoice_mirror.c.status.in_(["open", "uncollectible"]),
        )
    ).mappings()
    return [dict(row) for row in rows]
