"""All SQL about problems: things a person should look at (failed payments, drift)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import Connection, insert, select, update

from billsync.db.tables import problems


@dataclass(frozen=True, slots=True)
class ProblemRecord:
    id: int
    account_id: str | None
    period_start: date | None
    kind: str
    fingerprint: str
    stripe_object_id: str | None
    line_id: int | None
    ledger_amount: int | None
    stripe_amount: int | None
    repairable: bool
    detail: str
    detected_at: datetime
    last_seen_at: datetime
    resolved_at: datetime | None
    resolution: str | None


@dataclass(frozen=True, slots=True)
class NewProblem:
    kind: str
    fingerprint: str
    detail: str
    account_id: str | None = None
    period_start: date | None = None
    stripe_object_id: str | None = None
    line_id: int | None = None
    ledger_amount: int | None = None
    stripe_amount: int | None = None
    repairable: bool = False


def report(connection: Connection, problem: NewProblem, now: datetime) -> int:
    """Record the problem, or refresh it (and reopen it) if it was seen before."""
    existing = connection.execute(
        select(problems.c.id).where(problems.c.fingerprint == problem.fingerprint)
    ).first()
    values = {
        "account_id": problem.account_id,
        "period_start": problem.period_start,
        "kind": problem.kind,
        "stripe_object_id": problem.stripe_object_id,
        "line_id": problem.line_id,
        "ledger_amount": problem.ledger_amount,
        "stripe_amount": problem.stripe_amount,
        "repairable": problem.repairable,
        "detail": problem.detail[:2000],
        "last_seen_at": now,
        "resolved_at": None,
        "resolution": None,
    }
    if existing is not None:
        connection.execute(update(problems).where(problems.c.id == existing.id).values(**values))
        return int(existing.id)
    result = connection.execute(
        insert(problems).returning(problems.c.id),
        {**values, "fingerprint": problem.fingerprint, "detected_at": now},
    )
    return int(result.scalar_one())


def resolve(connection: Connection, problem_id: int, resolution: str, now: datetime) -> bool:
    """Resolve the problem if it is still open; False if it was resolved already."""
    changed = connection.execute(
        update(problems)
        .where(problems.c.id == problem_id, problems.c.resolved_at.is_(None))
        .values(resolved_at=now, resolution=resolution[:200])
    )
    return changed.rowcount == 1


def resolve_missing(
    connection: Connection,
    *,
    kinds: Iterable[str],
    account_id: str,
    still_present: set[str],
    now: datetime,
) -> int:
    """Close open problems of these kinds for the account that were not found again."""
    rows = connection.execute(
        select(problems.c.id, problems.c.fingerprint).where(
            problems.c.account_id == account_id,
            problems.c.kind.in_(list(kinds)),
            problems.c.resolved_at.is_(None),
        )
    ).all()
    closed = 0
    for row in rows:
        if row.fingerprint not in still_present:
            resolve(connection, row.id, "no longer found", now)
            closed += 1
    return closed


def open_problems(connection: Connection, account_id: str | None = None) -> list[ProblemRecord]:
    query = select(problems).where(problems.c.resolved_at.is_(None))
    if account_id is not None:
        query = query.where(problems.c.account_id == account_id)
    rows = connection.execute(query.order_by(problems.c.detected_at, problems.c.id))
    return [ProblemRecord(**row._mapping) for row in rows]


def get(connection: Connection, problem_id: int) -> ProblemRecord | None:
    row = connection.execute(select(problems).where(problems.c.id == problem_id)).first()
    return None if row is None else ProblemRecord(**row._mapping)


def find(connection: Connection, fingerprint: str) -> ProblemRecord | None:
    """The problem with this fingerprint, open or resolved."""
    row = connection.execute(select(problems).where(problems.c.fingerprint == fingerprint)).first()
    return None if row is None else ProblemRecord(**row._mapping)


# How a person's decision is written on a problem (shared by the engine and the reconciler).
ACCEPTED = "accepted Stripe's version"
REMOVED_IN_STRIPE = "removed_in_stripe"
AMOUNT_DIFFERS = "amount_differs"


def finalization_failed(invoice_id: str) -> str:
    """The fingerprint of "Stripe could not finalize this invoice", whoever saw it: billsync's
    own finalize call, or an ``invoice.finalization_failed`` event."""
    return f"finalization_failed:{invoice_id}"


def removed_line_fingerprint(account_id: str, start: date, line_id: int) -> str:
    return f"drift:{REMOVED_IN_STRIPE}:{account_id}:{start.isoformat()}:{line_id}"


def lines_left_out(connection: Connection, account_id: str) -> set[int]:
    """Lines the sync engine must not put back on the draft: removed in Stripe and awaiting a
    person's decision, or removed and accepted as such."""
    rows = connection.execute(
        select(problems.c.line_id, problems.c.resolved_at, problems.c.resolution).where(
            problems.c.account_id == account_id,
            problems.c.kind == REMOVED_IN_STRIPE,
            problems.c.line_id.is_not(None),
        )
    )
    return {
        int(row.line_id)
        for row in rows
        if row.resolved_at is None or (row.resolution or "").startswith(ACCEPTED)
    }


def accepted_amounts(connection: Connection, account_id: str) -> dict[int, tuple[int, int]]:
    """Per line, the last amount difference a person accepted: (the ledger's amount then,
    Stripe's amount). While the line still has that amount, Stripe charges its own
    (``core.line_state``, ACCEPTED)."""
    rows = connection.execute(
        select(problems.c.line_id, problems.c.ledger_amount, problems.c.stripe_amount)
        .where(
            problems.c.account_id == account_id,
            problems.c.kind == AMOUNT_DIFFERS,
            problems.c.line_id.is_not(None),
            problems.c.resolution.startswith(ACCEPTED),
            problems.c.ledger_amount.is_not(None),
            problems.c.stripe_amount.is_not(None),
        )
        .order_by(problems.c.resolved_at)
    )
    return {int(row.line_id): (int(row.ledger_amount), int(row.stripe_amount)) for row in rows}
