"""Raw event storage: monthly partitions on PostgreSQL, ids unique across them, partition
maintenance, retention of events whose invoice is final, and migration 0006 with data."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, insert, inspect, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from typer.testing import CliRunner

from billsync.bootstrap import Billsync, build
from billsync.cli.main import app
from billsync.clock import ManualClock
from billsync.config import Settings
from billsync.core.catalog import Catalog
from billsync.core.event_storage import months, shift_months, writable_from
from billsync.core.periods import PeriodStatus
from billsync.db import migrate
from billsync.db.database import Database
from billsync.db.tables import billing_periods, lines, usage_event_ids, usage_events
from billsync.repositories import event_storage, ledger_bulk
from billsync.services.console_views import account_view
from billsync.services.event_partitions import EventPartitions
from billsync.services.event_retention import EventRetention
from billsync.services.ingest import EventStatus
from billsync.services.verify import Verifier
from tests.conftest import PG_URL_VARIABLE, T0, TEST_TOKEN
from tests.factories import create_account, event

OCTOBER = datetime(2026, 10, 20, 12, 0, tzinfo=UTC)
HORIZON = timedelta(days=45)
MACHINE = "machine.shared-cpu-1x.seconds"


# --- stores of one's own: these tests create and drop partitions ----------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """An empty, unmigrated store of this test's own (a file, or a schema dropped after)."""
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'billsync.db'}")
        yield database
        database.dispose()
        return
    url = os.environ.get(PG_URL_VARIABLE)
    if not url:
        pytest.skip(f"PostgreSQL tests skipped: set {PG_URL_VARIABLE} to run them")
    schema = f"billsync_events_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    scoped = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    database = Database(scoped.render_as_string(hide_password=False))
    try:
        yield database
    finally:
        database.dispose()
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def own(
    fresh_database: Database, clock: ManualClock, example_catalog: Catalog, tmp_path: Path
) -> Iterator[Billsync]:
    """billsync on a migrated store of this test's own."""
    migrate.upgrade(fresh_database)
    settings = Settings(data_dir=tmp_path / "var", api_token=TEST_TOKEN)
    billsync = build(settings, clock=clock, database=fresh_database, catalog=example_catalog)
    yield billsync
    billsync.close()


def postgres_only(billsync: Billsync) -> None:
    if billsync.database.is_sqlite:
        pytest.skip("SQLite keeps usage_events a plain table")


# --- helpers ---------------------------------------------------------------------------------


def partition_of_each_event(database: Database) -> dict[str, str]:
    with database.read() as connection:
        rows = connection.execute(
            text("SELECT id, CAST(CAST(tableoid AS regclass) AS text) FROM usage_events")
        )
        return {str(row[0]): str(row[1]) for row in rows}


def partition_names(database: Database) -> list[str]:
    with database.read() as connection:
        return [p.name for p in event_storage.partitions(connection)]


def event_ids(database: Database) -> set[str]:
    with database.read() as connection:
        return set(connection.execute(select(usage_events.c.id)).scalars())


def line_rows(database: Database) -> list[tuple[Any, ...]]:
    with database.read() as connection:
        return [tuple(row) for row in connection.execute(select(lines).order_by(lines.c.id))]


def stored_state(billsync: Billsync) -> tuple[set[str], list[str]]:
    names = [] if billsync.database.is_sqlite else partition_names(billsync.database)
    return event_ids(billsync.database), names


def finalize(billsync: Billsync, account: str, start: date, at: datetime) -> None:
    with billsync.database.transaction() as connection:
        connection.execute(
            update(billing_periods)
            .where(billing_periods.c.account_id == account, billing_periods.c.start == start)
            .values(status=PeriodStatus.FINALIZED.value, finalized_at=at, updated_at=at)
        )


def set_status(billsync: Billsync, account: str, start: date, status: PeriodStatus) -> None:
    with billsync.database.transaction() as connection:
        connection.execute(
            update(billing_periods)
            .where(billing_periods.c.account_id == account, billing_periods.c.start == start)
            .values(status=status.value)
        )


def retention(billsync: Billsync, days: int, **options: Any) -> EventRetention:
    partitions = EventPartitions(billsync.database, horizon=HORIZON)
    return EventRetention(
        billsync.database, billsync.clock, partitions, retention_days=days, **options
    )


