"""Prepaid credit grants and their draw-down when periods close (core.credits)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time

from sqlalchemy import Connection, func, insert, select, update

from billsync.core.credits import CREDITS_KEY, Grant, draw_down
from billsync.core.folding import CREDIT_METRIC
from billsync.core.money import format_minor
from billsync.db.tables import credit_grant_uses, credit_grants, lines
from billsync.repositories import console as audit
from billsync.repositories.booked import book_line, has_line
from billsync.repositories.sync import mark_behind

_CHUNK = 5_000


@dataclass(frozen=True, slots=True)
class GrantRecord:
    id: int
    account_id: str
    currency: str
    amount: int
    remaining: int
    expires_at: datetime
    reason: str | None
    created_by: str
    created_at: datetime
    expired_at: datetime | None
    # What each period drew from it: (period start, amount), oldest first.
    uses: list[tuple[date, int]] = field(default_factory=list)

    def grant(self) -> Grant:
        return Grant(self.id, self.amount, self.remaining, self.expires_at, self.created_at)


def add_grant(
    connection: Connection,
    *,
    account_id: str,
    currency: str,
    amount: int,
    expires_at: datetime,
    reason: str | None,
    actor: str,
    now: datetime,
) -> int:
    result = connection.execute(
        insert(credit_grants).returning(credit_grants.c.id),
        {
            "account_id": account_id,
            "currency": currency,
            "amount": amount,
            "remaining": amount,
            "expires_at": expires_at,
            "reason": reason,
            "created_by": actor,
            "created_at": now,
            "expired_at": None,
        },
    )
    return int(result.scalar_one())


def grants_of(connection: Connection, account_id: str) -> list[GrantRecord]:
    """The account's grants, oldest first, each with what periods drew from it."""
    uses: dict[int, list[tuple[date, int]]] = {}
    for grant_id, start, amount in connection.execute(
        select(credit_grant_uses.c.grant_id, credit_grant_uses.c.period_start,
               credit_grant_uses.c.amount)
        .where(credit_grant_uses.c.account_id == account_id)
        .order_by(credit_grant_uses.c.period_start)
    ):  # fmt: skip
        uses.setdefault(grant_id, []).append((start, amount))
    rows = connection.execute(
        select(credit_grants)
        .where(credit_grants.c.account_id == account_id)
        .order_by(credit_grants.c.id)
    ).mappings()
    return [
        GrantRecord(
            row["id"],
            row["account_id"],
            row["currency"],
            row["amount"],
            row["remaining"],
            row["expires_at"],
            row["reason"],
            row["created_by"],
            row["created_at"],
            row["expired_at"],
            uses.get(row["id"], []),
        )
        for row in rows
    ]


def balance(grants: Sequence[GrantRecord], now: datetime) -> int:
    """What the account has left to draw on: its grants not expired yet."""
    return sum(g.remaining for g in grants if g.expires_at > now)


def draw_credits(
    connection: Connection, periods: Sequence[tuple[str, date]], now: datetime
) -> list[tuple[str, date, int]]:
    """For periods that just stopped taking usage (their commitment top-up booked): draw the
    accounts' grants down, as one credit line per period (none twice). Returns (account,
    period, amount drawn). Accounts without a grant left cost one indexed read per chunk."""
    by_account: dict[str, list[date]] = {}
    for account_id, start in periods:
        by_account.setdefault(account_id, []).append(start)
    ids = sorted(by_account)
    drawn: list[tuple[str, date, int]] = []
    for offset in range(0, len(ids), _CHUNK):
        holders = connection.execute(
            select(credit_grants.c.account_id)
            .where(
                credit_grants.c.account_id.in_(ids[offset : offset + _CHUNK]),
                credit_grants.c.remaining > 0,
            )
            .distinct()
        ).scalars().all()  # fmt: skip
        for account_id in sorted(holders):
            records = grants_of(connection, account_id)
            grants = {record.id: record.grant() for record in records}
            currency = records[0].currency
            for start in sorted(by_account[account_id]):
                if has_line(connection, account_id, start, CREDITS_KEY):
                    continue
                start_at = datetime.combine(start, time(), tzinfo=UTC)
                taken = draw_down(
                    list(grants.values()), start_at, _total(connection, account_id, start)
                )
                if not taken:
                    continue
                amount = sum(part for _, part in taken)
                for grant_id, part in taken:
                    connection.execute(
                        insert(credit_grant_uses),
                        {"grant_id": grant_id, "account_id": account_id, "period_start": start,
                         "amount": part, "created_at": now},
                    )  # fmt: skip
                    connection.execute(
                        update(credit_grants)
                        .where(credit_grants.c.id == grant_id)
                        .values(remaining=credit_grants.c.remaining - part)
                    )
                    old = grants[grant_id]
                    grants[grant_id] = Grant(
                        old.id, old.amount, old.remaining - part, old.expires_at, old.created_at
                    )
                book_line(
                    connection, account_id=account_id, start=start, key=CREDITS_KEY,
                    metric=CREDIT_METRIC,
                    description=f"Prepaid credit applied: {format_minor(amount, currency)} "
                    f"{currency.upper()}",
                    amount=-amount, currency=currency, now=now,
                )  # fmt: skip
                drawn.append((account_id, start, amount))
    if drawn:
        mark_behind(connection, {account_id for account_id, _, _ in drawn})
    return drawn


def expire_due(connection: Connection, now: datetime) -> int:
    """Grants past their expiry with something left: recorded as expired, audited once each
    (``credit_grant.expired``). What is left stays usable by the periods that began before the
    expiry, at their close; no later period draws on it."""
    rows = connection.execute(
        update(credit_grants)
        .where(
            credit_grants.c.expires_at <= now,
            credit_grants.c.expired_at.is_(None),
            credit_grants.c.remaining > 0,
        )
        .values(expired_at=now)
        .returning(
            credit_grants.c.id,
            credit_grants.c.account_id,
            credit_grants.c.remaining,
            credit_grants.c.currency,
            credit_grants.c.expires_at,
        )
    ).all()
    for grant_id, account_id, remaining, currency, expires_at in rows:
        audit.record(
            connection, actor="billsync", action="credit_grant.expired", now=now,
            account_id=account_id,
            detail={"grant": grant_id, "remaining": remaining, "currency": currency,
                    "expires_at": expires_at.isoformat()},
        )  # fmt: skip
    return len(rows)


def _total(connection: Connection, account_id: str, start: date) -> int:
    return int(
        connection.execute(
            select(func.coalesce(func.sum(lines.c.amount), 0)).where(
                lines.c.account_id == account_id,
                lines.c.period_start == start,
                lines.c.line_key != CREDITS_KEY,
            )
        ).scalar_one()
    )


def grants_by_account(
    connection: Connection, account_id: str | None
) -> dict[str, list[GrantRecord]]:
    """Every account's grants with their uses (``billsync verify``), or one account's."""
    ids = select(credit_grants.c.account_id).distinct()
    if account_id is not None:
        ids = ids.where(credit_grants.c.account_id == account_id)
    return {holder: grants_of(connection, holder) for holder in connection.execute(ids).scalars()}
