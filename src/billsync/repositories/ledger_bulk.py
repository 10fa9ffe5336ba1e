"""The ingest hot path's SQL, written for each driver.

Every function here runs a fixed number of statements per batch, whatever the batch size, and
talks to the DBAPI connection underneath SQLAlchemy's transaction (same connection, same
transaction) so that no per-row statement compilation or type processing stands between a
batch and the store:

- SQLite: ``executemany`` and multi-row ``VALUES`` lists, values pre-rendered in the exact text
  formats SQLAlchemy's SQLite types read back (``YYYY-MM-DD HH:MM:SS.ffffff`` datetimes, ISO
  dates, decimal strings, sorted-key JSON);
- PostgreSQL: one statement per step, its rows passed as a single JSON array parameter
  (``jsonb_to_recordset``, encoded by orjson: far cheaper than adapting Python lists to
  arrays), and ``COPY`` for the raw events.

A test reads everything written here back through the SQLAlchemy models, on both stores.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, NamedTuple

import orjson
from sqlalchemy import Connection, select, tuple_

from billsync.core.folding import LineRef
from billsync.core.periods import AnchorChange, PeriodStatus
from billsync.core.pricing import RateCard, cards_of
from billsync.core.usage import ValidEvent
from billsync.db.tables import lines
from billsync.repositories.accounts import anchor_changes_of
from billsync.repositories.ledger import LineChange, LineState, NewLine

# SQLite allows 32,766 bound variables per statement; stay well below.
SQLITE_MAX_VARIABLES = 30_000


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _records(rows: list[tuple[Any, ...]]) -> str:
    """Rows as a JSON array of arrays; Decimals and dates as their exact text."""
    return orjson.dumps(rows, default=str).decode()


# The texts of recent event timestamps. Producers report "now" on a cadence, so a timestamp
# recurs across the events of a batch and across consecutive batches: formatting it once saves
# a microsecond or so per event on the writer thread. Bounded: emptied when full.
_TIMESTAMP_TEXTS: dict[datetime, str] = {}
_TIMESTAMP_TEXTS_KEPT = 16_384


def _event_datetime(moment: datetime) -> str:
    """:func:`_sqlite_datetime` of an event's timestamp, remembered."""
    text = _TIMESTAMP_TEXTS.get(moment)
    if text is None:
        if len(_TIMESTAMP_TEXTS) >= _TIMESTAMP_TEXTS_KEPT:
            _TIMESTAMP_TEXTS.clear()
        text = _TIMESTAMP_TEXTS[moment] = _sqlite_datetime(moment)
    return text


def _sqlite_datetime(moment: datetime) -> str:
    """SQLAlchemy's SQLite DATETIME text: ``YYYY-MM-DD HH:MM:SS.ffffff``, in UTC."""
    if moment.tzinfo is UTC:  # validated events: their ISO text without the "+00:00"
        return moment.isoformat(" ", "microseconds")[:26]
    if moment.utcoffset():
        moment = moment.astimezone(UTC)
    return moment.replace(tzinfo=None).isoformat(" ", "microseconds")


