"""Ingest on real SQLite and PostgreSQL: idempotency, atomicity, folding, the late-usage rule."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from billsync.bootstrap import Billsync
from billsync.clock import ManualClock
from billsync.core.periods import PeriodStatus
from billsync.db.tables import billing_periods, lines, usage_event_ids, usage_events
from billsync.repositories import ledger, ledger_bulk
from billsync.repositories.accounts import get_account
from billsync.services.ingest import EventStatus
from tests.conftest import T0
from tests.factories import create_account, event


def line_table(
    billsync: Billsync, account: str = "acme", period: str | date = "current"
) -> dict[str, Any]:
    with billsync.database.read() as connection:
        record = billsync.accounts.get(connection, account)
        view = billsync.lines.period_lines(connection, record, period)
    return {line.key: (line.quantity, line.amount, line.version) for line in view.lines}


def test_events_fold_into_one_line_per_metric_and_grouping(billsync: Billsync) -> None:
    create_account(billsync)
    report = billsync.ingest.ingest(
        [
            event("acme", quantity=60, at=T0),
            event("acme", quantity="30", at=T0 + timedelta(seconds=10)),
            event("acme", "bandwidth.egress.na-eu.gb", "1.25", at=T0, region="iad"),
            event("acme", "bandwidth.egress.na-eu.gb", "0.25", at=T0, region="iad", host="h1"),
            event("acme", "bandwidth.egress.na-eu.gb", "2", at=T0, region="cdg"),
        ]
    )
    assert (report.accepted, report.duplicates, report.rejected) == (5, 0, 0)
    assert line_table(billsync) == {
        "machine.shared-cpu-1x.seconds": (Decimal(90), 0, 1),
        "bandwidth.egress.na-eu.gb[region=iad]": (Decimal("1.50"), 3, 1),
        "bandwidth.egress.na-eu.gb[region=cdg]": (Decimal(2), 4, 1),
    }


def test_a_line_on_a_half_cent_rounds_half_up_on_its_total(billsync: Billsync) -> None:
    """0.25 GB at $0.02 is exactly half a cent: half up gives 1¢ (half to even would give 0);
    one more 0.5 GB makes 0.75 GB = 1.5¢ → 2¢, rated on the total, not 1¢ + 1¢."""
    create_account(billsync)
    metric = "bandwidth.egress.na-eu.gb"
    billsync.ingest.ingest([event("acme", metric, "0.25", at=T0, region="iad")])
    assert line_table(billsync)[f"{metric}[region=iad]"][:2] == (Decimal("0.25"), 1)
    billsync.ingest.ingest([event("acme", metric, "0.5", at=T0, region="iad")])
    assert line_table(billsync)[f"{metric}[region=iad]"][:2] == (Decimal("0.75"), 2)


def test_a_duplicate_id_is_never_counted_twice(billsync: Billsync) -> None:
    create_account(billsync)
    first = event("acme", quantity=60, at=T0, event_id="e-1")
    assert billsync.ingest.ingest([first]).accepted == 1
    again = billsync.ingest.ingest([first, dict(first)])
    assert [r.status for r in again.results] == [EventStatus.DUPLICATE, EventStatus.DUPLICATE]
    conflicting = billsync.ingest.ingest([{**first, "quantity": 61}])
    assert conflicting.results[0].status is EventStatus.REJECTED
    assert conflicting.results[0].error is not None
    assert conflicting.results[0].error.code == "duplicate_conflict"
    # Same value written differently is the same payload.
    assert billsync.ingest.ingest([{**first, "quantity": "60.0"}]).duplicates == 1
    assert line_table(billsync)["machine.shared-cpu-1x.seconds"][0] == 60
    with billsync.database.read() as connection:
        assert ledger.count_events(connection) == 1


def test_line_version_bumps_on_each_change_and_amount_is_rated_on_the_total(
    billsync: Billsync,
) -> None:
    create_account(billsync)
    # 0.004 GB × $0.02 = $0.00008: each alone rounds to 0 cents; the line is rated on its total.
    for n in range(3):
        billsync.ingest.ingest(
            [
                event("acme", "bandwidth.egress.na-eu.gb", "100.1", at=T0, region="iad")
                for _ in range(n + 1)
            ]
        )
    quantity, amount, version = line_table(billsync)["bandwidth.egress.na-eu.gb[region=iad]"]
    assert quantity == Decimal("600.6")
    assert amount == 1201  # 600.6 × 0.02 = 12.012 → 1201 cents, rounded once
    assert version == 3


def test_a_failing_batch_leaves_nothing_behind(
    billsync: Billsync, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_account(billsync)

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("disk full")

    # The store fails after lines were written, while writing the raw events.
    monkeypatch.setattr(ledger_bulk, "insert_events", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        billsync.ingest.ingest([event("acme", at=T0), event("acme", "ip.ipv4.hours", 1, at=T0)])
    with billsync.database.read() as connection:
        assert connection.execute(select(func.count()).select_from(lines)).scalar_one() == 0
        assert connection.execute(select(func.count()).select_from(usage_events)).scalar_one() == 0
        assert (
            connection.execute(select(func.count()).select_from(billing_periods)).scalar_one() == 0
        )


def test_unknown_account_and_unpriced_currency_are_rejected_per_event(
    billsync: Billsync,
) -> None:
    create_account(billsync)
    report = billsync.ingest.ingest([event("ghost", at=T0), event("acme", at=T0)])
    assert [r.status for r in report.results] == [EventStatus.REJECTED, EventStatus.ACCEPTED]
    assert report.results[0].error is not None
    assert report.results[0].error.code == "unknown_account"


def test_late_usage_lands_on_the_next_open_period_labelled_with_its_own(
    billsync: Billsync, clock: ManualClock
) -> None:
    create_account(billsync)
    october_day = T0 - timedelta(days=31)  # 2026-10-15
    billsync.ingest.ingest([event("acme", "volume.gb_hours", "2000", at=october_day)])
    with billsync.database.transaction() as connection:
        ledger.set_period_status(
            connection, "acme", date(2026, 10, 1), PeriodStatus.FINALIZED, clock.now()
        )
    report = billsync.ingest.ingest(
        [
            event("acme", "volume.gb_hours", "500", at=october_day),  # late
            event("acme", "volume.gb_hours", "10", at=T0),  # on time
        ]
    )
    assert report.accepted == 2
    october = line_table(billsync, period=date(2026, 10, 20))
    assert october == {"volume.gb_hours": (Decimal(2000), 0, 1)}  # untouched once final
    november = line_table(billsync)
    late_key = "volume.gb_hours[late_from=2026-10-01]"
    assert set(november) == {"volume.gb_hours", late_key}
    # The late 500 GB-hours are charged at October's marginal rates: 190 free, 310 paid.
    assert november[late_key][0] == 500
    # Rounded once, half up (billsync.core.money): 6.36986¢ → 6¢.
    cents = Decimal(310) * Decimal("0.000205479452") * 100
    assert november[late_key][1] == cents.quantize(Decimal(1), rounding=ROUND_HALF_UP)
    assert november["volume.gb_hours"][:2] == (Decimal(10), 0)
    with billsync.database.read() as connection:
        view = billsync.lines.period_lines(
            connection, billsync.accounts.get(connection, "acme"), "current"
        )
    late = next(line for line in view.lines if line.key == late_key)
    assert late.late_from == date(2026, 10, 1)


def test_stored_values_read_back_identically_through_the_models(billsync: Billsync) -> None:
    """The bulk writers render values by hand; the ORM types must read them back exactly."""
    create_account(billsync)
    sent = event("acme", "bandwidth.egress.na-eu.gb", "0.000000001", at=T0, region="a b")
    billsync.ingest.ingest([sent])
    with billsync.database.read() as connection:
        row = connection.execute(select(usage_events)).one()
        line = connection.execute(select(lines)).one()
    assert row.quantity == Decimal("0.000000001")
    assert row.occurred_at == T0
    assert row.dimensions == {"region": "a b"}
    assert row.received_at == T0
    assert line.line_key == "bandwidth.egress.na-eu.gb[region=a%20b]"
    assert line.grouping == {"region": "a b"}
    assert line.period_start == date(2026, 11, 1)
    assert line.updated_at == T0


def test_backslashes_quotes_and_unicode_are_stored_exactly(billsync: Billsync) -> None:
    """PostgreSQL's raw events go in as COPY text written by hand: a backslash (its escape
    character) must arrive as itself, in the id and inside the dimensions' JSON."""
    create_account(billsync)
    region = 'fra\\1 "b" \\t é 🚀'
    event_id = 'id\\n\\\\"x"\\'
    sent = event(
        "acme", "bandwidth.egress.na-eu.gb", "1E-7", at=T0, event_id=event_id, region=region
    )
    assert billsync.ingest.ingest([sent]).accepted == 1
    with billsync.database.read() as connection:
        row = connection.execute(select(usage_events)).one()
    assert row.id == event_id
    assert row.dimensions == {"region": region}
    assert row.quantity == Decimal("1E-7")
    # And the id is known as taken: sent again, it is a duplicate, not a second event.
    again = billsync.ingest.ingest([sent])
    assert (again.accepted, again.duplicates) == (0, 1)


