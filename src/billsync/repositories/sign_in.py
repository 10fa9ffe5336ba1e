"""All SQL about failed console sign-ins: counts per key, shared by every API process."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection, case, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from billsync.db.tables import sign_in_failures as table


def failures(connection: Connection, keys: Sequence[str]) -> dict[str, tuple[int, datetime]]:
    """Each key's failure count and the time of its last failure (keys never failed: absent)."""
    rows = connection.execute(
        select(table.c.key, table.c.failures, table.c.last_at).where(table.c.key.in_(keys))
    )
    return {str(key): (int(count), last_at) for key, count, last_at in rows}


def add_failure(
    connection: Connection, keys: Sequence[str], *, now: datetime, forget_before: datetime
) -> None:
    """One more failure under each key; a count whose last failure is older than
    ``forget_before`` starts again at 1. One statement per key, atomic on both stores."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table)
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.key],
        set_={
            "failures": case((table.c.last_at < forget_before, 1), else_=table.c.failures + 1),
            "last_at": now,
        },
    )
    connection.execute(statement, [{"key": key, "failures": 1, "last_at": now} for key in keys])


def clear(connection: Connection, keys: Sequence[str]) -> None:
    connection.execute(delete(table).where(table.c.key.in_(keys)))


def forget(connection: Connection, before: datetime) -> None:
    """Drop counts whose last failure is older than ``before`` (the table stays small)."""
    connection.execute(delete(table).where(table.c.last_at < before))
