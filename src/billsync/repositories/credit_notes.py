"""All SQL about credit notes: the record of each credit note of billsync's invoices, beside the
invoice mirror."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.dialects import postgresql, sqlite

from billsync.db.tables import credit_notes


@dataclass(frozen=True, slots=True)
class CreditNoteRecord:
    stripe_credit_note_id: str
    stripe_invoice_id: str
    account_id: str | None
    period_start: date | None
    number: str | None
    status: str
    currency: str
    total: int
    pre_payment_amount: int
    post_payment_amount: int
    refund_amount: int
    credit_amount: int
    reason: str | None
    memo: str | None
    pdf: str | None
    lines: list[dict[str, Any]]
    created_at: datetime
    last_event_created: int
    updated_at: datetime


def put_credit_note(connection: Connection, values: dict[str, Any]) -> bool:
    """Insert or update a credit note in one statement, unless the record already holds a newer
    event's view of it (``last_event_created``; billsync's own call writes 0, which any event
    replaces). False when it did not apply."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(credit_notes).values(**values)
    updated = {key: value for key, value in values.items() if key != "stripe_credit_note_id"}
    result = connection.execute(
        statement.on_conflict_do_update(
            index_elements=["stripe_credit_note_id"],
            set_=updated,
            where=credit_notes.c.last_event_created <= values["last_event_created"],
        ).returning(credit_notes.c.stripe_credit_note_id)
    )
    return result.first() is not None


def of_account(connection: Connection, account_id: str) -> list[CreditNoteRecord]:
    """The account's credit notes, newest first."""
    rows = connection.execute(
        select(credit_notes)
        .where(credit_notes.c.account_id == account_id)
        .order_by(credit_notes.c.created_at.desc(), credit_notes.c.stripe_credit_note_id)
    )
    return [CreditNoteRecord(**row._mapping) for row in rows]


def of_invoices(
    connection: Connection, invoice_ids: Iterable[str]
) -> dict[str, list[CreditNoteRecord]]:
    """The credit notes of these invoices, oldest first, by invoice."""
    wanted = sorted(set(invoice_ids))
    found: dict[str, list[CreditNoteRecord]] = {}
    if not wanted:
        return found
    rows = connection.execute(
        select(credit_notes)
        .where(credit_notes.c.stripe_invoice_id.in_(wanted))
        .order_by(credit_notes.c.created_at, credit_notes.c.stripe_credit_note_id)
    )
    for row in rows:
        record = CreditNoteRecord(**row._mapping)
        found.setdefault(record.stripe_invoice_id, []).append(record)
    return found