# --- Properties: order, batch boundaries and re-sends do not change the ledger -----------

METRICS = [
    ("machine.shared-cpu-1x.seconds", 0, None),
    ("volume.gb_hours", 6, None),
    ("bandwidth.egress.na-eu.gb", 9, "region"),
]


@st.composite
def usage(draw: st.DrawFn) -> list[dict[str, Any]]:
    count = draw(st.integers(1, 25))
    events = []
    for index in range(count):
        metric, places, dimension = draw(st.sampled_from(METRICS))
        quantity = draw(st.decimals(min_value=0, max_value=10**6, places=places))
        offset = draw(st.integers(-40 * 86400, 0))
        dims = {dimension: draw(st.sampled_from(["iad", "cdg"]))} if dimension else {}
        events.append(
            event(
                draw(st.sampled_from(["acme", "globex"])),
                metric,
                str(quantity),
                at=T0 + timedelta(seconds=offset),
                event_id=f"p-{index}",
                **dims,
            )
        )
    return events


def snapshot(billsync: Billsync) -> dict[tuple[str, date, str], tuple[Decimal, int]]:
    with billsync.database.read() as connection:
        rows = connection.execute(
            select(
                lines.c.account_id,
                lines.c.period_start,
                lines.c.line_key,
                lines.c.quantity,
                lines.c.amount,
            )
        ).all()
    return {(r[0], r[1], r[2]): (r[3], r[4]) for r in rows}


