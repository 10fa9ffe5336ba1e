"""The shared Stripe rate budget's row: GCRA state every process draws from (sync.shared_budget).

Times are Unix seconds. On PostgreSQL they come from the database server's clock
(``statement_timestamp()``), so processes on different hosts agree to the millisecond without
trusting each other's clocks; elsewhere (SQLite: one host) the caller passes its own time.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, Connection, Float, bindparam, case, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from billsync.db.tables import rate_budgets


def _now(connection: Connection, now: float | None) -> ColumnElement[float]:
    if now is not None:
        return bindparam("now", now, type_=Float)
    if connection.dialect.name != "postgresql":
        raise ValueError("pass the time: only PostgreSQL lends its clock to the budget")
    return func.extract("epoch", func.statement_timestamp()).cast(Float)


def _without_waiting_for_the_disk(connection: Connection) -> None:
    """On PostgreSQL, this transaction's commit does not wait for its WAL to reach the disk
    (https://www.postgresql.org/docs/current/wal-async-commit.html): a reservation lost in a
    crash only leaves a call slot unused, and a budget shared at 100 calls/s would otherwise
    wait for a disk flush per call, holding its one row locked meanwhile."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")


def ensure(connection: Connection, name: str) -> None:
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    connection.execute(
        dialect.insert(rate_budgets).on_conflict_do_nothing(),
        {"name": name, "full_at": 0.0, "penalized_until": 0.0, "granted": 0},
    )


def reserve(
    connection: Connection,
    name: str,
    *,
    interval: float,
    tolerance: float,
    horizon: float,
    now: float | None,
) -> tuple[bool, float]:
    """Reserve the next call slot if it starts within ``horizon`` seconds.

    Returns (True, seconds until the slot) when reserved — the caller waits that long, then
    calls — or (False, seconds until a slot would be within the horizon)."""
    _without_waiting_for_the_disk(connection)
    current = _now(connection, now)
    full_at = rate_budgets.c.full_at
    row = connection.execute(
        update(rate_budgets)
        .where(rate_budgets.c.name == name, full_at - tolerance - current <= horizon)
        .values(
            full_at=case((full_at > current, full_at), else_=current) + interval,
            granted=rate_budgets.c.granted + 1,
        )
        .returning(rate_budgets.c.full_at, current)
    ).first()
    if row is not None:
        new_full_at, at = float(row[0]), float(row[1])
        return True, max(0.0, new_full_at - interval - tolerance - at)
    ahead = connection.execute(
        select(full_at - tolerance - current).where(rate_budgets.c.name == name)
    ).scalar_one()
    return False, max(0.0, float(ahead) - horizon)


def penalize(
    connection: Connection, name: str, seconds: float, tolerance: float, now: float | None
) -> None:
    """No slot for anyone during ``seconds`` from now (Stripe answered 429)."""
    _without_waiting_for_the_disk(connection)
    current = _now(connection, now)
    until = current + seconds
    connection.execute(
        update(rate_budgets)
        .where(rate_budgets.c.name == name)
        .values(
            full_at=case(
                (rate_budgets.c.full_at > until + tolerance, rate_budgets.c.full_at),
                else_=until + tolerance,
            ),
            penalized_until=case(
                (rate_budgets.c.penalized_until > until, rate_budgets.c.penalized_until),
                else_=until,
            ),
        )
    )


def state(connection: Connection, name: str, now: float | None) -> dict[str, float]:
    """Seconds the reservations run ahead of now, penalty left, and calls granted in all."""
    current = _now(connection, now)
    row = connection.execute(
        select(
            rate_budgets.c.full_at - current,
            rate_budgets.c.penalized_until - current,
            rate_budgets.c.granted,
        ).where(rate_budgets.c.name == name)
    ).first()
    if row is None:
        return {"ahead": 0.0, "penalized_for": 0.0, "granted": 0.0}
    return {
        "ahead": max(0.0, float(row[0])),
        "penalized_for": max(0.0, float(row[1])),
        "granted": float(row[2]),
    }
