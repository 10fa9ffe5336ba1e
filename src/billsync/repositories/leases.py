"""Leases in the database: which process syncs which account, and which runs the singleton jobs.

A lease is a row's ``owner`` and ``expires_at``. Taking one is a single conditional ``UPDATE``
(free, expired, or already ours), so two processes can never both succeed. Claiming a batch of
due accounts locks the candidate rows with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL: workers
ticking at the same moment each take a disjoint share instead of queueing behind one another.
(SQLite has one writer at a time, so the same statement is already exclusive there.)

Every successful take bumps ``generation``: a process that lost its lease (it stalled past the
expiry and another took over) sees a newer number and stops.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, Connection, Table, and_, case, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from billsync.db.tables import account_sync, job_leases


def _insert_missing(connection: Connection, table: Table, rows: list[dict[str, object]]) -> None:
    if not rows:
        return
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    connection.execute(dialect.insert(table).on_conflict_do_nothing(), rows)


def ensure_sync_rows(connection: Connection, account_ids: Sequence[str], now: datetime) -> None:
    """Every account that can be leased has its ``account_sync`` row."""
    if not account_ids:
        return
    present = set(
        connection.execute(
            select(account_sync.c.account_id).where(account_sync.c.account_id.in_(account_ids))
        ).scalars()
    )
    _insert_missing(
        connection,
        account_sync,
        [
            {"account_id": a, "consecutive_failures": 0, "stripe_calls": 0, "updated_at": now}
            for a in sorted(set(account_ids) - present)
        ],
    )


def free_for(owner: str, now: datetime) -> ColumnElement[bool]:
    """Accounts ``owner`` may take: no lease, an expired one, or its own."""
    return or_(
        account_sync.c.lease_owner.is_(None),
        account_sync.c.lease_expires_at < now,
        account_sync.c.lease_owner == owner,
    )


def claim_accounts(
    connection: Connection,
    candidates: Sequence[str],
    owner: str,
    now: datetime,
    expires_at: datetime,
    *,
    limit: int,
) -> dict[str, int]:
    """Lease up to ``limit`` of ``candidates`` that nobody else holds; returns account →
    generation for those now ours. Rows another transaction is claiming are skipped, not
    waited for."""
    if not candidates or limit <= 0:
        return {}
    ensure_sync_rows(connection, candidates, now)
    chosen = (
        select(account_sync.c.account_id)
        .where(
            account_sync.c.account_id.in_(candidates),
            or_(
                account_sync.c.lease_owner.is_(None),
                account_sync.c.lease_expires_at < now,
            ),
        )
        # The longest-waiting accounts first, so a backlog is worked off fairly.
        .order_by(account_sync.c.last_attempt_at.asc().nulls_first(), account_sync.c.account_id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list(connection.execute(chosen).scalars())
    if not ids:
        return {}
    rows = connection.execute(
        update(account_sync)
        .where(
            account_sync.c.account_id.in_(ids),
            # Checked again: on SQLite the select above took no lock.
            or_(account_sync.c.lease_owner.is_(None), account_sync.c.lease_expires_at < now),
        )
        .values(
            lease_owner=owner,
            lease_expires_at=expires_at,
            lease_generation=account_sync.c.lease_generation + 1,
        )
        .returning(account_sync.c.account_id, account_sync.c.lease_generation)
    )
    return {row[0]: row[1] for row in rows}


def take_account(
    connection: Connection, account_id: str, owner: str, now: datetime, expires_at: datetime
) -> int | None:
    """Lease one account if it is free, expired or already ``owner``'s; its generation, or None
    when another process holds it. Re-taking our own lease keeps its generation."""
    ensure_sync_rows(connection, [account_id], now)
    row = connection.execute(
        update(account_sync)
        .where(account_sync.c.account_id == account_id, free_for(owner, now))
        .values(
            lease_expires_at=expires_at,
            # SET reads the old row: a new holder bumps the generation, a renewal keeps it.
            lease_generation=case(
                (
                    account_sync.c.lease_owner.is_distinct_from(owner),
                    account_sync.c.lease_generation + 1,
                ),
                else_=account_sync.c.lease_generation,
            ),
            lease_owner=owner,
        )
        .returning(account_sync.c.lease_generation)
    ).first()
    return None if row is None else int(row[0])


def renew_accounts(
    connection: Connection, account_ids: Sequence[str], owner: str, expires_at: datetime
) -> set[str]:
    """Push the expiry of our leases; returns the accounts still ours (the rest were lost)."""
    if not account_ids:
        return set()
    rows = connection.execute(
        update(account_sync)
        .where(account_sync.c.account_id.in_(account_ids), account_sync.c.lease_owner == owner)
        .values(lease_expires_at=expires_at)
        .returning(account_sync.c.account_id)
    )
    return {row[0] for row in rows}


def release_accounts(connection: Connection, account_ids: Sequence[str], owner: str) -> None:
    if not account_ids:
        return
    connection.execute(
        update(account_sync)
        .where(account_sync.c.account_id.in_(account_ids), account_sync.c.lease_owner == owner)
        .values(lease_owner=None, lease_expires_at=None)
    )


def holders(connection: Connection, account_ids: Sequence[str], now: datetime) -> dict[str, str]:
    """Account → owner, for those of ``account_ids`` leased and not expired."""
    if not account_ids:
        return {}
    rows = connection.execute(
        select(account_sync.c.account_id, account_sync.c.lease_owner).where(
            account_sync.c.account_id.in_(account_ids),
            account_sync.c.lease_owner.is_not(None),
            account_sync.c.lease_expires_at >= now,
        )
    )
    return {row[0]: row[1] for row in rows}


def take_over(
    connection: Connection,
    account_ids: Sequence[str],
    dead_owner: str,
    owner: str,
    expires_at: datetime,
) -> dict[str, int]:
    """Take the leases ``dead_owner`` still holds on ``account_ids`` (a process known to be
    gone); returns account → generation for those taken."""
    if not account_ids:
        return {}
    rows = connection.execute(
        update(account_sync)
        .where(account_sync.c.account_id.in_(account_ids), account_sync.c.lease_owner == dead_owner)
        .values(
            lease_owner=owner,
            lease_expires_at=expires_at,
            lease_generation=account_sync.c.lease_generation + 1,
        )
        .returning(account_sync.c.account_id, account_sync.c.lease_generation)
    )
    return {row[0]: row[1] for row in rows}


def lease_holder(connection: Connection, account_id: str) -> tuple[str | None, datetime | None]:
    row = connection.execute(
        select(account_sync.c.lease_owner, account_sync.c.lease_expires_at).where(
            account_sync.c.account_id == account_id
        )
    ).first()
    return (None, None) if row is None else (row[0], row[1])


# --- singleton jobs -----------------------------------------------------------------------


def take_job(
    connection: Connection, name: str, owner: str, now: datetime, expires_at: datetime
) -> bool:
    """Take or renew the lease on job ``name``; False while another process holds it."""
    _insert_missing(connection, job_leases, [{"name": name, "generation": 0}])
    row = connection.execute(
        update(job_leases)
        .where(
            job_leases.c.name == name,
            or_(
                job_leases.c.owner.is_(None),
                job_leases.c.expires_at < now,
                job_leases.c.owner == owner,
            ),
        )
        .values(
            generation=case(
                (job_leases.c.owner.is_distinct_from(owner), job_leases.c.generation + 1),
                else_=job_leases.c.generation,
            ),
            owner=owner,
            expires_at=expires_at,
        )
        .returning(job_leases.c.generation)
    ).first()
    return row is not None


def take_over_job(
    connection: Connection, name: str, dead_owner: str, owner: str, expires_at: datetime
) -> bool:
    """Take job ``name`` from ``dead_owner`` (a process known to be gone), if it still holds it."""
    row = connection.execute(
        update(job_leases)
        .where(job_leases.c.name == name, job_leases.c.owner == dead_owner)
        .values(generation=job_leases.c.generation + 1, owner=owner, expires_at=expires_at)
        .returning(job_leases.c.generation)
    ).first()
    return row is not None


def release_job(connection: Connection, name: str, owner: str) -> None:
    connection.execute(
        update(job_leases)
        .where(and_(job_leases.c.name == name, job_leases.c.owner == owner))
        .values(owner=None, expires_at=None)
    )


def job_holder(connection: Connection, name: str) -> str | None:
    return connection.execute(
        select(job_leases.c.owner).where(job_leases.c.name == name)
    ).scalar_one_or_none()