def _parse_sqlite_datetime(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _dbapi(connection: Connection) -> Any:
    return connection.connection.dbapi_connection


def _is_postgres(connection: Connection) -> bool:
    return connection.dialect.name == "postgresql"


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# The rate cards read, by their stored text: an account's cards are parsed once, not per batch.
_CARDS_KEPT = 4_096
_cards_by_text: dict[str, tuple[RateCard, ...]] = {}


def _cards(text: str | None) -> tuple[RateCard, ...]:
    if text is None:
        return ()
    cards = _cards_by_text.get(text)
    if cards is None:
        if len(_cards_by_text) >= _CARDS_KEPT:
            _cards_by_text.clear()
        cards = _cards_by_text[text] = cards_of(orjson.loads(text))
    return cards


class Terms(NamedTuple):
    """What ingest needs of an account."""

    currency: str
    anchor_day: int | None
    anchor_changes: tuple[AnchorChange, ...]
    rate_cards: tuple[RateCard, ...]


def account_terms(connection: Connection, account_ids: Iterable[str]) -> dict[str, Terms]:
    """The terms of each existing account among ``account_ids``."""
    ids = sorted(set(account_ids))
    cursor = _dbapi(connection).cursor()
    found: dict[str, Terms] = {}
    if _is_postgres(connection):
        columns = "id, currency, billing_anchor_day, anchor_changes, rate_cards::text"
    else:
        columns = "id, currency, billing_anchor_day, anchor_changes, rate_cards"
    if _is_postgres(connection):
        cursor.execute(f"SELECT {columns} FROM accounts WHERE id = ANY(%s)", (ids,))  # noqa: S608 - no input
        rows = cursor.fetchall()
    else:
        rows = []
        for chunk in _chunks(ids, SQLITE_MAX_VARIABLES):
            marks = ",".join("?" * len(chunk))
            cursor.execute(
                f"SELECT {columns} FROM accounts WHERE id IN ({marks})",  # noqa: S608 - placeholders only
                chunk,
            )
            rows.extend(cursor.fetchall())
    cursor.close()
    for account_id, currency, anchor, changes, cards in rows:
        # SQLite hands the JSON document over as its text, psycopg decoded.
        document = orjson.loads(changes) if isinstance(changes, str | bytes) else changes
        found[account_id] = Terms(currency, anchor, anchor_changes_of(document), _cards(cards))
    return found


_STORED_COLUMNS = "id, account_id, metric, quantity, occurred_at, dimensions"


def stored_events(connection: Connection, event_ids: Sequence[str]) -> dict[str, ValidEvent | None]:
    """Event ids already accepted among ``event_ids``, each with its event as it was accepted,
    or None when retention has removed the raw event since (the id is still taken).

    ``usage_event_ids`` is looked up first: a new id (the usual case) costs one index probe and
    no partition of ``usage_events`` is touched. The raw events of the ids found are then read
    from their own months' partitions only (the partition key is in the query)."""
    ids = sorted(set(event_ids))
    cursor = _dbapi(connection).cursor()
    found: dict[str, ValidEvent | None] = {}
    if _is_postgres(connection):
        cursor.execute("SELECT id, period_start FROM usage_event_ids WHERE id = ANY(%s)", (ids,))
        where = dict(cursor.fetchall())
        if where:
            found = dict.fromkeys(where)
            cursor.execute(
                f"SELECT {_STORED_COLUMNS}, period_start FROM usage_events "  # noqa: S608
                "WHERE id = ANY(%s) AND period_start = ANY(%s)",
                (sorted(where), sorted(set(where.values()))),
            )
            for event_id, account, metric, quantity, occurred, dimensions, start in cursor:
                if where[event_id] == start:
                    found[event_id] = ValidEvent(
                        event_id, account, metric, quantity, occurred.astimezone(UTC), dimensions
                    )
    else:
        columns = ", ".join(f"e.{name}" for name in _STORED_COLUMNS.split(", ")[1:])
        for chunk in _chunks(ids, SQLITE_MAX_VARIABLES):
            marks = ",".join("?" * len(chunk))
            cursor.execute(
                f"SELECT i.id, {columns} FROM usage_event_ids i "  # noqa: S608
                "LEFT JOIN usage_events e ON e.id = i.id AND e.period_start = i.period_start "
                f"WHERE i.id IN ({marks})",
                chunk,
            )
            for event_id, account, metric, quantity, occurred_at, dimensions in cursor.fetchall():
                found[event_id] = (
                    None
                    if account is None
                    else ValidEvent(
                        event_id,
                        account,
                        metric,
                        Decimal(quantity),
                        _parse_sqlite_datetime(occurred_at),
                        orjson.loads(dimensions),
                    )
                )
    cursor.close()
    return found


def claim_event_ids(connection: Connection, claims: Sequence[tuple[str, date]]) -> set[str]:
    """Record new event ids, with the period their raw events are stored under, in
    ``usage_event_ids`` — the one place an id is unique across every partition — and return
    those this call claimed. An id not returned was taken already: by a committed batch, or
    by one in flight on another connection, whose transaction the insert waits for
    (PostgreSQL's ``ON CONFLICT DO NOTHING`` on the unique index; if that one rolls back, the
    id is ours after all). So the claim *is* the look-up: a new id costs one index insert and
    no separate probe, and only ids already taken are read back (``stored_events``).

    Ids are claimed in sorted order, so two batches claiming overlapping ids queue on the
    first shared one instead of deadlocking. SQLite has a single writer: nothing to wait for.
    """
    if not claims:
        return set()
    ordered = sorted(claims)
    cursor = _dbapi(connection).cursor()
    claimed: set[str] = set()
    try:
        if _is_postgres(connection):
            cursor.execute(
                "INSERT INTO usage_event_ids (id, period_start) "
                "SELECT r->>0, (r->>1)::date FROM jsonb_array_elements(%s::jsonb) "
                "WITH ORDINALITY AS a(r, n) ORDER BY n "
                "ON CONFLICT (id) DO NOTHING RETURNING id",
                (_records(ordered),),
            )
            claimed.update(row[0] for row in cursor.fetchall())
        else:
            for chunk in _chunks(ordered, SQLITE_MAX_VARIABLES // 2):
                cursor.execute(
                    "INSERT INTO usage_event_ids (id, period_start) VALUES "  # noqa: S608
                    + ",".join("(?,?)" for _ in chunk)
                    + " ON CONFLICT (id) DO NOTHING RETURNING id",
                    [value for event_id, start in chunk for value in (event_id, start.isoformat())],
                )
                claimed.update(row[0] for row in cursor.fetchall())
    finally:
        cursor.close()
    return claimed


def period_statuses(
    connection: Connection, account_ids: Iterable[str], since: date
) -> dict[str, dict[date, PeriodStatus]]:
    """Every known period of these accounts starting on or after ``since``."""
    ids = sorted(set(account_ids))
    statuses: dict[str, dict[date, PeriodStatus]] = {account: {} for account in ids}
    cursor = _dbapi(connection).cursor()
    if _is_postgres(connection):
        cursor.execute(
            "SELECT account_id, start, status FROM billing_periods "
            "WHERE account_id = ANY(%s) AND start >= %s",
            (ids, since),
        )
        for account_id, start, status in cursor.fetchall():
            statuses[account_id][start] = PeriodStatus(status)
    else:
        for chunk in _chunks(ids, SQLITE_MAX_VARIABLES):
            marks = ",".join("?" * len(chunk))
            cursor.execute(
                "SELECT account_id, start, status FROM billing_periods "  # noqa: S608
                f"WHERE account_id IN ({marks}) AND start >= ?",
                [*chunk, since.isoformat()],
            )
            for account_id, start, status in cursor.fetchall():
                statuses[account_id][date.fromisoformat(start)] = PeriodStatus(status)
    cursor.close()
    return statuses


_LINE_STATE_COLUMNS = (
    "l.id, l.account_id, l.period_start, l.line_key, l.quantity, l.version, l.event_count"
)


def line_states(
    connection: Connection, refs: Iterable[LineRef], known_ids: Mapping[LineRef, int] | None = None
) -> dict[LineRef, LineState]:
    """Current quantity and version of the given lines (those that exist).

    ``known_ids``: lines whose id the caller already knows are read by id (their primary key),
    the others by their (account, period, key) — a look-up in a three-column text index. A
    line's id never changes and lines are never deleted, so an id known once stays right."""
    known_ids = known_ids or {}
    unique = set(refs)
    by_id = {known_ids[ref]: ref for ref in unique if ref in known_ids}
    states = _states_by_id(connection, by_id) if by_id else {}
    wanted = sorted((ref.account, ref.period_start, ref.key) for ref in unique if ref not in states)
    if not wanted:
        return states
    cursor = _dbapi(connection).cursor()
    if _is_postgres(connection):
        cursor.execute(
            f"SELECT {_LINE_STATE_COLUMNS} FROM lines l JOIN ("  # noqa: S608
            "SELECT r->>0 AS a, (r->>1)::date AS p, r->>2 AS k "
            "FROM jsonb_array_elements(%s::jsonb) AS r) AS w "
            "ON l.account_id = w.a AND l.period_start = w.p AND l.line_key = w.k",
            (_records(wanted),),
        )
        for line_id, account, start, key, quantity, version, count in cursor.fetchall():
            states[LineRef(account, start, key)] = LineState(line_id, quantity, version, count)
    else:
        for chunk in _chunks(wanted, SQLITE_MAX_VARIABLES // 3):
            values = ",".join("(?,?,?)" * 1 for _ in chunk)
            params = [p for a, s, k in chunk for p in (a, s.isoformat(), k)]
            cursor.execute(
                f"WITH w(a, p, k) AS (VALUES {values}) SELECT {_LINE_STATE_COLUMNS} "  # noqa: S608
                "FROM lines l JOIN w ON l.account_id = w.a AND l.period_start = w.p "
                "AND l.line_key = w.k",
                params,
            )
            for line_id, account, start, key, quantity, version, count in cursor.fetchall():
                states[LineRef(account, date.fromisoformat(start), key)] = LineState(
                    line_id, Decimal(quantity), version, count
                )
    cursor.close()
    return states


def _states_by_id(connection: Connection, by_id: Mapping[int, LineRef]) -> dict[LineRef, LineState]:
    """The lines of these ids that are still the lines the caller knows them as (same account,
    period and key: a line is never deleted in billsync, but an id the caller remembers must
    never be trusted past a restore or a hand-made delete)."""
    ids = orjson.dumps(sorted(by_id)).decode()
    cursor = _dbapi(connection).cursor()
    if _is_postgres(connection):
        cursor.execute(
            f"SELECT {_LINE_STATE_COLUMNS} FROM lines l "  # noqa: S608 - constants only
            "JOIN jsonb_array_elements_text(%s::jsonb) AS w(v) ON l.id = w.v::bigint",
            (ids,),
        )
        rows = cursor.fetchall()
    else:
        cursor.execute(
            f"SELECT {_LINE_STATE_COLUMNS} FROM lines l "  # noqa: S608 - constants only
            "WHERE l.id IN (SELECT value FROM json_each(?))",
            (ids,),
        )
        rows = [
            (i, a, date.fromisoformat(p), k, Decimal(q), v, c)
            for i, a, p, k, q, v, c in cursor.fetchall()
        ]
    cursor.close()
    states: dict[LineRef, LineState] = {}
    for line_id, account, start, key, quantity, version, count in rows:
        ref = by_id[line_id]
        if LineRef(account, start, key) == ref:
            states[ref] = LineState(line_id, quantity, version, count)
    return states


_LINE_COLUMNS = (
    "account_id, period_start, line_key, metric, grouping, late_from, currency, quantity, "
    "amount, version, event_count, created_at, updated_at"
)


def insert_lines(
    connection: Connection, new_lines: Sequence[NewLine], now: datetime
) -> dict[LineRef, int]:
    """Create lines at version 1; returns their ids."""
    ids: dict[LineRef, int] = {}
    if not new_lines:
        return ids
    cursor = _dbapi(connection).cursor()
    if _is_postgres(connection):
        cursor.execute(
            f"INSERT INTO lines ({_LINE_COLUMNS}) "  # noqa: S608
            "SELECT r->>0, (r->>1)::date, r->>2, r->>3, r->4, (r->>5)::date, r->>6, "
            "(r->>7)::numeric, (r->>8)::bigint, 1, (r->>9)::bigint, %s, %s "
            "FROM jsonb_array_elements(%s::jsonb) AS r "
            "RETURNING id, account_id, period_start, line_key",
            (
                now,
                now,
                _records(
                    [
                        (
                            line.ref.account,
                            line.ref.period_start,
                            line.ref.key,
                            line.metric,
                            dict(line.grouping),
                            line.late_from,
                            line.currency,
                            line.quantity,
                            line.amount,
                            line.event_count,
                        )
                        for line in new_lines
                    ]
                ),
            ),
        )
        for line_id, account, start, key in cursor.fetchall():
            ids[LineRef(account, start, key)] = line_id
    else:
        stamp = _sqlite_datetime(now)
        for chunk in _chunks(new_lines, SQLITE_MAX_VARIABLES // 13):
            values = ",".join("(?,?,?,?,?,?,?,?,?,1,?,?,?)" for _ in chunk)
            params: list[Any] = []
            for line in chunk:
                params += (
                    line.ref.account,
                    line.ref.period_start.isoformat(),
                    line.ref.key,
                    line.metric,
                    _json(dict(line.grouping)),
                    None if line.late_from is None else line.late_from.isoformat(),
                    line.currency,
                    str(line.quantity),
                    line.amount,
                    line.event_count,
                    stamp,
                    stamp,
                )
            cursor.execute(
                f"INSERT INTO lines ({_LINE_COLUMNS}) VALUES {values} "  # noqa: S608
                "RETURNING id, account_id, period_start, line_key",
                params,
            )
            for line_id, account, start, key in cursor.fetchall():
                ids[LineRef(account, date.fromisoformat(start), key)] = line_id
    cursor.close()
    return ids


def update_lines(connection: Connection, changes: Sequence[LineChange], now: datetime) -> None:
    if not changes:
        return
    cursor = _dbapi(connection).cursor()
    if _is_postgres(connection):
        cursor.execute(
            "UPDATE lines SET quantity = (r->>1)::numeric, amount = (r->>2)::bigint, "
            "version = (r->>3)::int, event_count = (r->>4)::bigint, updated_at = %s "
            "FROM jsonb_array_elements(%s::jsonb) AS r WHERE lines.id = (r->>0)::bigint",
            (
                now,
                _records([(c.id, c.quantity, c.amount, c.version, c.event_count) for c in changes]),
            ),
        )
    else:
        stamp = _sqlite_datetime(now)
        cursor.executemany(
            "UPDATE lines SET quantity = ?, amount = ?, version = ?, event_count = ?, "
            "updated_at = ? WHERE id = ?",
            [(str(c.quantity), c.amount, c.version, c.event_count, stamp, c.id) for c in changes],
        )
    cursor.close()


_EVENT_COLUMNS = (
    "id, account_id, metric, quantity, occurred_at, dimensions, period_start, line_id, received_at"
)


def insert_events(
    connection: Connection, rows: Sequence[tuple[ValidEvent, date, int]], received_at: datetime
) -> None:
    """Store accepted events: (event, the period it is stored under, its line's id) each."""
    if not rows:
        return
    cursor = _dbapi(connection).cursor()
    if _is_postgres(connection):
        with cursor.copy(f"COPY usage_events ({_EVENT_COLUMNS}) FROM STDIN") as copy:
            for event, period_start, line_id in rows:
                copy.write_row(
                    (
                        event.id,
                        event.account,
                        event.metric,
                        event.quantity,
                        event.timestamp,
                        _json(event.dimensions),
                        period_start,
                        line_id,
                        received_at,
                    )
                )
    else:
        stamp = _sqlite_datetime(received_at)
        periods: dict[date, str] = {}
        values = []
        for event, period_start, line_id in rows:
            period = periods.get(period_start)
            if period is None:
                period = periods[period_start] = period_start.isoformat()
            values.append(
                (
                    event.id,
                    event.account,
                    event.metric,
                    str(event.quantity),
                    _event_datetime(event.timestamp),
                    _json(event.dimensions) if event.dimensions else "{}",
                    period,
                    line_id,
                    stamp,
                )
            )
        cursor.executemany(
            f"INSERT INTO usage_events ({_EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",  # noqa: S608
            values,
        )
    cursor.close()


def quantity_elsewhere(connection: Connection, refs: Sequence[LineRef]) -> dict[LineRef, Decimal]:
    """For each late line, the quantity its key (metric, grouping, original period) holds on
    the account's *other* periods: the same period's late usage already billed on earlier
    invoices. Few lines are late, so this is one small query, off the common path."""
    if not refs:
        return {}
    pairs = sorted({(ref.account, ref.key) for ref in refs})
    found: dict[tuple[str, str], list[tuple[date, Decimal]]] = {}
    for chunk in _chunks(pairs, SQLITE_MAX_VARIABLES // 2):
        rows = connection.execute(
            select(
                lines.c.account_id, lines.c.line_key, lines.c.period_start, lines.c.quantity
            ).where(tuple_(lines.c.account_id, lines.c.line_key).in_(chunk))
        )
        for account, key, start, quantity in rows:
            found.setdefault((account, key), []).append((start, Decimal(quantity)))
    return {
        ref: sum(
            (q for start, q in found.get((ref.account, ref.key), []) if start != ref.period_start),
            Decimal(0),
        )
        for ref in refs
    }
