"""What ingest keeps for the lines of ``max``, ``latest`` and ``unique_count`` metrics.

Off the common path: a batch with none of these metrics runs none of this. Each function runs
a fixed number of statements per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any, NamedTuple

import orjson
from sqlalchemy import Connection, bindparam, delete, func, select, tuple_, update

from billsync.core.aggregation import Mark
from billsync.db.tables import distinct_values, lines

# SQLite allows 32,766 bound variables per statement; stay well below.
_SQLITE_ROWS = 5_000


class MarkedLine(NamedTuple):
    """A line of one of the keys asked for: its id, period and mark (None: no mark yet)."""

    id: int
    period_start: date
    key: str
    mark: Mark | None


def marked_lines(
    connection: Connection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], list[MarkedLine]]:
    """The lines of each (account, line key), whatever their period, with their marks."""
    found: dict[tuple[str, str], list[MarkedLine]] = {}
    ordered = sorted(set(keys))
    for start in range(0, len(ordered), _SQLITE_ROWS):
        chunk = ordered[start : start + _SQLITE_ROWS]
        rows = connection.execute(
            select(
                lines.c.id,
                lines.c.account_id,
                lines.c.line_key,
                lines.c.period_start,
                lines.c.mark_value,
                lines.c.mark_at,
                lines.c.mark_event_id,
            ).where(tuple_(lines.c.account_id, lines.c.line_key).in_(chunk))
        )
        for line_id, account, key, period_start, value, at, event_id in rows:
            mark = None if value is None else Mark(value, at, event_id)
            found.setdefault((account, key), []).append(
                MarkedLine(line_id, period_start, key, mark)
            )
    return found


def write_marks(connection: Connection, marks: Sequence[tuple[int, Mark]]) -> None:
    """Set the marks of these lines (by id)."""
    if not marks:
        return
    connection.execute(
        update(lines)
        .where(lines.c.id == bindparam("line_id"))
        .values(
            mark_value=bindparam("value"),
            mark_at=bindparam("at"),
            mark_event_id=bindparam("event_id"),
        ),
        [
            {"line_id": line_id, "value": m.value, "at": m.at, "event_id": m.event_id}
            for line_id, m in marks
        ],
    )


class DistinctClaim(NamedTuple):
    """One value of a ``unique_count`` metric's dimension, seen in the usage of ``period_start``
    on the line ``line_key`` (metric and grouping), by a line of period ``counted_in``."""

    account: str
    period_start: date
    line_key: str
    value: str
    counted_in: date


def claim_distinct(connection: Connection, claims: Sequence[DistinctClaim]) -> list[DistinctClaim]:
    """Record the values not counted yet for their (account, usage period, line key); return
    those this call recorded — each value is counted once per period, by the first line that
    sees it. Claims are made in sorted order (two transactions queue rather than deadlock)."""
    unique = sorted(set(claims))
    if not unique:
        return []
    claimed: set[tuple[str, date, str, str]] = set()
    dbapi: Any = connection.connection.dbapi_connection
    cursor = dbapi.cursor()
    try:
        if connection.dialect.name == "postgresql":
            cursor.execute(
                "INSERT INTO distinct_values "
                "(account_id, period_start, line_key, value, counted_in) "
                "SELECT r->>0, (r->>1)::date, r->>2, r->>3, (r->>4)::date "
                "FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS a(r, n) ORDER BY n "
                "ON CONFLICT DO NOTHING RETURNING account_id, period_start, line_key, value",
                (
                    orjson.dumps(
                        [
                            (c.account, c.period_start.isoformat(), c.line_key, c.value,
                             c.counted_in.isoformat())
                            for c in unique
                        ]
                    ).decode(),
                ),
            )  # fmt: skip
            claimed.update(cursor.fetchall())
        else:
            for start in range(0, len(unique), _SQLITE_ROWS):
                chunk = unique[start : start + _SQLITE_ROWS]
                cursor.execute(
                    "INSERT INTO distinct_values "  # noqa: S608 - placeholders only
                    "(account_id, period_start, line_key, value, counted_in) VALUES "
                    + ",".join("(?,?,?,?,?)" for _ in chunk)
                    + " ON CONFLICT DO NOTHING "
                    "RETURNING account_id, period_start, line_key, value",
                    [
                        v
                        for c in chunk
                        for v in (
                            c.account, c.period_start.isoformat(), c.line_key, c.value,
                            c.counted_in.isoformat(),
                        )
                    ],
                )  # fmt: skip
                claimed.update(
                    (account, date.fromisoformat(start_text), key, value)
                    for account, start_text, key, value in cursor.fetchall()
                )
    finally:
        cursor.close()
    return [c for c in unique if (c.account, c.period_start, c.line_key, c.value) in claimed]


# --- released once no event can reach their period (services.event_retention) ------------


def accounts_with_distinct_before(
    connection: Connection, before: date, after: str | None, limit: int
) -> list[str]:
    """Up to ``limit`` accounts, after ``after`` in id order, with distinct values of usage
    periods starting before ``before`` (a walk of the primary key, which leads with the
    account: the whole release is one pass over it)."""
    query = (
        select(distinct_values.c.account_id)
        .where(distinct_values.c.period_start < before)
        .distinct()
        .order_by(distinct_values.c.account_id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(distinct_values.c.account_id > after)
    return list(connection.execute(query).scalars())


def count_distinct_before(connection: Connection, accounts: Sequence[str], before: date) -> int:
    return int(
        connection.execute(
            select(func.count()).where(
                distinct_values.c.account_id.in_(accounts),
                distinct_values.c.period_start < before,
            )
        ).scalar_one()
    )


def delete_distinct_before(connection: Connection, accounts: Sequence[str], before: date) -> int:
    """Delete these accounts' distinct values of usage periods starting before ``before``."""
    result = connection.execute(
        delete(distinct_values).where(
            distinct_values.c.account_id.in_(accounts),
            distinct_values.c.period_start < before,
        )
    )
    return int(result.rowcount or 0)
