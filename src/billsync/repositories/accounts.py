"""All SQL about accounts."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, insert, select
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError

from billsync.db.tables import account_sync, accounts


@dataclass(frozen=True, slots=True)
class AccountRecord:
    id: str
    name: str
    email: str | None
    currency: str
    billing_anchor_day: int | None
    stripe_customer_id: str | None
    created_at: datetime


class AccountExists(Exception):
    pass


def _record(row: RowMapping) -> AccountRecord:
    return AccountRecord(
        id=row["id"],
        name=row["name"],
        email=row["email"],
        currency=row["currency"],
        billing_anchor_day=row["billing_anchor_day"],
        stripe_customer_id=row["stripe_customer_id"],
        created_at=row["created_at"],
    )


def insert_account(connection: Connection, record: AccountRecord) -> None:
    try:
        with connection.begin_nested():
            connection.execute(
                insert(accounts).values(
                    id=record.id,
                    name=record.name,
                    email=record.email,
                    currency=record.currency,
                    billing_anchor_day=record.billing_anchor_day,
                    stripe_customer_id=record.stripe_customer_id,
                    created_at=record.created_at,
                    updated_at=record.created_at,
                )
            )
            # Its sync row from the start: the scheduler's due queue reads only these rows.
            connection.execute(
                insert(account_sync).values(
                    account_id=record.id, consecutive_failures=0, stripe_calls=0,
                    updated_at=record.created_at, behind=False,
                )
            )  # fmt: skip
    except IntegrityError as error:
        raise AccountExists(record.id) from error


def get_account(connection: Connection, account_id: str) -> AccountRecord | None:
    row = connection.execute(select(accounts).where(accounts.c.id == account_id)).mappings().first()
    return None if row is None else _record(row)


def get_accounts(connection: Connection, account_ids: Iterable[str]) -> dict[str, AccountRecord]:
    ids = sorted(set(account_ids))
    if not ids:
        return {}
    rows = connection.execute(select(accounts).where(accounts.c.id.in_(ids))).mappings()
    return {row["id"]: _record(row) for row in rows}


def account_ids(connection: Connection) -> list[str]:
    """Every account's id, in order."""
    return list(connection.execute(select(accounts.c.id).order_by(accounts.c.id)).scalars())
