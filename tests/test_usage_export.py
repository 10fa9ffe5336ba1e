"""The usage export, ``GET /v1/accounts/{id}/usage``, on SQLite and PostgreSQL: rows per line
and day or hour from the raw events, exact; summed and rated they are the invoice's lines;
bounds and bad parameters answered 422 with a clear message; a customer token opens its own
account's usage only; usage retention removed is refused (410), never answered short; and the
reads are indexed (one partition on PostgreSQL)."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text, update

from billsync.api.app import create_app
from billsync.bootstrap import Billsync
from billsync.clock import ManualClock
from billsync.core import customer_tokens
from billsync.core.periods import PeriodStatus
from billsync.core.rating import line_amount
from billsync.db.tables import billing_periods
from billsync.repositories import usage_export as repository
from billsync.repositories.accounts import AccountRecord
from billsync.repositories.usage_export import ExportLine
from billsync.services.event_partitions import EventPartitions
from billsync.services.event_retention import EventRetention
from billsync.services.usage_export import (
    ROWS_PER_CHUNK,
    ExportPlan,
    ExportRange,
    UsageRow,
    csv_chunks,
)
from tests.conftest import T0, TEST_TOKEN
from tests.factories import create_account, event

OCTOBER, NOVEMBER = date(2026, 10, 1), date(2026, 11, 1)
SHARED = "machine.shared-cpu-1x.seconds"
EGRESS = "bandwidth.egress.na-eu.gb"
IPV4 = "ip.ipv4.hours"


def at(text_: str) -> datetime:
    return datetime.fromisoformat(text_).replace(tzinfo=UTC)


def set_status(billsync: Billsync, account: str, start: date, status: PeriodStatus,
               finalized_at: datetime | None = None) -> None:  # fmt: skip
    with billsync.database.transaction() as connection:
        connection.execute(
            update(billing_periods)
            .where(billing_periods.c.account_id == account, billing_periods.c.start == start)
            .values(status=status.value, finalized_at=finalized_at)
        )


def ingest(billsync: Billsync, *events: dict[str, Any]) -> None:
    report = billsync.ingest.ingest(list(events))
    assert report.accepted == len(events), report


@pytest.fixture
def usage(billsync: Billsync) -> Billsync:
    """acme: October (machine seconds, egress) and November (egress in two regions, IPv4,
    and tenths that add up exactly); globex: a little of its own."""
    create_account(billsync, "acme")
    create_account(billsync, "globex")
    ingest(
        billsync,
        event("acme", SHARED, 3600, at=at("2026-10-20T10:00:00")),
        event("acme", SHARED, 1800, at=at("2026-10-20T11:30:00")),
        event("acme", SHARED, 7200, at=at("2026-10-21T00:00:00")),
        event("acme", EGRESS, "1.5", at=at("2026-10-22T05:00:00"), region="iad"),
        event("acme", EGRESS, "123.456789", at=T0 - timedelta(days=1), region="iad"),
        event("acme", EGRESS, "0.1", at=T0 - timedelta(days=3), region="cdg"),
        event("acme", EGRESS, "0.2", at=T0 - timedelta(days=3, hours=1), region="cdg"),
        event("acme", IPV4, "24", at=T0 - timedelta(days=2)),
        event("acme", IPV4, "24", at=T0 - timedelta(days=2, hours=5)),
        event("globex", IPV4, "7", at=T0),
    )
    return billsync


@pytest.fixture
def platform(usage: Billsync) -> Iterator[TestClient]:
    with TestClient(create_app(usage), headers={"Authorization": f"Bearer {TEST_TOKEN}"}) as client:
        yield client


def rows_of(client: TestClient, **params: str) -> list[dict[str, Any]]:
    answer = client.get("/v1/accounts/acme/usage", params=params)
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()["rows"]
    return found


def by_line(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], Decimal]:
    """Σ quantity per (invoice period, metric, dimensions)."""
    totals: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    for row in rows:
        key = (row["invoice_period"], row["metric"], repr(sorted(row["dimensions"].items())))
        totals[key] += Decimal(row["quantity"])
    return dict(totals)


def test_the_current_periods_usage_per_day_summed_and_rated_is_the_invoice(
    usage: Billsync, platform: TestClient
) -> None:
    answer = platform.get("/v1/accounts/acme/usage")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["account"], body["group_by"]) == ("acme", "metric,day")
    assert (body["from"], body["to"]) == ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z")
    assert body["rows"] == [
        {"metric": EGRESS, "description": "Outbound data transfer, North America and Europe",
         "unit": "GB", "dimensions": {"region": "cdg"}, "day": "2026-11-12",
         "quantity": "0.3", "invoice_period": "2026-11-01"},  # 0.1 + 0.2, exactly
        {"metric": EGRESS, "description": "Outbound data transfer, North America and Europe",
         "unit": "GB", "dimensions": {"region": "iad"}, "day": "2026-11-14",
         "quantity": "123.456789", "invoice_period": "2026-11-01"},
        {"metric": IPV4, "description": "Dedicated IPv4 address", "unit": "hour",
         "dimensions": {}, "day": "2026-11-13", "quantity": "48", "invoice_period": "2026-11-01"},
    ]  # fmt: skip
    lines = platform.get("/v1/accounts/acme/lines").json()
    exported = by_line(body["rows"])
    assert exported == {
        ("2026-11-01", line["metric"], repr(sorted(line["dimensions"].items()))): Decimal(
            line["quantity"]
        )
        for line in lines["lines"]
    }
    # Rated with the catalog, the exported quantities are the invoice's amounts, to the cent.
    catalog = usage.catalog
    rated = sum(
        line_amount(quantity, catalog.metrics[metric].prices["usd"], "usd")
        for (_, metric, _), quantity in exported.items()
    )
    assert rated == lines["total"] == platform.get("/v1/accounts/acme/billing").json()["total"]


def test_csv_has_the_same_rows_with_exact_quantities(platform: TestClient) -> None:
    json_rows = rows_of(platform, **{"from": "2026-10-01", "to": "2026-12-01"})
    answer = platform.get(
        "/v1/accounts/acme/usage",
        params={"from": "2026-10-01", "to": "2026-12-01", "format": "csv"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    assert answer.headers["content-disposition"] == (
        'attachment; filename="usage-acme-20261001T0000Z-20261201T0000Z.csv"'
    )
    table = list(csv.DictReader(io.StringIO(answer.text)))
    assert list(table[0]) == [
        "metric", "description", "unit", "dimensions", "day", "quantity", "invoice_period"
    ]  # fmt: skip
    assert len(table) == len(json_rows) == 6
    for row, expected in zip(table, json_rows, strict=True):
        assert row["dimensions"] == (
            ""
            if not expected["dimensions"]
            else json.dumps(expected["dimensions"], separators=(",", ":"))
        )
        assert (row["metric"], row["day"], row["quantity"], row["invoice_period"]) == (
            expected["metric"], expected["day"], expected["quantity"], expected["invoice_period"]
        )  # fmt: skip
    seconds = [r for r in table if r["metric"] == SHARED]
    assert [(r["day"], r["quantity"], r["unit"]) for r in seconds] == [
        ("2026-10-20", "5400", "second"), ("2026-10-21", "7200", "second"),
    ]  # the catalog's unit, not the page's display unit  # fmt: skip


def test_hourly_rows_and_offsets(platform: TestClient) -> None:
    rows = rows_of(
        platform,
        **{"from": "2026-10-20T12:00:00+02:00", "to": "2026-10-21T00:00:00Z",
           "group_by": "metric,hour"},
    )  # fmt: skip
    assert [(r["metric"], r["hour"], r["quantity"]) for r in rows] == [
        (SHARED, "2026-10-20T10:00:00Z", "3600"),
        (SHARED, "2026-10-20T11:00:00Z", "1800"),
    ]  # 7200 at 2026-10-21T00:00Z is outside: ``to`` is exclusive
    assert all("day" not in row for row in rows)


def test_late_usage_names_the_invoice_that_carries_it(
    usage: Billsync, platform: TestClient
) -> None:
    set_status(usage, "acme", OCTOBER, PeriodStatus.REVIEW)  # October's invoice is closed
    ingest(usage, event("acme", SHARED, 600, at=at("2026-10-25T09:00:00")))
    rows = rows_of(platform, **{"from": "2026-10-01", "to": "2026-12-01", "group_by": "metric"})
    seconds = [r for r in rows if r["metric"] == SHARED]
    assert [(r["metric"], r["quantity"], r["invoice_period"]) for r in seconds] == [
        (SHARED, "12600", "2026-10-01"),
        (SHARED, "600", "2026-11-01"),  # late: on November's invoice, as a late line
    ]  # fmt: skip
    assert all("day" not in row and "hour" not in row for row in rows)
    november = platform.get("/v1/accounts/acme/lines").json()["lines"]
    late = [line for line in november if line["late_from"] == "2026-10-01"]
    assert [(line["metric"], line["quantity"]) for line in late] == [(SHARED, "600")]


@pytest.mark.parametrize(
    ("params", "code", "fragment"),
    [
        ({"from": "2026-11-10", "to": "2026-11-10"}, "invalid_range", "must be before to"),
        ({"from": "2027-01-01"}, "invalid_range", "to defaults to the end of the current period"),
        ({"from": "2025-01-01", "to": "2026-03-01"}, "range_too_long", "at most 400 days"),
        ({"from": "2026-09-01", "to": "2026-11-01", "group_by": "metric,hour"},
         "range_too_long", "at most 45 days with hourly rows"),
        ({"from": "yesterday"}, "invalid_range", "from must be a date"),
        ({"to": "2026-11-10T10:00:00"}, "invalid_range", "RFC 3339 moment with an offset"),
        ({"from": "2026-02-30"}, "invalid_range", "from must be a date"),
        ({"group_by": "day"}, "invalid_group_by", "metric,day, metric,hour, metric"),
        ({"group_by": ""}, "invalid_group_by", "got ''"),
        ({"format": "xml"}, "invalid_format", "json or csv"),
    ],
)  # fmt: skip
def test_bad_parameters_are_refused_with_a_clear_message(
    platform: TestClient, params: dict[str, str], code: str, fragment: str
) -> None:
    answer = platform.get("/v1/accounts/acme/usage", params=params)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == code
    assert fragment in answer.json()["error"]["message"]


def test_a_parameter_given_twice_is_refused(platform: TestClient) -> None:
    answer = platform.get("/v1/accounts/acme/usage?from=2026-11-01&from=2026-11-02")
    assert answer.status_code == 422
    assert answer.json()["error"] == {
        "code": "repeated_parameter", "message": "give from once, not 2 times"
    }  # fmt: skip


def test_the_longest_ranges_allowed_are_answered(platform: TestClient) -> None:
    assert rows_of(platform, **{"from": "2025-10-27", "to": "2026-12-01"})  # 400 days
    hourly = rows_of(
        platform, **{"from": "2026-10-17", "to": "2026-12-01", "group_by": "metric,hour"}
    )  # 45 days
    assert len(hourly) == 9


def test_customer_tokens_open_their_own_accounts_usage_only(
    usage: Billsync, clock: ManualClock, platform: TestClient
) -> None:
    secret = usage.customer_token_secret
    own = customer_tokens.issue(secret, "acme", clock.now(), timedelta(minutes=5))
    other = customer_tokens.issue(secret, "globex", clock.now(), timedelta(minutes=5))
    with TestClient(create_app(usage)) as customer:
        mine = customer.get("/v1/accounts/acme/usage", headers={"Authorization": f"Bearer {own}"})
        assert mine.status_code == 200
        assert mine.json()["rows"] == rows_of(platform)
        theirs = customer.get(
            "/v1/accounts/acme/usage", headers={"Authorization": f"Bearer {other}"}
        )
        assert theirs.status_code == 403
        assert theirs.json()["error"]["code"] == "forbidden"
        assert customer.get("/v1/accounts/acme/usage").status_code == 401
    missing = platform.get("/v1/accounts/nobody/usage")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "account_not_found"


def test_usage_removed_by_retention_is_refused_not_answered_short(
    usage: Billsync, clock: ManualClock, platform: TestClient
) -> None:
    set_status(usage, "acme", OCTOBER, PeriodStatus.FINALIZED, datetime(2026, 11, 2, tzinfo=UTC))
    retention = EventRetention(
        usage.database, clock, EventPartitions(usage.database, horizon=timedelta(days=45)),
        retention_days=7,
    )  # fmt: skip
    assert retention.run().events_removed == 4  # acme's October: cutoff November 8th
    answer = platform.get(
        "/v1/accounts/acme/usage", params={"from": "2026-10-15", "to": "2026-11-15"}
    )
    assert answer.status_code == 410, answer.text
    error = answer.json()["error"]
    assert error["code"] == "usage_removed"
    assert "starting 2026-10-01 was removed by retention" in error["message"]
    assert "Usage from 2026-11-01 on can be exported" in error["message"]
    # The CSV is refused alike; the current period, untouched, is answered.
    csv_answer = platform.get(
        "/v1/accounts/acme/usage", params={"from": "2026-10-15", "format": "csv"}
    )
    assert csv_answer.status_code == 410
    assert len(rows_of(platform)) == 3
    bill = platform.get("/v1/accounts/acme/billing", params={"period": "2026-10-01"}).json()
    assert bill["usage_removed"] is True
    assert {line["metric"] for line in bill["lines"]} == {SHARED, EGRESS}  # lines are kept


def test_the_csv_is_streamed_in_chunks() -> None:
    """Never built whole: a chunk per ROWS_PER_CHUNK rows, the header first."""
    line = ExportLine(1, IPV4, {}, NOVEMBER, None, NOVEMBER, date(2026, 12, 1),
                      PeriodStatus.OPEN, None)  # fmt: skip
    rows = (UsageRow(line, None, f"2026-11-{n % 28 + 1:02d}", Decimal(n)) for n in range(1200))
    account = AccountRecord("acme", "Acme", None, "usd", None, None, T0)
    plan = ExportPlan(account=account, range=_range(), lines=[line])
    chunks = list(csv_chunks(plan, rows))
    assert len(chunks) == 1200 // ROWS_PER_CHUNK + 1
    assert chunks[0].startswith(b"metric,description,unit,dimensions,day,quantity,invoice_period")
    assert sum(chunk.count(b"\r\n") for chunk in chunks) == 1201


def _range() -> ExportRange:
    return ExportRange(at("2026-11-01T00:00:00"), at("2026-12-01T00:00:00"), "metric,day", "day")


def test_each_lines_events_are_read_through_the_line_index_in_one_partition(
    usage: Billsync,
) -> None:
    with usage.database.read() as connection:
        account_lines = repository.lines_in_range(
            connection, "acme", at("2026-11-01T00:00:00"), at("2026-12-01T00:00:00")
        )
        assert {line.stored_under for line in account_lines} == {NOVEMBER}
        query = repository.line_usage_query(
            connection, account_lines[0], at("2026-11-01T00:00:00"), at("2026-12-01T00:00:00"),
            "day",
        )  # fmt: skip
        sql = str(query.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True}))
        if connection.dialect.name == "sqlite":
            plan = " ".join(
                str(row[-1]) for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")
            )
            assert "USING INDEX ix_usage_events_line_id" in plan, plan
            return
        # A test table is small enough for a sequential scan to win: ask whether an index
        # serves the statement at all, and which partitions it reads.
        connection.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(str(row[0]) for row in connection.exec_driver_sql(f"EXPLAIN {sql}"))
    assert "Index" in plan, plan
    partitions = {
        word for word in plan.replace("(", " ").split() if word.startswith("usage_events_")
    }
    assert {name for name in partitions if not name.endswith("line_id_idx")} <= {
        "usage_events_2026_11"
    }, plan
    assert any("2026_11" in name for name in partitions), plan
