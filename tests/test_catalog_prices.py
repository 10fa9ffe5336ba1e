"""A new catalog's prices reach the ledger once and consistently, on SQLite and PostgreSQL:
applying a catalog that prices an open period otherwise re-rates that period's lines (each one,
not only those usage touches next), refuses a change that would re-price a period no longer
open, finishes an interrupted re-rating, and from then on a process still running the old
catalog cannot rate with it — 503 ``catalog_outdated`` for the batches it would price
otherwise, nothing recorded."""

from __future__ import annotations

import threading
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from fastapi.testclient import TestClient
from sqlalchemy import select, text, update
from typer.testing import CliRunner

from billsync.api.app import create_app
from billsync.bootstrap import Billsync, build
from billsync.cli import common
from billsync.cli.main import app as cli
from billsync.clock import ManualClock
from billsync.config import Settings
from billsync.core.catalog import Catalog, parse_catalog
from billsync.core.catalog_pricing import Span, changed_spans, pricing_document
from billsync.core.periods import Period, PeriodStatus
from billsync.db.database import Database
from billsync.db.tables import account_sync, audit_log, catalog_pricings, lines
from billsync.errors import CatalogOutdated
from billsync.repositories import catalog_pricings as pricing_repository
from billsync.repositories import ledger
from billsync.repositories import problems as problem_repository
from billsync.services import catalog_prices
from billsync.services.catalog_prices import CatalogChangeRefused, CatalogPrices
from billsync.services.verify import Verifier
from tests.conftest import T0, TEST_TOKEN
from tests.factories import create_account, event
from tests.waiting import blocked_by, wait_until

OCTOBER = date(2026, 10, 1)
NOVEMBER = date(2026, 11, 1)
DECEMBER = date(2026, 12, 1)
CPU = "cpu.seconds"
GB = "storage.gb"


def document(cpu_versions: list[dict[str, Any]] | None = None, **cpu: Any) -> dict[str, Any]:
    return {
        "catalog": {"currencies": ["usd", "eur"]},
        "metric": [
            {
                "id": CPU,
                "unit": "second",
                "price": {"usd": "0.001", "eur": "0.0009"},
                **({"price_versions": cpu_versions} if cpu_versions else {}),
                **cpu,
            },
            {"id": GB, "unit": "GB", "decimals": 3, "price": {"usd": "0.1", "eur": "0.09"}},
        ],
    }


OLD = parse_catalog(document(), "old.toml")
# From November on — the open period — a second costs three times as much.
NEW = parse_catalog(
    document([{"effective_from": "2026-11-01", "price": {"usd": "0.003", "eur": "0.0027"}}]),
    "new.toml",
)


def built(settings: Settings, database: Database, clock: ManualClock, catalog: Catalog) -> Billsync:
    return build(settings, clock=clock, database=database, catalog=catalog)


@pytest.fixture
def billsync(settings: Settings, database: Database, clock: ManualClock) -> Billsync:
    billsync = built(settings, database, clock, OLD)
    for account in ("acme", "beta", "gamma"):
        create_account(billsync, account)
    return billsync


def cpu_amounts(billsync: Billsync) -> dict[tuple[str, date], tuple[int, int]]:
    """(account, period) → (amount, version) of each own CPU line."""
    with billsync.database.read() as connection:
        rows = connection.execute(
            select(
                lines.c.account_id,
                lines.c.period_start,
                lines.c.amount,
                lines.c.version,
            ).where(lines.c.metric == CPU, lines.c.late_from.is_(None))
        ).all()
    return {(r[0], r[1]): (r[2], r[3]) for r in rows}