def ledger_is_clean(billsync: Billsync) -> int:
    """Verify (ledger only) finds nothing; the number of lines whose events were retained."""
    report = Verifier(billsync.database, None).verify()
    assert report.violations == [], report.violations
    return report.retained_lines


# --- the layout ------------------------------------------------------------------------------


def test_on_postgresql_events_are_stored_in_their_periods_month_partition(
    billsync: Billsync,
) -> None:
    postgres_only(billsync)
    with billsync.database.read() as connection:
        assert event_storage.is_partitioned(connection)
        names = [p.name for p in event_storage.partitions(connection)]
        primary_key = inspect(connection).get_pk_constraint("usage_events")
    assert names[-1] == "usage_events_default"
    assert primary_key["constrained_columns"] == ["id", "period_start"]
    create_account(billsync, "monthly")
    create_account(billsync, "mid", billing_anchor_day=15)
    billsync.ingest.ingest(
        [
            event("monthly", at=T0, event_id="nov"),
            event("monthly", at=OCTOBER, event_id="oct"),
            # Anchored on the 15th: November 10th is in the period that started October 15th.
            event("mid", at=datetime(2026, 11, 10, tzinfo=UTC), event_id="mid-oct"),
            event("mid", at=T0, event_id="mid-nov"),
        ]
    )
    assert partition_of_each_event(billsync.database) == {
        "nov": "usage_events_2026_11",
        "oct": "usage_events_2026_10",
        "mid-oct": "usage_events_2026_10",
        "mid-nov": "usage_events_2026_11",
    }


def test_an_id_is_accepted_once_whatever_account_or_month_it_claims(billsync: Billsync) -> None:
    create_account(billsync, "acme")
    create_account(billsync, "globex")
    first = event("acme", quantity=60, at=T0, event_id="once")
    assert billsync.ingest.ingest([first]).accepted == 1
    for again in (
        {**first, "timestamp": "2026-10-20T12:00:00Z"},  # another month (partition)
        {**first, "account": "globex", "timestamp": "2026-10-20T12:00:00Z"},
        {**first, "account": "globex"},
    ):
        result = billsync.ingest.ingest([again]).results[0]
        assert result.status is EventStatus.REJECTED
        assert result.error is not None
        assert result.error.code == "duplicate_conflict"
    assert billsync.ingest.ingest([first]).results[0].status is EventStatus.DUPLICATE
    with billsync.database.read() as connection:
        assert connection.execute(select(func.count()).select_from(usage_events)).scalar() == 1
        assert connection.execute(select(func.count()).select_from(usage_event_ids)).scalar() == 1
        assert connection.execute(select(func.sum(lines.c.quantity))).scalar() == 60