def reset(billsync: Billsync) -> None:
    with billsync.database.transaction() as connection:
        for table in (usage_event_ids, usage_events, lines, billing_periods):
            connection.execute(table.delete())


PROPERTY_SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@PROPERTY_SETTINGS
@given(events=usage(), data=st.data())
def test_folding_is_independent_of_order_and_batch_boundaries(
    billsync: Billsync, events: list[dict[str, Any]], data: st.DataObject
) -> None:
    for account in ("acme", "globex"):
        with billsync.database.read() as connection:
            missing = get_account(connection, account) is None
        if missing:
            create_account(billsync, account)
    reset(billsync)
    billsync.ingest.ingest(events)
    expected = snapshot(billsync)

    reset(billsync)
    shuffled = data.draw(st.permutations(events))
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(events) - 1)), max_size=4)))
    start = 0
    for cut in [*cuts, len(events)]:
        billsync.ingest.ingest(shuffled[start:cut])
        start = cut
    assert snapshot(billsync) == expected

    # Re-sending any subset changes nothing.
    subset = data.draw(st.lists(st.sampled_from(events), max_size=len(events)))
    report = billsync.ingest.ingest(subset)
    assert report.accepted == 0
    assert report.rejected == 0
    assert snapshot(billsync) == expected

    # Line quantities sum exactly to the accepted quantities.
    with billsync.database.read() as connection:
        totals = ledger.event_quantity_totals(connection)
    assert {slot: quantity for slot, (quantity, _) in expected.items()} == totals
    assert sum(totals.values(), Decimal(0)) == sum(
        (Decimal(e["quantity"]) for e in events), Decimal(0)
    )


