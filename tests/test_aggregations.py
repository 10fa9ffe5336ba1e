"""Aggregations other than a sum — ``max``, ``unique_count``, ``latest`` — on SQLite and
PostgreSQL: exact, independent of the order and batching of the events, re-sends never counted,
late usage carried by later invoices at the marginal rates after what was billed, and what
``billsync verify`` recomputes from the stored events."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, update

from billsync.bootstrap import Billsync, build
from billsync.clock import ManualClock
from billsync.config import Settings
from billsync.core.aggregation import Observation, period_quantities
from billsync.core.catalog import Aggregation, Catalog, CatalogError, parse_catalog
from billsync.core.periods import PeriodStatus
from billsync.core.rating import late_line_amount
from billsync.db.database import Database
from billsync.db.tables import (
    billing_periods,
    distinct_values,
    lines,
    usage_event_ids,
    usage_events,
)
from billsync.repositories import ledger
from billsync.services.event_retention import EventRetention, RetentionReport
from billsync.services.verify import LINE_QUANTITY_DIFFERS, Verifier
from tests.conftest import T0 as NOW
from tests.factories import create_account, event

# Usage a few hours before the clock's now (events may not come from the future).
T0 = NOW - timedelta(hours=6)
OCTOBER = date(2026, 10, 1)
NOVEMBER = date(2026, 11, 1)
PEAK = "volume.provisioned_gb"
ADDRESSES = "ipv4.addresses"
SEATS = "seats"


def catalog_document(**extra: Any) -> dict[str, Any]:
    return {
        "catalog": {"currencies": ["usd"]},
        "metric": [
            {
                "id": PEAK,
                "unit": "GB",
                "aggregation": "max",
                "group_by": ["volume"],
                "decimals": 3,
                # Graduated, so that a late line's marginal rates matter.
                "price": {
                    "usd": {
                        "tiers": [
                            {"up_to": "10", "unit_price": "0"},
                            {"unit_price": "0.15"},
                        ]
                    }
                },
            },
            {
                "id": ADDRESSES,
                "unit": "address",
                "aggregation": "unique_count",
                "unique_by": "ip",
                "price": {"usd": "3.60"},
            },
            {"id": SEATS, "unit": "seat", "aggregation": "latest", "price": {"usd": "12"}},
            {"id": "requests", "unit": "request", "price": {"usd": "0.0001"}},
            *extra.get("metrics", []),
        ],
    }


@pytest.fixture
def catalog() -> Catalog:
    return parse_catalog(catalog_document(), "test")


@pytest.fixture
def billsync(
    settings: Settings, database: Database, clock: ManualClock, catalog: Catalog
) -> Billsync:
    built = build(settings, clock=clock, database=database, catalog=catalog)
    create_account(built, "acme")
    create_account(built, "globex")
    return built


def lines_of(billsync: Billsync) -> dict[tuple[str, date, str], tuple[Decimal, int, int]]:
    """(account, period, key) → (quantity, amount, event count)."""
    with billsync.database.read() as connection:
        rows = connection.execute(
            select(
                lines.c.account_id,
                lines.c.period_start,
                lines.c.line_key,
                lines.c.quantity,
                lines.c.amount,
                lines.c.event_count,
            )
        ).all()
    return {(r[0], r[1], r[2]): (Decimal(r[3]), r[4], r[5]) for r in rows}


def finalize(billsync: Billsync, clock: ManualClock, account: str, start: date) -> None:
    with billsync.database.transaction() as connection:
        ledger.set_period_status(connection, account, start, PeriodStatus.FINALIZED, clock.now())


def violations(billsync: Billsync, catalog: Catalog) -> list[str]:
    report = Verifier(billsync.database, None, catalog=catalog).verify()
    return [f"{v.kind}: {v.detail}" for v in report.violations]


# --- the catalog --------------------------------------------------------------------------


def test_the_catalog_reads_each_aggregation(catalog: Catalog) -> None:
    assert catalog.metrics[PEAK].aggregation is Aggregation.MAX
    assert catalog.metrics[ADDRESSES].aggregation is Aggregation.UNIQUE_COUNT
    assert catalog.metrics[ADDRESSES].unique_by == "ip"
    assert catalog.metrics[SEATS].aggregation is Aggregation.LATEST
    assert catalog.metrics["requests"].aggregation is Aggregation.SUM


@pytest.mark.parametrize(
    ("metric", "problem"),
    [
        ({"aggregation": "average"}, "aggregation: one of sum, max, unique_count, latest"),
        ({"aggregation": "unique_count"}, "unique_by: required with unique_count"),
        ({"aggregation": "unique_count", "unique_by": "Bad Name"}, "unique_by: required"),
        (
            {"aggregation": "unique_count", "unique_by": "ip", "group_by": ["ip"]},
            "'ip' is also in group_by",
        ),
        ({"unique_by": "ip"}, 'unique_by: only with aggregation = "unique_count"'),
        ({"aggregation": "max", "allow_negative": True}, "allow_negative is for sums only"),
    ],
)
def test_a_wrong_aggregation_is_named_in_the_catalog_error(
    metric: dict[str, Any], problem: str
) -> None:
    document = catalog_document(
        metrics=[{"id": "broken", "unit": "x", "price": {"usd": "1"}, **metric}]
    )
    with pytest.raises(CatalogError) as raised:
        parse_catalog(document, "test")
    assert any("metric 'broken'" in p and problem in p for p in raised.value.problems), (
        raised.value.problems
    )


def test_an_event_without_the_counted_dimension_is_rejected(billsync: Billsync) -> None:
    report = billsync.ingest.ingest([event("acme", ADDRESSES, 1, at=T0)])
    assert report.rejected == 1
    error = report.results[0].error
    assert error is not None
    assert error.code == "missing_dimension"
    assert "counts distinct values of 'ip'" in error.message


# --- the definition -----------------------------------------------------------------------


def observations(*items: tuple[str, int, str] | tuple[str, int, str, str]) -> list[Observation]:
    """(quantity, minute of T0, id[, value])."""
    return [
        Observation(Decimal(item[0]), T0 + timedelta(minutes=item[1]), item[2], *item[3:])
        for item in items
    ]


def test_max_late_lines_carry_how_far_they_raise_the_peak() -> None:
    base = observations(("5", 0, "a"), ("8", 1, "b"))
    raises = observations(("11", 2, "c"), ("9", 3, "d"))
    lower = observations(("10", 4, "e"))
    assert period_quantities(Aggregation.MAX, [base, raises, lower]) == [8, 3, 0]


def test_latest_is_the_last_by_timestamp_then_id_and_may_go_down() -> None:
    base = observations(("5", 10, "a"), ("7", 5, "b"))  # 'a' is later
    older = observations(("9", 1, "c"))  # reported late, but older: no change
    newer = observations(("3", 20, "d"), ("4", 20, "e"))  # same instant: the greater id
    assert period_quantities(Aggregation.LATEST, [base, older, newer]) == [5, 0, -1]


def test_unique_count_counts_a_value_once_on_the_first_line_that_sees_it() -> None:
    base = observations(("1", 0, "a", "10.0.0.1"), ("1", 1, "b", "10.0.0.1"))
    late = observations(("1", 2, "c", "10.0.0.1"), ("1", 3, "d", "10.0.0.2"))
    assert period_quantities(Aggregation.UNIQUE_COUNT, [base, late]) == [1, 1]


# --- ingest -------------------------------------------------------------------------------


def test_each_aggregation_makes_its_line(billsync: Billsync, catalog: Catalog) -> None:
    report = billsync.ingest.ingest(
        [
            event("acme", PEAK, "12.5", at=T0, volume="vol_1"),
            event("acme", PEAK, "40", at=T0 + timedelta(hours=1), volume="vol_1"),
            event("acme", PEAK, "20", at=T0 + timedelta(hours=2), volume="vol_1"),
            event("acme", PEAK, "3", at=T0, volume="vol_2"),
            event("acme", ADDRESSES, 1, at=T0, ip="10.0.0.1"),
            event("acme", ADDRESSES, 1, at=T0 + timedelta(hours=1), ip="10.0.0.1"),
            event("acme", ADDRESSES, 1, at=T0, ip="10.0.0.2"),
            event("acme", SEATS, 10, at=T0 + timedelta(hours=3)),
            event("acme", SEATS, 25, at=T0 + timedelta(hours=1)),
        ]
    )
    assert report.accepted == 9
    found = lines_of(billsync)
    assert found["acme", NOVEMBER, f"{PEAK}[volume=vol_1]"] == (
        Decimal(40),
        450,
        3,
    )  # 30 GB × $0.15
    assert found["acme", NOVEMBER, f"{PEAK}[volume=vol_2]"] == (Decimal(3), 0, 1)
    assert found["acme", NOVEMBER, ADDRESSES] == (Decimal(2), 720, 3)
    assert found["acme", NOVEMBER, SEATS] == (Decimal(10), 12000, 2)  # the latest, not the largest
    assert violations(billsync, catalog) == []


def test_late_usage_of_each_aggregation_lands_on_the_next_invoice(
    billsync: Billsync, clock: ManualClock, catalog: Catalog
) -> None:
    october = T0 - timedelta(days=31)
    billsync.ingest.ingest(
        [
            event("acme", PEAK, "30", at=october, volume="vol_1"),
            event("acme", ADDRESSES, 1, at=october, ip="10.0.0.1"),
            event("acme", SEATS, 10, at=october),
        ]
    )
    finalize(billsync, clock, "acme", OCTOBER)
    report = billsync.ingest.ingest(
        [
            event("acme", PEAK, "35", at=october, volume="vol_1"),
            event("acme", PEAK, "20", at=october, volume="vol_1"),
            event("acme", ADDRESSES, 1, at=october, ip="10.0.0.1"),
            event("acme", ADDRESSES, 1, at=october, ip="10.0.0.9"),
            event("acme", SEATS, 4, at=october + timedelta(hours=1)),
        ]
    )
    assert report.accepted == 5
    found = lines_of(billsync)
    late = "[late_from=2026-10-01]"
    # October's own lines are final: untouched.
    assert found["acme", OCTOBER, f"{PEAK}[volume=vol_1]"] == (Decimal(30), 300, 1)
    # The peak rose from 30 to 35 GB: 5 GB more, at October's marginal rate.
    assert found["acme", NOVEMBER, f"{PEAK}[volume=vol_1,late_from=2026-10-01]"] == (
        Decimal(5),
        75,
        2,
    )
    # 10.0.0.1 was counted in October already: only 10.0.0.9 is new.
    assert found["acme", NOVEMBER, f"{ADDRESSES}{late}"] == (Decimal(1), 360, 2)
    # A later report of 4 seats: the period's seat count went from 10 to 4, a credit.
    assert found["acme", NOVEMBER, f"{SEATS}{late}"] == (Decimal(-6), -7200, 1)
    assert violations(billsync, catalog) == []


def test_verify_recomputes_an_aggregated_line_from_its_events(
    billsync: Billsync, catalog: Catalog
) -> None:
    billsync.ingest.ingest(
        [
            event("acme", PEAK, "12", at=T0, volume="vol_1"),
            event("acme", PEAK, "40", at=T0, volume="vol_1"),
        ]
    )
    with billsync.database.transaction() as connection:
        connection.execute(update(lines).values(quantity=Decimal(52)))  # summed by mistake
    found = violations(billsync, catalog)
    assert any(
        v.startswith(LINE_QUANTITY_DIFFERS) and "holds 52, its events make 40" in v for v in found
    ), found


def test_values_counted_before_are_not_counted_again_in_a_later_batch(
    billsync: Billsync,
) -> None:
    billsync.ingest.ingest([event("acme", ADDRESSES, 1, at=T0, ip="10.0.0.1")])
    billsync.ingest.ingest(
        [
            event("acme", ADDRESSES, 1, at=T0 + timedelta(minutes=1), ip="10.0.0.1"),
            event("acme", ADDRESSES, 1, at=T0 + timedelta(minutes=2), ip="10.0.0.2"),
            event("acme", ADDRESSES, 1, at=T0 + timedelta(minutes=3), ip="10.0.0.2"),
        ]
    )
    assert lines_of(billsync)["acme", NOVEMBER, ADDRESSES][0] == 2
    with billsync.database.read() as connection:
        counted = connection.execute(select(distinct_values.c.value)).scalars().all()
    assert sorted(counted) == ["10.0.0.1", "10.0.0.2"]


# --- the property: any order, any batch cut, any re-send, late usage included --------------

IPS = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "192.168.1.1"]


@st.composite
def usage(draw: st.DrawFn, prefix: str, october: bool) -> list[dict[str, Any]]:
    """Events of every aggregation for two accounts, in October (``october``) or November."""
    base = T0 - timedelta(days=31) if october else T0
    events = []
    for index in range(draw(st.integers(1, 20))):
        metric = draw(st.sampled_from([PEAK, ADDRESSES, SEATS, "requests"]))
        dimensions: dict[str, str] = {}
        quantity: Any = draw(st.integers(0, 60))
        if metric == PEAK:
            dimensions["volume"] = draw(st.sampled_from(["vol_1", "vol_2"]))
            quantity = str(draw(st.decimals(min_value=0, max_value=100, places=3)))
        elif metric == ADDRESSES:
            dimensions["ip"] = draw(st.sampled_from(IPS))
        events.append(
            event(
                draw(st.sampled_from(["acme", "globex"])),
                metric,
                quantity,
                # Few distinct instants: ties between timestamps are common.
                at=base + timedelta(minutes=draw(st.integers(0, 5))),
                event_id=f"{prefix}-{index}",
                **dimensions,
            )
        )
    return events


def send(billsync: Billsync, events: list[dict[str, Any]], data: st.DataObject) -> None:
    """The events in an order and batches the test draws."""
    shuffled = data.draw(st.permutations(events))
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(events) - 1)), max_size=4)))
    start = 0
    for cut in [*cuts, len(events)]:
        billsync.ingest.ingest(shuffled[start:cut])
        start = cut


def reset(billsync: Billsync) -> None:
    with billsync.database.transaction() as connection:
        for table in (usage_event_ids, usage_events, distinct_values, lines, billing_periods):
            connection.execute(table.delete())


def model(
    catalog: Catalog, before: list[dict[str, Any]], after: list[dict[str, Any]]
) -> dict[tuple[str, date, str], Decimal]:
    """The lines the definition (core.aggregation.period_quantities) gives. October's events
    sent ``after`` it closed are on a late line of their own — unless the account had no
    October usage before (its October was never opened, so never closed)."""
    closed = {raw["account"] for raw in before}
    per_line: dict[tuple[str, str, str], list[list[Observation]]] = defaultdict(lambda: [[], []])
    november: dict[tuple[str, date, str], Decimal] = {}
    for index, events in enumerate([before, after]):
        for raw in events:
            metric = catalog.metrics[raw["metric"]]
            volume = raw["dimensions"].get("volume")
            key = f"{metric.id}[volume={volume}]" if volume else metric.id
            observation = Observation(
                Decimal(str(raw["quantity"])),
                datetime.fromisoformat(raw["timestamp"].replace("Z", "+00:00")),
                raw["id"],
                raw["dimensions"].get(metric.unique_by) if metric.unique_by else None,
            )
            month = raw["timestamp"][:7]
            line = index if raw["account"] in closed else 0
            per_line[raw["account"], month, key][line].append(observation)
    expected: dict[tuple[str, date, str], Decimal] = {}
    for (account, month, key), groups in per_line.items():
        aggregation = catalog.metrics[key.split("[")[0]].aggregation
        if month == "2026-11":
            every = [o for group in groups for o in group]
            november[account, NOVEMBER, key] = period_quantities(aggregation, [every])[0]
            continue
        quantities = period_quantities(aggregation, groups)
        for index, quantity in enumerate(quantities):
            if not groups[index]:
                continue  # no line unless events arrived in that round
            if index == 0:
                expected[account, OCTOBER, key] = quantity
            else:
                late = key.replace("]", ",late_from=2026-10-01]") if "[" in key else (
                    f"{key}[late_from=2026-10-01]"
                )  # fmt: skip
                expected[account, NOVEMBER, late] = quantity
    return {**expected, **november}


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    before=usage("a", october=True),
    late=usage("b", october=True),
    current=usage("c", october=False),
    data=st.data(),
)
def test_lines_are_independent_of_order_batches_and_re_sends(  # noqa: PLR0917
    billsync: Billsync,
    clock: ManualClock,
    catalog: Catalog,
    before: list[dict[str, Any]],
    late: list[dict[str, Any]],
    current: list[dict[str, Any]],
    data: st.DataObject,
) -> None:
    """October's usage, then October closes, then late October usage with November's. Two
    runs that cut and order the same events differently give the same lines, each equal to
    the definition, each late line priced at the marginal rates after what was billed; a
    re-send of any events changes nothing; verify finds nothing to report."""
    snapshots = []
    for _ in range(2):
        reset(billsync)
        send(billsync, before, data)
        for account in {raw["account"] for raw in before}:
            finalize(billsync, clock, account, OCTOBER)
        send(billsync, late + current, data)
        resent = data.draw(st.lists(st.sampled_from(before + late + current), max_size=10))
        assert billsync.ingest.ingest(resent).accepted == 0
        snapshots.append(lines_of(billsync))
    assert snapshots[0] == snapshots[1]
    found = snapshots[0]
    assert {slot: quantity for slot, (quantity, _, _) in found.items()} == model(
        catalog, before, late + current
    )
    # Each late line is rated after what its period billed before it (one rounding).
    for (account, _, key), (quantity, amount, _) in found.items():
        if "late_from" not in key:
            continue
        base_key = key.replace(",late_from=2026-10-01", "").replace("[late_from=2026-10-01]", "")
        billed = found.get((account, OCTOBER, base_key), (Decimal(0), 0, 0))[0]
        price = catalog.metrics[base_key.split("[")[0]].prices["usd"]
        assert amount == late_line_amount(quantity, billed, price, "usd"), (key, quantity)
    assert violations(billsync, catalog) == []


def test_the_catalog_endpoint_says_how_each_metric_aggregates(
    billsync: Billsync, client: Any
) -> None:
    metrics = {m["id"]: m for m in client.get("/v1/catalog").json()["metrics"]}
    assert metrics[PEAK]["aggregation"] == "max"
    assert (metrics[ADDRESSES]["aggregation"], metrics[ADDRESSES]["unique_by"]) == (
        "unique_count",
        "ip",
    )
    assert metrics[SEATS]["aggregation"] == "latest"
    assert metrics["requests"]["aggregation"] == "sum"


# --- released once no event can reach their period ------------------------------------------


def distinct_rows(billsync: Billsync) -> dict[date, int]:
    with billsync.database.read() as connection:
        rows = connection.execute(
            select(distinct_values.c.period_start, func.count())
            .group_by(distinct_values.c.period_start)
        ).all()  # fmt: skip
    return {row.period_start: int(row[1]) for row in rows}


def test_distinct_values_are_released_once_no_event_can_reach_their_period(
    billsync: Billsync, settings: Settings, clock: ManualClock, database: Database
) -> None:
    """Released a month at a time, past the usage horizon (45 days), whatever the raw events'
    retention (off here); a later build with a longer horizon accepts no usage into a released
    period — a value counted there once would be counted again."""
    october = T0 - timedelta(days=20)
    billsync.ingest.ingest([
        event("acme", ADDRESSES, 1, at=october, ip="10.0.0.9"),
        *(event(a, ADDRESSES, 1, at=T0, ip=ip) for a in ("acme", "globex")
          for ip in ("10.0.0.1", "10.0.0.2")),
    ])  # fmt: skip
    assert distinct_rows(billsync) == {OCTOBER: 1, NOVEMBER: 4}

    def run(**options: Any) -> RetentionReport:
        return EventRetention.from_settings(settings, database, clock).run(**options)

    first = run()  # 15 November: September's periods are the oldest an event can reach
    assert (first.distinct_released_before, first.distinct_values_released) == (date(2026, 9, 1), 0)
    clock.set(datetime(2027, 1, 20, tzinfo=UTC))  # 45 days back: 6 December, November open
    dry = run(dry_run=True)
    assert (dry.distinct_released_before, dry.distinct_values_released) == (NOVEMBER, 1)
    assert distinct_rows(billsync) == {OCTOBER: 1, NOVEMBER: 4}
    released = run()
    assert (released.distinct_released_before, released.distinct_values_released) == (NOVEMBER, 1)
    assert distinct_rows(billsync) == {NOVEMBER: 4}
    assert run().distinct_released_before is None  # done for the month: not walked again
    clock.set(datetime(2027, 2, 20, tzinfo=UTC))
    assert run().distinct_values_released == 4
    assert distinct_rows(billsync) == {}

    longer = build(
        settings.model_copy(update={"usage_horizon_days": 400}), clock=clock, database=database,
        catalog=billsync.catalog,
    )  # fmt: skip
    report = longer.ingest.ingest([
        event("acme", ADDRESSES, 1, at=T0 + timedelta(hours=1), ip="10.0.0.1"),  # November
        event("acme", ADDRESSES, 1, at=datetime(2027, 1, 2, tzinfo=UTC), ip="10.0.0.1"),
    ])  # fmt: skip
    assert [r.error.code.value for r in report.results if r.error] == ["timestamp_too_old"]
    assert report.accepted == 1
    assert distinct_rows(billsync) == {date(2027, 1, 1): 1}