def test_the_spans_a_change_re_prices() -> None:
    old, new = pricing_document(OLD), pricing_document(NEW)
    assert changed_spans(old, old) == []
    assert changed_spans(old, new) == [
        Span(CPU, "eur", NOVEMBER, None),
        Span(CPU, "usd", NOVEMBER, None),
    ]
    # Back again: the same span.
    assert changed_spans(new, old) == changed_spans(old, new)
    # An edited first price, with the November version kept: only the periods before it.
    edited = parse_catalog(
        document(
            [{"effective_from": "2026-11-01", "price": {"usd": "0.003", "eur": "0.0027"}}],
            price={"usd": "0.002", "eur": "0.0009"},
        ),
        "edited.toml",
    )
    assert changed_spans(new, pricing_document(edited)) == [Span(CPU, "usd", None, NOVEMBER)]
    # A version from a later date prices only periods from that date on otherwise.
    later = parse_catalog(
        document([{"effective_from": "2027-01-01", "price": {"usd": "0.003", "eur": "0.0027"}}]),
        "later.toml",
    )
    spans = changed_spans(old, pricing_document(later))
    assert [(s.since, s.until) for s in spans] == [(date(2027, 1, 1), None)] * 2
    assert not spans[0].holds(DECEMBER)
    # A new metric priced nothing before; the same price written otherwise is the same price.
    more = document(price={"usd": "0.0010", "eur": "0.00090"})
    more["metric"].append({"id": "api.calls", "unit": "call", "price": {"usd": "1", "eur": "1"}})
    assert changed_spans(old, pricing_document(parse_catalog(more, "more.toml"))) == []


def test_a_version_from_the_open_period_re_rates_each_of_its_lines_once(
    billsync: Billsync, settings: Settings, database: Database, clock: ManualClock
) -> None:
    billsync.ingest.ingest(
        [
            event("acme", CPU, 1000, at=T0),
            event("beta", CPU, 2000, at=T0),
            event("acme", GB, "5", at=T0),
            event("gamma", CPU, 500, at=T0 - timedelta(days=31)),  # October's period
        ]
    )
    with database.transaction() as connection:  # a negotiated rate
        billsync.rates.set(connection, "gamma", {CPU: "0.0005"}, None, actor="test")
    billsync.ingest.ingest([event("gamma", CPU, 1000, at=T0)])
    assert CatalogPrices(database, OLD, clock).apply().kind == "adopt"
    before = cpu_amounts(billsync)
    assert before[("acme", NOVEMBER)] == (100, 1)
    with database.transaction() as connection:  # as if Stripe held everything
        connection.execute(update(account_sync).values(behind=False))

    applied = CatalogPrices(database, NEW, clock).apply(actor="ops")

    assert (applied.kind, applied.lines_re_rated, applied.accounts_re_rated) == ("change", 2, 2)
    after = cpu_amounts(billsync)
    assert after[("acme", NOVEMBER)] == (300, 2)  # 1,000 s × $0.003, a new version to sync
    assert after[("beta", NOVEMBER)] == (600, 2)
    assert after[("gamma", NOVEMBER)] == before[("gamma", NOVEMBER)]  # its negotiated rate
    assert after[("gamma", OCTOBER)] == before[("gamma", OCTOBER)]  # before the version
    with database.read() as connection:
        behind = {
            row.account_id
            for row in connection.execute(
                select(account_sync.c.account_id).where(account_sync.c.behind.is_(True))
            )
        }
        entry = connection.execute(
            select(audit_log.c.actor, audit_log.c.detail).where(
                audit_log.c.action == "catalog.prices"
            )
        ).all()[-1]
        record = pricing_repository.latest(connection)
    assert behind == {"acme", "beta"}
    assert entry.actor == "ops"
    assert entry.detail["changes"] == [
        "cpu.seconds in EUR, periods starting from 2026-11-01",
        "cpu.seconds in USD, periods starting from 2026-11-01",
    ]
    assert record is not None
    assert record.completed_at is not None
    assert (record.lines_re_rated, record.accounts_re_rated) == (2, 2)
    # The ledger is what the new catalog says, line by line; applying again does nothing.
    assert Verifier(database, None, catalog=NEW).verify().violations == []
    assert CatalogPrices(database, NEW, clock).apply().kind == "unchanged"
    assert cpu_amounts(billsync) == after