def test_lines_read_by_their_remembered_ids_total_as_lines_read_by_key(
    billsync: Billsync,
) -> None:
    """Once a line has been read, ingest reads it by its id; the totals are those of reading
    every line by its (account, period, key), and a failed batch leaves no id behind."""
    create_account(billsync)
    billsync.ingest.ingest([event("acme", quantity=60, at=T0), event("acme", quantity=1, at=T0)])
    billsync.ingest.ingest([event("acme", quantity=30, at=T0 + timedelta(seconds=1))])
    remembered = dict(billsync.ingest._line_ids)
    assert len(remembered) == 1  # the line, read back by the second batch
    ref, line_id = next(iter(remembered.items()))
    with billsync.database.read() as connection:
        by_key = ledger_bulk.line_states(connection, [ref])
        by_id = ledger_bulk.line_states(connection, [ref], remembered)
    assert by_key == by_id
    assert by_id[ref].id == line_id
    assert by_id[ref].quantity == Decimal(91)
    billsync.ingest.ingest([event("acme", quantity=9, at=T0 + timedelta(seconds=2))])
    assert line_table(billsync)["machine.shared-cpu-1x.seconds"][0] == Decimal(100)


def test_a_line_created_by_a_batch_that_rolled_back_is_not_remembered(
    billsync: Billsync, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_account(billsync)

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("disk full")

    with monkeypatch.context() as patched:
        patched.setattr(ledger_bulk, "insert_events", broken)
        with pytest.raises(RuntimeError, match="disk full"):
            billsync.ingest.ingest([event("acme", quantity=5, at=T0)])
    assert billsync.ingest._line_ids == {}
    billsync.ingest.ingest([event("acme", quantity=7, at=T0)])
    billsync.ingest.ingest([event("acme", quantity=1, at=T0 + timedelta(seconds=1))])
    assert line_table(billsync)["machine.shared-cpu-1x.seconds"][0] == Decimal(8)


def test_a_remembered_id_that_is_no_longer_its_line_is_not_trusted(billsync: Billsync) -> None:
    """Lines are never deleted by billsync, but a restore or a hand-made delete must not make
    ingest add usage to whatever line took the id: the line is read by its key instead."""
    create_account(billsync)
    billsync.ingest.ingest([event("acme", quantity=60, at=T0)])
    billsync.ingest.ingest([event("acme", quantity=1, at=T0 + timedelta(seconds=1))])
    assert len(billsync.ingest._line_ids) == 1
    reset(billsync)  # every line gone: the remembered id points at nothing, then elsewhere
    billsync.ingest.ingest([event("acme", "ip.ipv4.hours", 3, at=T0)])
    billsync.ingest.ingest([event("acme", quantity=5, at=T0 + timedelta(seconds=2))])
    billsync.ingest.ingest([event("acme", "ip.ipv4.hours", 4, at=T0 + timedelta(seconds=3))])
    table = line_table(billsync)
    assert table["machine.shared-cpu-1x.seconds"][0] == Decimal(5)
    assert table["ip.ipv4.hours"][0] == Decimal(7)


@pytest.mark.unit
def test_the_remembered_timestamp_texts_are_exact_and_bounded() -> None:
    """The raw events' timestamps are written as SQLite's UTC text; the texts of recent ones
    are remembered (producers repeat "now"), never more than a bounded number of them, and an
    instant written with another offset gets the same UTC text."""
    from datetime import UTC, datetime, timezone  # noqa: PLC0415 - this test's own

    ledger_bulk._TIMESTAMP_TEXTS.clear()
    start = datetime(2026, 11, 5, 12, 0, 0, 250000, tzinfo=UTC)
    for second in range(ledger_bulk._TIMESTAMP_TEXTS_KEPT + 500):
        moment = start + timedelta(seconds=second)
        assert ledger_bulk._event_datetime(moment) == ledger_bulk._sqlite_datetime(moment)
        assert len(ledger_bulk._TIMESTAMP_TEXTS) <= ledger_bulk._TIMESTAMP_TEXTS_KEPT
    paris = start.astimezone(timezone(timedelta(hours=1)))
    assert ledger_bulk._event_datetime(paris) == "2026-11-05 12:00:00.250000"
    assert ledger_bulk._event_datetime(start) == "2026-11-05 12:00:00.250000"
