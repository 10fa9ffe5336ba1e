"""All SQL about accounts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError

from billsync.core.commitment import Commitment, commitments_of
from billsync.core.periods import AnchorChange, AnchorSchedule
from billsync.core.pricing import RateCard, cards_of
from billsync.db.tables import account_sync, accounts, billing_periods


@dataclass(frozen=True, slots=True)
class AccountRecord:
    id: str
    name: str
    email: str | None
    currency: str
    billing_anchor_day: int | None
    stripe_customer_id: str | None
    created_at: datetime
    sync_policy: dict[str, Any] | None = None
    # The anchor days its periods followed before ``billing_anchor_day`` (AnchorSchedule).
    anchor_changes: tuple[AnchorChange, ...] = ()
    # Its negotiated prices (core.pricing), by ascending effective_from.
    rate_cards: tuple[RateCard, ...] = ()
    # Its minimum commitments (core.commitment), by ascending effective_from.
    commitments: tuple[Commitment, ...] = ()

    def schedule(self, default_anchor_day: int) -> AnchorSchedule:
        """The account's periods (``default_anchor_day``: BILLSYNC_BILLING_ANCHOR_DAY, for an
        account without an anchor day of its own)."""
        return AnchorSchedule(self.billing_anchor_day or default_anchor_day, self.anchor_changes)


class AccountExists(Exception):
    pass


def anchor_changes_of(value: Any) -> tuple[AnchorChange, ...]:
    """The stored ``anchor_changes`` document (JSON: a list, or None) as AnchorChanges."""
    if not value:
        return ()
    return tuple(
        AnchorChange(date.fromisoformat(item["until"]), int(item["anchor_day"])) for item in value
    )


def anchor_changes_document(changes: Sequence[AnchorChange]) -> list[dict[str, Any]] | None:
    if not changes:
        return None
    return [
        {"until": change.until.isoformat(), "anchor_day": change.anchor_day} for change in changes
    ]


def _record(row: RowMapping) -> AccountRecord:
    return AccountRecord(
        id=row["id"],
        name=row["name"],
        email=row["email"],
        currency=row["currency"],
        billing_anchor_day=row["billing_anchor_day"],
        stripe_customer_id=row["stripe_customer_id"],
        created_at=row["created_at"],
        sync_policy=row["sync_policy"],
        anchor_changes=anchor_changes_of(row["anchor_changes"]),
        rate_cards=cards_of(row["rate_cards"]),
        commitments=commitments_of(row["commitments"]),
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


@dataclass(frozen=True, slots=True)
class AccountFilter:
    """``GET /v1/accounts``' filters, all optional and combined: a name prefix (exact case),
    an exact email, an exact Stripe customer id."""

    name_prefix: str | None = None
    email: str | None = None
    customer: str | None = None


def list_accounts(
    connection: Connection, wanted: AccountFilter, *, after: str | None, limit: int
) -> list[AccountRecord]:
    """Up to ``limit`` accounts in id order, those after ``after`` (keyset pagination: the
    primary key's order, so a page costs the same wherever it is, never an OFFSET)."""
    query = select(accounts).order_by(accounts.c.id).limit(limit)
    if after is not None:
        query = query.where(accounts.c.id > after)
    if wanted.name_prefix:
        if connection.dialect.name == "sqlite":
            # SQLite's LIKE ignores ASCII case: compare the prefix itself, as PostgreSQL's
            # LIKE does (the account lists are small there).
            prefix_of_name = func.substr(accounts.c.name, 1, len(wanted.name_prefix))
            query = query.where(prefix_of_name == wanted.name_prefix)
        else:
            query = query.where(accounts.c.name.startswith(wanted.name_prefix, autoescape=True))
    if wanted.email is not None:
        query = query.where(accounts.c.email == wanted.email)
    if wanted.customer is not None:
        query = query.where(accounts.c.stripe_customer_id == wanted.customer)
    return [_record(row) for row in connection.execute(query).mappings()]


def update_account(connection: Connection, account_id: str, now: datetime, **values: Any) -> bool:
    """Set these columns of the account; False when there is no such account."""
    result = connection.execute(
        update(accounts).where(accounts.c.id == account_id).values(**values, updated_at=now)
    )
    return result.rowcount == 1


def lock_account(connection: Connection, account_id: str) -> AccountRecord | None:
    """The account, its row locked until the transaction ends (PostgreSQL; SQLite's writers
    are serialized anyway): two changes of one account queue."""
    query = select(accounts).where(accounts.c.id == account_id)
    if connection.dialect.name == "postgresql":
        query = query.with_for_update()
    row = connection.execute(query).mappings().first()
    return None if row is None else _record(row)


def latest_period_end(connection: Connection, account_id: str) -> date | None:
    """The end of the latest period the ledger holds for the account."""
    return connection.execute(
        select(func.max(billing_periods.c.end)).where(billing_periods.c.account_id == account_id)
    ).scalar()