def test_a_change_that_re_prices_a_period_no_longer_open_is_refused(
    billsync: Billsync, database: Database, clock: ManualClock
) -> None:
    billsync.ingest.ingest([event("acme", CPU, 1000, at=T0 - timedelta(days=31))])
    with database.transaction() as connection:
        ledger.set_period_status(connection, "acme", OCTOBER, PeriodStatus.FINALIZED, clock.now())
    CatalogPrices(database, OLD, clock).apply()
    from_october = parse_catalog(
        document([{"effective_from": "2026-10-01", "price": {"usd": "0.003", "eur": "0.0027"}}]),
        "october.toml",
    )
    with pytest.raises(CatalogChangeRefused) as refused:
        CatalogPrices(database, from_october, clock).apply()
    message = refused.value.message
    assert "1 finalized period(s) of USD accounts starting 2026-10-01" in message
    assert "price version from an open period's start" in message
    with database.read() as connection:
        assert len(connection.execute(select(catalog_pricings.c.id)).all()) == 1  # nothing new
    assert cpu_amounts(billsync)[("acme", OCTOBER)] == (100, 1)
    # From November (the open period) on, the same change is taken.
    assert CatalogPrices(database, NEW, clock).apply().kind == "change"


def test_an_interrupted_re_rating_is_finished_by_the_next_apply(
    billsync: Billsync,
    database: Database,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    billsync.ingest.ingest([event(a, CPU, 1000, at=T0) for a in ("acme", "beta", "gamma")])
    CatalogPrices(database, OLD, clock).apply()
    monkeypatch.setattr(catalog_prices, "RE_RATE_ACCOUNTS_PER_TRANSACTION", 1)
    pages: list[int] = []
    real = pricing_repository.add_progress

    def dies_after_one_page(connection: Any, *args: Any) -> None:
        if pages:
            raise SystemExit("the applier was stopped")
        pages.append(1)
        real(connection, *args)

    with monkeypatch.context() as patch:
        patch.setattr(pricing_repository, "add_progress", dies_after_one_page)
        with pytest.raises(SystemExit):
            CatalogPrices(database, NEW, clock).apply()
    assert sorted(amount for amount, _ in cpu_amounts(billsync).values()) == [100, 100, 300]
    plan = CatalogPrices(database, NEW, clock).plan()
    assert plan.kind == "resume"
    finished = CatalogPrices(database, NEW, clock).apply()
    assert (finished.kind, finished.lines_re_rated) == ("resume", 2)
    assert sorted(amount for amount, _ in cpu_amounts(billsync).values()) == [300, 300, 300]
    assert CatalogPrices(database, NEW, clock).plan().kind == "unchanged"


def test_a_process_still_running_the_old_catalog_cannot_rate_with_it(
    billsync: Billsync, settings: Settings, database: Database, clock: ManualClock
) -> None:
    with database.transaction() as connection:  # gamma's CPU is priced by its own rate
        billsync.rates.set(connection, "gamma", {CPU: "0.0005"}, None, actor="test")
    CatalogPrices(database, OLD, clock).apply()
    CatalogPrices(database, NEW, clock).apply()
    stale = billsync  # built with OLD
    with pytest.raises(CatalogOutdated) as outdated:
        stale.ingest.ingest([event("acme", CPU, 1000, at=T0, id="cpu-1")])
    assert "cpu.seconds in USD for the period starting 2026-11-01" in outdated.value.message
    # What both catalogs price alike is taken: storage, CPU of October's period, and CPU of an
    # account whose negotiated rate prices it.
    report = stale.ingest.ingest(
        [
            event("acme", GB, "2", at=T0),
            event("beta", CPU, 10, at=T0 - timedelta(days=31)),
            event("gamma", CPU, 1000, at=T0),
        ]
    )
    assert report.accepted == 3
    assert cpu_amounts(stale)[("gamma", NOVEMBER)] == (50, 1)  # 1,000 s × $0.0005
    with TestClient(create_app(stale)) as client:
        answer = client.post(
            "/v1/usage",
            json={"events": [event("acme", CPU, 1000, at=T0, id="cpu-1")]},
            headers={"Authorization": f"Bearer {TEST_TOKEN}"},
        )
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "catalog_outdated"
    assert answer.headers["Retry-After"] == "1"
    # Nothing of the refused batch was recorded; a process with the new catalog takes it.
    current = built(settings, database, clock, NEW)
    assert current.ingest.ingest([event("acme", CPU, 1000, at=T0, id="cpu-1")]).accepted == 1
    assert cpu_amounts(current)[("acme", NOVEMBER)] == (300, 1)


def test_a_process_starts_only_with_the_applied_prices(
    billsync: Billsync, settings: Settings, database: Database, clock: ManualClock
) -> None:
    billsync.ingest.ingest([event("acme", CPU, 1000, at=T0)])
    common.ensure_catalog(billsync)  # the first start: its catalog is the ledger's pricing
    starting = built(settings, database, clock, NEW)
    with pytest.raises(typer.Exit):  # a command, or any process on PostgreSQL: apply it first
        common.ensure_catalog(starting)
    if database.is_sqlite:  # `billsync serve`, which owns a SQLite ledger, applies it
        common.ensure_catalog(starting, apply=True)
    else:
        with pytest.raises(typer.Exit):
            common.ensure_catalog(starting, apply=True)
        assert cpu_amounts(starting)[("acme", NOVEMBER)] == (100, 1)
        CatalogPrices(database, NEW, clock).apply()
    assert cpu_amounts(starting)[("acme", NOVEMBER)] == (300, 2)
    common.ensure_catalog(starting)  # applied: it starts
    # A process restarted with the old catalog does not put the old prices back.
    with pytest.raises(typer.Exit):
        common.ensure_catalog(built(settings, database, clock, OLD), apply=False)
    assert cpu_amounts(starting)[("acme", NOVEMBER)] == (300, 2)


def test_what_the_refusal_to_start_says(
    billsync: Billsync,
    settings: Settings,
    database: Database,
    clock: ManualClock,
    capsys: pytest.CaptureFixture[str],
) -> None:
    CatalogPrices(database, NEW, clock).apply()
    with pytest.raises(typer.Exit):
        common.ensure_catalog(built(settings, database, clock, OLD))
    said = " ".join(capsys.readouterr().err.split())
    assert "the catalog old.toml: its prices differ from those applied to the ledger" in said
    assert "from new.toml (cpu.seconds in EUR, periods starting from 2026-11-01;" in said
    assert "run `billsync catalog apply` with it" in said
    assert "if it is an old one, start billsync with new.toml instead" in said


@pytest.mark.parametrize(
    "status",
    [PeriodStatus.CLOSING, PeriodStatus.REVIEW, PeriodStatus.HELD, PeriodStatus.FINALIZED],
)
def test_a_change_reaching_a_period_past_open_is_refused_whatever_its_state(
    billsync: Billsync, database: Database, clock: ManualClock, status: PeriodStatus
) -> None:
    billsync.ingest.ingest([event("acme", CPU, 1000, at=T0)])
    CatalogPrices(database, OLD, clock).apply()
    with database.transaction() as connection:
        ledger.set_period_status(connection, "acme", NOVEMBER, status, clock.now())
    with pytest.raises(CatalogChangeRefused) as refused:
        CatalogPrices(database, NEW, clock).apply()
    assert f"1 {status.value} period(s) of USD accounts starting 2026-11-01" in (
        refused.value.message
    )
    assert cpu_amounts(billsync)[("acme", NOVEMBER)] == (100, 1)


def test_late_usage_keeps_its_own_periods_prices(
    billsync: Billsync, database: Database, clock: ManualClock
) -> None:
    """October's usage arriving in November goes on November's invoice at October's price:
    a version from November does not change it."""
    billsync.ingest.ingest([event("acme", CPU, 1000, at=T0 - timedelta(days=31))])
    with database.transaction() as connection:
        ledger.set_period_status(connection, "acme", OCTOBER, PeriodStatus.FINALIZED, clock.now())
    billsync.ingest.ingest([event("acme", CPU, 500, at=T0 - timedelta(days=31))])  # late
    CatalogPrices(database, OLD, clock).apply()

    def late_line() -> tuple[int, int]:
        with database.read() as connection:
            found = connection.execute(
                select(lines.c.amount, lines.c.version).where(lines.c.late_from == OCTOBER)
            ).one()
        return (found.amount, found.version)

    assert late_line() == (50, 1)
    CatalogPrices(database, NEW, clock).apply()
    assert late_line() == (50, 1)


def test_a_period_that_enters_review_during_the_apply_keeps_its_prices_and_support_is_told(
    billsync: Billsync, database: Database, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    billsync.ingest.ingest([event(a, CPU, 1000, at=T0) for a in ("acme", "beta", "gamma")])
    CatalogPrices(database, OLD, clock).apply()
    monkeypatch.setattr(catalog_prices, "RE_RATE_ACCOUNTS_PER_TRANSACTION", 1)
    prices = CatalogPrices(database, NEW, clock)
    page = prices._re_rate_page
    pages: list[object] = []

    def then_beta_enters_review(*args: Any) -> object:
        if not pages:  # after acme's page, the lifecycle moves on
            with database.transaction() as connection:
                ledger.set_period_status(
                    connection, "beta", NOVEMBER, PeriodStatus.REVIEW, clock.now()
                )
        pages.append(1)
        return page(*args)

    monkeypatch.setattr(prices, "_re_rate_page", then_beta_enters_review)
    applied = prices.apply()
    assert applied.kept == [("beta", NOVEMBER)]
    amounts = cpu_amounts(billsync)
    assert [amounts[(a, NOVEMBER)][0] for a in ("acme", "beta", "gamma")] == [300, 100, 300]
    with database.read() as connection:
        found = problem_repository.open_problems(connection, "beta")
    assert [p.kind for p in found] == [catalog_prices.PRICES_KEPT]
    assert "was review when the catalog new.toml was applied" in found[0].detail


def test_an_applier_overtaken_by_another_catalog_stops(
    billsync: Billsync, database: Database, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    billsync.ingest.ingest([event(a, CPU, 1000, at=T0) for a in ("acme", "beta", "gamma")])
    CatalogPrices(database, OLD, clock).apply()
    monkeypatch.setattr(catalog_prices, "RE_RATE_ACCOUNTS_PER_TRANSACTION", 1)
    newer = parse_catalog(
        document([{"effective_from": "2026-11-01", "price": {"usd": "0.004", "eur": "0.0036"}}]),
        "newer.toml",
    )
    slow = CatalogPrices(database, NEW, clock)
    page = slow._re_rate_page
    overtaken: list[object] = []

    def overtaken_after_one_page(*args: Any) -> object:
        found = page(*args)
        if not overtaken:
            overtaken.append(CatalogPrices(database, newer, clock).apply())
        return found

    monkeypatch.setattr(slow, "_re_rate_page", overtaken_after_one_page)
    assert slow.apply().superseded
    # Every line at the newer price: the first page's at the slow applier's was re-rated by
    # the newer one (it re-prices from the pricing before too), none put back after it.
    assert {amount for amount, _ in cpu_amounts(billsync).values()} == {400}
    assert CatalogPrices(database, newer, clock).plan().kind == "unchanged"


def test_two_interrupted_changes_are_both_caught_up_by_the_next(
    billsync: Billsync, database: Database, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OLD → NEW interrupted before any line, then → STORAGE (a new storage price) interrupted
    too: applying STORAGE again finishes both, though NEW and STORAGE price CPU alike."""
    billsync.ingest.ingest([event("acme", CPU, 1000, at=T0), event("acme", GB, "10", at=T0)])
    CatalogPrices(database, OLD, clock).apply()
    storage = parse_catalog(
        {
            **document(
                [{"effective_from": "2026-11-01", "price": {"usd": "0.003", "eur": "0.0027"}}]
            ),
            "metric": [
                document(
                    [{"effective_from": "2026-11-01", "price": {"usd": "0.003", "eur": "0.0027"}}]
                )["metric"][0],
                {"id": GB, "unit": "GB", "decimals": 3, "price": {"usd": "0.2", "eur": "0.18"}},
            ],
        },
        "storage.toml",
    )

    def stopped(*_args: object) -> None:
        raise SystemExit("the applier was stopped")

    with monkeypatch.context() as patch:
        patch.setattr(catalog_prices.CatalogPrices, "_re_rate_page", stopped)
        for catalog in (NEW, storage):  # each recorded, then stopped before its first page
            with pytest.raises(SystemExit):
                CatalogPrices(database, catalog, clock).apply()
    assert cpu_amounts(billsync)[("acme", NOVEMBER)] == (100, 1)
    assert CatalogPrices(database, storage, clock).plan().kind == "resume"
    CatalogPrices(database, storage, clock).apply()
    assert cpu_amounts(billsync)[("acme", NOVEMBER)] == (300, 2)
    assert Verifier(database, None, catalog=storage).verify().violations == []


def test_a_pricing_is_recorded_only_between_ledger_writes(
    billsync: Billsync, database: Database, clock: ManualClock
) -> None:
    """PostgreSQL: a batch in flight holds the appliers' lock shared; the new pricing waits
    for its commit, so the batch cannot rate with the prices replaced after they were."""
    if database.is_sqlite:
        pytest.skip("SQLite has one writer: the applier's transaction waits for the batch's")
    CatalogPrices(database, OLD, clock).apply()
    done: list[object] = []
    with database.transaction() as connection:
        billsync.ingest.pricing.check(connection, [(CPU, "usd", NOVEMBER)])
        holder = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        applier = threading.Thread(
            target=lambda: done.append(CatalogPrices(database, NEW, clock).apply())
        )
        applier.start()
        wait_until(lambda: blocked_by(database, holder), "the applier waits for the batch")
        assert not done
    applier.join()
    assert len(done) == 1


def test_billsync_catalog_apply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BILLSYNC_DATABASE_URL", "BILLSYNC_STRIPE_API_KEY", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BILLSYNC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "250")
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(
        '[catalog]\ncurrencies = ["usd"]\n\n[[metric]]\nid = "api.calls"\nunit = "call"\n'
        'price = { usd = "0.001" }\n'
    )
    monkeypatch.setenv("BILLSYNC_CATALOG", str(catalog))
    runner = CliRunner()
    first = runner.invoke(cli, ["catalog", "apply"])
    assert first.exit_code == 0, first.output
    assert "no catalog applied yet" in " ".join(first.stdout.split())
    catalog.write_text(
        catalog.read_text()
        + '\n[[metric.price_versions]]\neffective_from = "2030-01-01"\nprice = { usd = "0.002" }\n'
    )
    dry = runner.invoke(cli, ["catalog", "apply", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "api.calls in USD, periods starting from 2030-01-01" in " ".join(dry.stdout.split())
    applied = runner.invoke(cli, ["catalog", "apply"])
    assert applied.exit_code == 0, applied.output
    assert "0 line(s) of 0 account(s) re-rated" in " ".join(applied.stdout.split())
    again = runner.invoke(cli, ["catalog", "apply"])
    assert "its prices are the ones applied" in " ".join(again.stdout.split())
    # A change a dry run already knows would be refused says so, and changes nothing.
    billsync = build(Settings())
    create_account(billsync, "acme")
    with billsync.database.transaction() as connection:
        ledger.insert_periods(connection, [("acme", Period(OCTOBER, NOVEMBER))], T0)
        ledger.set_period_status(connection, "acme", OCTOBER, PeriodStatus.FINALIZED, T0)
    billsync.close()
    catalog.write_text(catalog.read_text().replace('"2030-01-01"', '"2026-10-01"'))
    for args in (["--dry-run"], []):
        refused = runner.invoke(cli, ["catalog", "apply", *args])
        assert refused.exit_code == 1, refused.output
        assert "1 finalized period(s) of USD accounts starting 2026-10-01" in " ".join(
            refused.stderr.split()
        )