@pytest.mark.postgres
def test_concurrent_batches_sending_one_id_for_two_months_count_it_once(
    billsync: Billsync, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two batches for different accounts (so not queued behind the same account lock) carry
    the same new id, stamped in different months (so stored in different partitions, where
    the primary key cannot see both). Both are in flight when they claim it: the second waits
    for the first's transaction on the id's unique index, then finds it taken."""
    postgres_only(billsync)
    create_account(billsync, "acme")
    create_account(billsync, "globex")
    both_in_flight = threading.Barrier(2, timeout=30)
    waited = threading.local()
    claim = ledger_bulk.claim_event_ids

    def wait_then_claim(connection: Any, claims: Sequence[tuple[str, date]]) -> set[str]:
        if not getattr(waited, "done", False):
            waited.done = True
            both_in_flight.wait()  # both transactions are open, neither has claimed anything
        return claim(connection, claims)

    monkeypatch.setattr(ledger_bulk, "claim_event_ids", wait_then_claim)
    statuses: dict[str, EventStatus] = {}
    errors: list[BaseException] = []

    def send(account: str, at: datetime) -> None:
        try:
            batch = [
                event(account, quantity=60, at=at, event_id="shared"),
                event(account, quantity=1, at=at, event_id=f"own-{account}"),
            ]
            statuses[account] = billsync.ingest.ingest(batch).results[0].status
        except BaseException as error:
            errors.append(error)

    threads = [
        threading.Thread(target=send, args=("acme", T0)),
        threading.Thread(target=send, args=("globex", OCTOBER)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted(statuses.values()) == [EventStatus.ACCEPTED, EventStatus.REJECTED]
    assert event_ids(billsync.database) == {"shared", "own-acme", "own-globex"}
    with billsync.database.read() as connection:
        assert connection.execute(select(func.sum(lines.c.quantity))).scalar() == 62
    assert ledger_is_clean(billsync) == 0


# --- partition maintenance -------------------------------------------------------------------


def test_maintenance_creates_the_coming_months_once(own: Billsync, clock: ManualClock) -> None:
    postgres_only(own)
    partitions = EventPartitions(own.database, horizon=HORIZON)
    clock.set(datetime(2027, 5, 10, tzinfo=UTC))
    before = partition_names(own.database)
    dry = partitions.maintain(clock.now(), dry_run=True)
    assert dry.created
    assert partition_names(own.database) == before
    first = partitions.maintain(clock.now())
    assert [c.name for c in first.created] == [c.name for c in dry.created]
    assert first.errors == []
    wanted = months(writable_from(clock.now(), HORIZON), date(2027, 8, 1))
    names = set(partition_names(own.database))
    assert {f"usage_events_{m:%Y_%m}" for m in wanted} <= names
    assert partitions.maintain(clock.now()).created == []  # idempotent
    assert set(partition_names(own.database)) == names


def test_rows_of_a_month_without_partition_land_in_default_then_move_out(
    own: Billsync, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    postgres_only(own)
    create_account(own)
    clock.set(datetime(2027, 6, 15, tzinfo=UTC))  # far past the months the migration made

    def refused(*_args: object, **_kwargs: object) -> int:
        raise OperationalError("LOCK TABLE", {}, Exception("lock timeout"))

    monkeypatch.setattr(event_storage, "create_month_partition", refused)
    report = own.ingest.ingest([event("acme", at=clock.now(), event_id=f"j-{n}") for n in range(3)])
    assert report.accepted == 3  # ingest never waits on a partition
    assert set(partition_of_each_event(own.database).values()) == {"usage_events_default"}
    monkeypatch.undo()

    maintained = EventPartitions(own.database, horizon=HORIZON).maintain(clock.now())
    june = next(c for c in maintained.created if c.name == "usage_events_2027_06")
    assert june.rows_from_default == 3
    assert set(partition_of_each_event(own.database).values()) == {"usage_events_2027_06"}
    # The moved events are still found as what they are.
    again = own.ingest.ingest([event("acme", at=clock.now(), event_id="j-0")])
    assert again.results[0].status is EventStatus.DUPLICATE
    assert ledger_is_clean(own) == 0


def test_ingest_creates_a_missing_month_partition_itself(own: Billsync, clock: ManualClock) -> None:
    postgres_only(own)
    create_account(own)
    clock.set(datetime(2027, 9, 3, tzinfo=UTC))
    own.ingest.ingest([event("acme", at=clock.now(), event_id="sep")])
    assert partition_of_each_event(own.database) == {"sep": "usage_events_2027_09"}


# --- retention -------------------------------------------------------------------------------


def _two_months_of_usage(billsync: Billsync) -> None:
    """acme and globex report in October and November 2026 (clock at T0)."""
    for account in ("acme", "globex"):
        create_account(billsync, account)
        billsync.ingest.ingest(
            [event(account, at=OCTOBER, event_id=f"{account}-oct-{n}") for n in range(5)]
            + [event(account, at=T0, event_id=f"{account}-nov-{n}") for n in range(4)]
        )


def test_retention_deletes_only_events_of_periods_finalized_long_enough_ago(
    own: Billsync, clock: ManualClock
) -> None:
    _two_months_of_usage(own)
    # acme's October was finalized long ago; globex's October recently; November is open.
    finalize(own, "acme", date(2026, 10, 1), datetime(2026, 11, 2, tzinfo=UTC))
    finalize(own, "globex", date(2026, 10, 1), datetime(2026, 11, 14, tzinfo=UTC))
    lines_before = line_rows(own.database)
    assert ledger_is_clean(own) == 0

    report = retention(own, days=7, chunk_events=2).run()  # clock at T0: cutoff November 8th

    assert report.errors == []
    assert report.events_removed == 5
    assert event_ids(own.database) == {
        *(f"globex-oct-{n}" for n in range(5)),
        *(f"{a}-nov-{n}" for a in ("acme", "globex") for n in range(4)),
    }
    assert line_rows(own.database) == lines_before  # lines are never touched
    assert ledger_is_clean(own) == 1  # acme's October line: its total stands alone now
    # A re-sent retained event is still known: never counted again.
    resent = own.ingest.ingest([event("acme", at=OCTOBER, event_id="acme-oct-0")])
    assert resent.results[0].status is EventStatus.DUPLICATE
    with own.database.read() as connection:
        view = account_view(connection, "acme")
    assert view is not None
    assert {p.period.start: p.events_retained for p in view.periods} == {
        date(2026, 11, 1): False,
        date(2026, 10, 1): True,
    }

    # Later runs go on from there: globex's October qualifies a week on.
    clock.set(T0 + timedelta(days=7))
    assert retention(own, days=7).run().events_removed == 5
    assert retention(own, days=7).run().events_removed == 0
    assert ledger_is_clean(own) == 2


def test_retention_is_off_by_default_and_a_dry_run_changes_nothing(
    own: Billsync, clock: ManualClock
) -> None:
    _two_months_of_usage(own)
    finalize(own, "acme", date(2026, 10, 1), datetime(2026, 11, 2, tzinfo=UTC))
    before = stored_state(own)

    off = EventRetention.from_settings(own.settings, own.database, clock).run()
    assert off.cutoff is None
    assert off.events_removed == 0

    dry = retention(own, days=7).run(dry_run=True)
    assert dry.dry_run
    assert dry.events_removed == 5
    assert stored_state(own) == before
    with own.database.read() as connection:
        assert event_storage.retention_mark(connection) == event_storage.RetentionMark()
    assert ledger_is_clean(own) == 0


def test_retention_drops_a_closed_month_whose_every_event_qualifies(
    own: Billsync, clock: ManualClock
) -> None:
    postgres_only(own)
    _two_months_of_usage(own)
    create_account(own, "initech")
    own.ingest.ingest([event("initech", at=T0, event_id="initech-nov")])
    # More of initech's November arrives after November went to review: a late line on December.
    set_status(own, "initech", date(2026, 11, 1), PeriodStatus.REVIEW)
    for account in ("acme", "globex"):
        finalize(own, account, date(2026, 10, 1), datetime(2026, 11, 2, tzinfo=UTC))
        finalize(own, account, date(2026, 11, 1), datetime(2026, 12, 2, tzinfo=UTC))
    clock.set(datetime(2026, 12, 5, tzinfo=UTC))
    own.ingest.ingest([event("initech", at=T0, event_id="initech-late")])
    assert partition_of_each_event(own.database)["initech-late"] == "usage_events_2026_11"
    clock.set(datetime(2027, 2, 20, tzinfo=UTC))  # October and November are closed months now
    lines_before = line_rows(own.database)

    dry = retention(own, days=30).run(dry_run=True)
    report = retention(own, days=30).run()

    assert report.errors == []
    dropped = {p.name: p.events for p in report.partitions_dropped}
    assert dropped["usage_events_2026_10"] == 10
    assert "usage_events_2026_11" in report.partitions_kept  # initech's December is not final
    assert report.events_deleted == 8  # November's qualifying events, by chunks
    assert [(p.name, p.events) for p in dry.partitions_dropped] == [
        (p.name, p.events) for p in report.partitions_dropped
    ]
    assert dry.events_deleted == report.events_deleted
    names = partition_names(own.database)
    assert "usage_events_2026_10" not in names
    assert "usage_events_2026_11" in names
    assert event_ids(own.database) == {"initech-nov", "initech-late"}
    assert line_rows(own.database) == lines_before
    assert ledger_is_clean(own) == 4

    # Once initech's November and December are final too, November's partition goes as well.
    finalize(own, "initech", date(2026, 11, 1), datetime(2027, 1, 2, tzinfo=UTC))
    finalize(own, "initech", date(2026, 12, 1), datetime(2027, 1, 2, tzinfo=UTC))
    clock.set(datetime(2027, 3, 5, tzinfo=UTC))
    later = retention(own, days=30).run()
    assert [(p.name, p.events) for p in later.partitions_dropped] == [("usage_events_2026_11", 2)]
    assert later.events_deleted == 0
    assert event_ids(own.database) == set()
    assert ledger_is_clean(own) == 6


def test_the_retention_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, example_catalog: Catalog
) -> None:
    data_dir = tmp_path / "data"
    for name in (
        "BILLSYNC_DATABASE_URL",
        "BILLSYNC_CATALOG",
        "BILLSYNC_STRIPE_API_KEY",
        "BILLSYNC_EVENT_RETENTION_DAYS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BILLSYNC_DATA_DIR", str(data_dir))
    monkeypatch.setenv("BILLSYNC_API_TOKEN", TEST_TOKEN)
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    off = runner.invoke(app, ["retention"])
    assert off.exit_code == 0, off.output
    assert "retention is off" in off.output

    settings = Settings(data_dir=data_dir, api_token=TEST_TOKEN)
    billsync = build(settings, clock=ManualClock(datetime.now(UTC)), catalog=example_catalog)
    create_account(billsync)
    at = datetime.now(UTC) - timedelta(hours=1)
    billsync.ingest.ingest([event("acme", at=at, event_id="e")])
    finalize(billsync, "acme", at.date().replace(day=1), at - timedelta(days=3))
    billsync.close()
    monkeypatch.setenv("BILLSYNC_EVENT_RETENTION_DAYS", "2")
    dry = runner.invoke(app, ["retention", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "1 event(s) would be deleted" in dry.output
    assert "dry run: nothing was changed" in dry.output
    done = runner.invoke(app, ["retention"])
    assert done.exit_code == 0, done.output
    assert "1 event(s) deleted" in done.output
    verified = runner.invoke(app, ["verify", "--ledger-only"])
    assert verified.exit_code == 0, verified.output
    assert "1 line(s) of finalized periods whose raw events retention removed" in verified.output


# --- migration 0006 with data ----------------------------------------------------------------


def _stored_rows() -> list[dict[str, Any]]:
    received = datetime(2026, 11, 26, tzinfo=UTC)
    rows = []
    for n, (at, start) in enumerate(
        [
            (datetime(2025, 1, 20, 8, tzinfo=UTC), date(2025, 1, 1)),  # far older than today
            (datetime(2026, 10, 3, 9, tzinfo=UTC), date(2026, 9, 15)),  # anchored on the 15th
            (datetime(2026, 11, 25, 23, 59, 59, 123456, tzinfo=UTC), date(2026, 11, 1)),
            (datetime(2027, 6, 1, tzinfo=UTC), date(2027, 6, 1)),  # beyond the months ahead
        ]
    ):
        rows.append(
            {
                "id": f"m-{n}",
                "account_id": "acme",
                "metric": MACHINE,
                "quantity": Decimal("0.000001") * (n + 1),
                "occurred_at": at,
                "dimensions": {"region": "iad"} if n % 2 else {},
                "period_start": start,
                "line_id": n + 1,
                "received_at": received,
            }
        )
    return rows


def _read_rows(database: Database) -> list[dict[str, Any]]:
    with database.read() as connection:
        return [
            dict(row) for row in connection.execute(select(usage_events).order_by("id")).mappings()
        ]


def test_migration_0006_keeps_every_row_up_and_down(fresh_database: Database) -> None:
    database = fresh_database
    migrate.upgrade(database, "0005")
    rows = _stored_rows()
    with database.transaction() as connection:
        connection.execute(insert(usage_events), rows)

    migrate.upgrade(database)
    assert _read_rows(database) == rows
    with database.read() as connection:
        ids = {row.id: row.period_start for row in connection.execute(select(usage_event_ids))}
        primary_key = inspect(connection).get_pk_constraint("usage_events")
    assert ids == {row["id"]: row["period_start"] for row in rows}
    assert primary_key["constrained_columns"] == ["id", "period_start"]
    if not database.is_sqlite:
        placed = partition_of_each_event(database)
        assert placed == {
            "m-0": "usage_events_2025_01",
            "m-1": "usage_events_2026_09",
            "m-2": "usage_events_2026_11",
            "m-3": "usage_events_2027_06",
        }
        with database.read() as connection:
            made = event_storage.partitions(connection)
        assert made[-1].is_default
        # Every month from the oldest event's to (at least) three after the newest one's.
        assert [p.start for p in made[:-1]] == months(date(2025, 1, 1), made[-2].start or T0)
        assert (made[-2].start or T0) >= shift_months(date(2027, 6, 1), 3)
    assert migrate.schema_drift(database) == []

    migrate.downgrade(database, "0005")
    assert _read_rows(database) == rows
    with database.read() as connection:
        primary_key = inspect(connection).get_pk_constraint("usage_events")
        assert not inspect(connection).has_table("usage_event_ids")
        if not database.is_sqlite:
            assert not event_storage.is_partitioned(connection)
    assert primary_key["constrained_columns"] == ["id"]
    migrate.upgrade(database)
    assert _read_rows(database) == rows
