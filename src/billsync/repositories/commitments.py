"""The minimum-commitment lines booked when periods stop taking usage (core.commitment)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

from sqlalchemy import Connection, func, select

from billsync.core.commitment import COMMITMENT_KEY, commitment_on, commitments_of, top_up
from billsync.core.folding import BOOKED_METRICS, COMMITMENT_METRIC
from billsync.core.money import format_minor
from billsync.db.tables import accounts, lines
from billsync.repositories.booked import book_line, has_line
from billsync.repositories.sync import mark_behind

_CHUNK = 5_000


def used(connection: Connection, account_id: str, period_start: date) -> int:
    """What a period's usage lines add up to (its own usage and the late usage it carries),
    in minor units: what counts against a minimum commitment."""
    return int(
        connection.execute(
            select(func.coalesce(func.sum(lines.c.amount), 0)).where(
                lines.c.account_id == account_id,
                lines.c.period_start == period_start,
                lines.c.metric.not_in(sorted(BOOKED_METRICS)),
            )
        ).scalar_one()
    )


def description(minimum: int, spent: int, currency: str) -> str:
    code = currency.upper()
    return (
        f"Minimum commitment: {format_minor(minimum, currency)} {code} committed, "
        f"{format_minor(spent, currency)} {code} used"
    )


def book_top_ups(
    connection: Connection, periods: Sequence[tuple[str, date]], now: datetime
) -> list[tuple[str, date, int]]:
    """For periods that just stopped taking usage: the line that tops each up to its account's
    minimum commitment, where it used less (none twice). Returns (account, period, amount) of
    the lines booked. Accounts without a commitment cost one indexed read per chunk."""
    by_account: dict[str, list[date]] = {}
    for account_id, start in periods:
        by_account.setdefault(account_id, []).append(start)
    ids = sorted(by_account)
    booked: list[tuple[str, date, int]] = []
    for offset in range(0, len(ids), _CHUNK):
        rows = connection.execute(
            select(accounts.c.id, accounts.c.currency, accounts.c.commitments).where(
                accounts.c.id.in_(ids[offset : offset + _CHUNK]),
                accounts.c.commitments.is_not(None),
            )
        )
        for account_id, currency, document in rows:
            commitments = commitments_of(document)
            for start in by_account[account_id]:
                minimum = commitment_on(commitments, start)
                if not minimum or has_line(connection, account_id, start, COMMITMENT_KEY):
                    continue
                spent = used(connection, account_id, start)
                amount = top_up(minimum, spent)
                if amount == 0:
                    continue
                book_line(
                    connection, account_id=account_id, start=start, key=COMMITMENT_KEY,
                    metric=COMMITMENT_METRIC, description=description(minimum, spent, currency),
                    amount=amount, currency=currency, now=now,
                )  # fmt: skip
                booked.append((account_id, start, amount))
    if booked:
        mark_behind(connection, {account_id for account_id, _, _ in booked})
    return booked
