"""The usage export: an account's raw usage over a time range, per line and UTC day or hour,
as JSON or CSV — read from the ledger's raw events, streamed (an account may have millions of
events: nothing is built whole in memory).

What a row is: the usage of one invoice line (a metric and the catalog's ``group_by``
dimensions) in one day or hour — or over the whole range with ``group_by=metric`` — as the
exact decimal sum of its events, in the catalog's unit, with the period whose invoice carries
it (``invoice_period``: a later one for usage that arrived after its own period's invoice was
closed). So the rows of one ``invoice_period`` summed per metric and dimensions are that
invoice's usage lines exactly, and rated with the catalog they are the lines' amounts.

What a range is: [from, to), UTC; ``from`` and ``to`` are RFC 3339 moments with an offset or
dates (midnight UTC); by default the account's current period. At most 400 days, and 45 with
hourly rows. Raw events of periods finalized long ago may have been removed by retention
(``BILLSYNC_EVENT_RETENTION_DAYS``; their lines are kept): a range that reaches them is refused
with 410 ``usage_removed`` — naming the periods — rather than answered short.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import orjson
from sqlalchemy import Connection

from billsync.core.catalog import Metric
from billsync.core.event_storage import events_retained
from billsync.core.money import decimal_text
from billsync.core.periods import Period
from billsync.errors import BillsyncError, InvalidRequest
from billsync.repositories import usage_export as repository
from billsync.repositories.accounts import AccountRecord
from billsync.repositories.event_storage import retention_mark
from billsync.repositories.usage_export import Bucket, ExportLine
from billsync.services.lines import LineService

MAX_RANGE_DAYS = 400
MAX_HOURLY_RANGE_DAYS = 45
# group_by → the time bucket of a row (none: one row per line over the whole range).
GROUPINGS: dict[str, Bucket] = {"metric,day": "day", "metric,hour": "hour", "metric": None}
DEFAULT_GROUPING = "metric,day"
FORMATS = ("json", "csv")
CSV_COLUMNS = ("metric", "description", "unit", "dimensions")
# Rows written per chunk of the streamed answer.
ROWS_PER_CHUNK = 500

_DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
_MOMENT = re.compile(
    rf"{_DATE}[Tt][0-9]{{2}}:[0-9]{{2}}:[0-9]{{2}}(?:\.[0-9]{{1,9}})?(?:[Zz]|[+-][0-9]{{2}}:[0-9]{{2}})"
)
_DAY = re.compile(_DATE)


class UsageRemoved(BillsyncError):
    """The range reaches periods whose raw events retention removed."""

    status_code = 410
    code = "usage_removed"


def parse_moment(text: str, name: str) -> datetime:
    """``from``/``to``: a date (its midnight, UTC) or an RFC 3339 moment with an offset."""
    try:
        if _DAY.fullmatch(text):
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=UTC)
        if _MOMENT.fullmatch(text):
            return datetime.fromisoformat(text.upper()).astimezone(UTC)
    except (ValueError, OverflowError):
        pass
    raise InvalidRequest(
        f"{name} must be a date (2026-11-01, midnight UTC) or an RFC 3339 moment with an "
        f"offset (2026-11-01T00:00:00Z), got {text[:40]!r}",
        code="invalid_range",
    )


@dataclass(frozen=True, slots=True)
class ExportRange:
    start: datetime  # inclusive, UTC
    end: datetime  # exclusive, UTC
    group_by: str
    bucket: Bucket


def export_range(
    from_text: str | None, to_text: str | None, group_by: str | None, default: Period
) -> ExportRange:
    """The range asked for, checked: in order, within bounds; ``default`` fills what is not
    given (the account's current period)."""
    grouping = DEFAULT_GROUPING if group_by is None else group_by
    if grouping not in GROUPINGS:
        raise InvalidRequest(
            f"group_by must be one of {', '.join(GROUPINGS)}, got {grouping[:40]!r}",
            code="invalid_group_by",
        )
    start = default.start_at if from_text is None else parse_moment(from_text, "from")
    end = default.end_at if to_text is None else parse_moment(to_text, "to")
    if start >= end:
        defaulted = (
            f" (to defaults to the end of the current period, {end:%Y-%m-%d})"
            if to_text is None
            else f" (from defaults to the start of the current period, {start:%Y-%m-%d})"
            if from_text is None
            else ""
        )
        raise InvalidRequest(
            f"from ({start.isoformat()}) must be before to ({end.isoformat()}){defaulted}",
            code="invalid_range",
        )
    bucket = GROUPINGS[grouping]
    limit = MAX_HOURLY_RANGE_DAYS if bucket == "hour" else MAX_RANGE_DAYS
    if end - start > timedelta(days=limit):
        per = "with hourly rows (group_by=metric,hour)" if bucket == "hour" else "per export"
        raise InvalidRequest(
            f"the range is {(end - start) / timedelta(days=1):.1f} days; at most {limit} days "
            f"{per}: ask for a shorter range, or several",
            code="range_too_long",
        )
    return ExportRange(start, end, grouping, bucket)


@dataclass(frozen=True, slots=True)
class UsageRow:
    line: ExportLine
    metric: Metric | None  # None: no longer in the catalog
    time: str  # '2026-11-15', '2026-11-15T12:00:00Z', or '' for the whole range
    quantity: Decimal  # exact, in the catalog's unit

    @property
    def description(self) -> str:
        return self.line.metric if self.metric is None else self.metric.description

    @property
    def unit(self) -> str:
        return "" if self.metric is None else self.metric.unit


@dataclass(frozen=True, slots=True)
class ExportPlan:
    account: AccountRecord
    range: ExportRange
    lines: list[ExportLine]


def _time_text(key: str, bucket: Bucket) -> str:
    """The repository's bucket ('2026-11-15', '2026-11-15 12') as the export writes it."""
    if bucket == "hour":
        return f"{key[:10]}T{key[11:13]}:00:00Z"
    return key


class UsageExports:
    def __init__(self, lines: LineService) -> None:
        self.lines = lines

    def current_period(self, account: AccountRecord) -> Period:
        return self.lines.period_of(account, "current")

    def plan(
        self, connection: Connection, account: AccountRecord, wanted: ExportRange
    ) -> ExportPlan:
        """The lines the range reaches; refused (410) if retention removed the raw events of
        any of them."""
        found = repository.lines_in_range(connection, account.id, wanted.start, wanted.end)
        removed = removed_periods(connection, found)
        if removed:
            listed = ", ".join(day.isoformat() for day in removed)
            after = max(line.stored_until for line in found if line.invoice_period in removed)
            raise UsageRemoved(
                f"the raw usage of the invoice(s) for the period(s) starting {listed} was "
                "removed by retention after they were finalized (BILLSYNC_EVENT_RETENTION_DAYS); "
                f"their lines are kept (GET /v1/accounts/{account.id}/billing?period="
                f"{removed[-1].isoformat()}). Usage from {after.isoformat()} on can be exported.",
                removed=[day.isoformat() for day in removed],
            )
        return ExportPlan(account, wanted, found)

    def rows(self, connection: Connection, plan: ExportPlan) -> Iterator[UsageRow]:
        """The rows, line by line (metric, dimensions, invoice), oldest first within a line."""
        wanted = plan.range
        for line in plan.lines:
            metric = self.lines.catalog.metrics.get(line.metric)
            for key, quantity in repository.line_usage(
                connection, line, wanted.start, wanted.end, wanted.bucket
            ):
                yield UsageRow(line, metric, _time_text(key, wanted.bucket), quantity)

    def removed(self, connection: Connection, account: AccountRecord, period: Period) -> bool:
        """Whether retention removed raw usage of ``period`` (its export would be refused)."""
        found = repository.lines_in_range(connection, account.id, period.start_at, period.end_at)
        return bool(removed_periods(connection, found))

    def daily(
        self, connection: Connection, account: AccountRecord, period: Period
    ) -> tuple[dict[str, dict[str, Decimal]], bool]:
        """Per metric, the period's usage per UTC day (the customer page's charts: the same
        rows as the period's export), and whether retention removed some of it."""
        wanted = ExportRange(period.start_at, period.end_at, DEFAULT_GROUPING, "day")
        found = repository.lines_in_range(connection, account.id, wanted.start, wanted.end)
        if removed_periods(connection, found):
            return {}, True
        by_metric: dict[str, dict[str, Decimal]] = {}
        for row in self.rows(connection, ExportPlan(account, wanted, found)):
            days = by_metric.setdefault(row.line.metric, {})
            days[row.time] = days.get(row.time, Decimal(0)) + row.quantity
        return by_metric, False


def removed_periods(connection: Connection, found: Iterable[ExportLine]) -> list[date]:
    """The invoice periods among ``found`` whose raw events retention may have removed (the
    rule of ``core.event_storage``, as ``verify`` and the console apply it)."""
    retained_before = retention_mark(connection).retained_before
    return sorted(
        {
            line.invoice_period
            for line in found
            if events_retained(line.invoice_status, line.invoice_finalized_at, retained_before)
        }
    )


def _record(row: UsageRow, bucket: Bucket) -> dict[str, object]:
    record: dict[str, object] = {
        "metric": row.line.metric,
        "description": row.description,
        "unit": row.unit,
        "dimensions": row.line.grouping,
    }
    if bucket is not None:
        record[bucket] = row.time
    record["quantity"] = decimal_text(row.quantity)
    record["invoice_period"] = row.line.invoice_period.isoformat()
    return record


def json_chunks(plan: ExportPlan, rows: Iterable[UsageRow]) -> Iterator[bytes]:
    """``{"account", "from", "to", "group_by", "rows": [...]}``, a chunk at a time."""
    wanted = plan.range
    head = orjson.dumps(
        {
            "account": plan.account.id,
            "from": wanted.start,
            "to": wanted.end,
            "group_by": wanted.group_by,
        },
        option=orjson.OPT_UTC_Z,  # as the hours of the rows are written
    )
    yield head[:-1] + b',"rows":['
    chunk: list[bytes] = []
    first = True
    for row in rows:
        chunk.append((b"" if first else b",") + orjson.dumps(_record(row, wanted.bucket)))
        first = False
        if len(chunk) >= ROWS_PER_CHUNK:
            yield b"".join(chunk)
            chunk.clear()
    chunk.append(b"]}")
    yield b"".join(chunk)


def csv_columns(bucket: Bucket) -> list[str]:
    return [*CSV_COLUMNS, *([bucket] if bucket else []), "quantity", "invoice_period"]


def csv_chunks(plan: ExportPlan, rows: Iterable[UsageRow]) -> Iterator[bytes]:
    """The CSV (RFC 4180, CRLF line ends, UTF-8), a chunk at a time: a header, then a row per
    line and day (or hour). ``dimensions`` is a JSON object ('{"region":"iad"}', empty when the
    metric has none): the values producers send never begin a cell, so none can be read as a
    spreadsheet formula."""
    bucket = plan.range.bucket
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(csv_columns(bucket))
    for count, row in enumerate(rows, start=1):
        dimensions = orjson.dumps(row.line.grouping).decode() if row.line.grouping else ""
        writer.writerow(
            [
                row.line.metric, row.description, row.unit, dimensions,
                *([row.time] if bucket else []),
                decimal_text(row.quantity), row.line.invoice_period.isoformat(),
            ]
        )  # fmt: skip
        if count % ROWS_PER_CHUNK == 0:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()
