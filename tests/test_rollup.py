"""Invoices past Stripe's 250 items: the ledger keeps every line, the Stripe invoice carries the
finest roll-up that fits (core.rollup) — on SQLite and PostgreSQL, against the emulator over
HTTP (which refuses a 251st item as Stripe does)."""

from __future__ import annotations

import csv
import io
import random
from collections import Counter
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from playwright.sync_api import sync_playwright

from billsync.api.app import create_app
from billsync.bootstrap import Billsync, build
from billsync.clock import ManualClock
from billsync.config import Settings
from billsync.core import customer_tokens
from billsync.core.catalog import Catalog, CatalogError, parse_catalog
from billsync.core.rollup import DETAIL, MAX_INVOICE_ITEMS, RollupError, levels_with_last, roll_up
from billsync.db.database import Database
from billsync.repositories import problems as problem_repository
from billsync.repositories import sync as sync_repository
from billsync.services.lifecycle import LifecycleService, LifecycleSettings
from billsync.services.sync import SyncService
from billsync.services.verify import Verifier
from billsync.stripe_gateway import STATEMENT_FIELD, StripeGateway
from tests.conftest import T0
from tests.factories import create_account, event
from tests.served import serve
from tests.stripe_peer import EMULATOR_KEY, RunningEmulator
from tests.test_customer_view import launch, needs_chromium
from tests.waiting import wait_until

NOVEMBER = date(2026, 11, 1)
HEADERS = {"Authorization": f"Bearer {EMULATOR_KEY}"}
CPU = "app.cpu.seconds"
EGRESS = "egress.gb"


def catalog_document(rollup: list[list[str]] | None = None) -> dict[str, Any]:
    return {
        "catalog": {"currencies": ["usd"]},
        "metric": [
            {
                "id": CPU,
                "unit": "second",
                "description": "App CPU",
                "group_by": ["app", "region"],
                "price": {"usd": "0.0001"},
            },
            {
                "id": EGRESS,
                "unit": "GB",
                "description": "Egress",
                "decimals": 3,
                "group_by": ["region"],
                "price": {"usd": "0.02"},
            },
        ],
        "invoice": {"rollup": [["region"], []] if rollup is None else rollup},
    }


# --- the roll-up rule, pure ------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    id: int
    metric: str
    grouping: dict[str, str]
    late_from: date | None
    amount: int
    quantity: Decimal


LINE = st.builds(
    lambda metric, app, region, late, amount: (metric, app, region, late, amount),
    st.sampled_from(["a", "b", "c"]),
    st.integers(0, 30),
    st.integers(0, 6),
    st.sampled_from([None, date(2026, 10, 1)]),
    st.integers(-500, 10_000),
)


def lines_from(raw: list[tuple[str, int, int, date | None, int]]) -> list[Line]:
    unique = {(metric, app, region, late): amount for metric, app, region, late, amount in raw}
    return [
        Line(
            index + 1,
            metric,
            {"app": f"app{app}", "region": f"r{region}"},
            late,
            amount,
            Decimal(amount),
        )
        for index, ((metric, app, region, late), amount) in enumerate(
            sorted(unique.items(), key=str)
        )
    ]


@settings(max_examples=200, deadline=None)
@given(st.lists(LINE, max_size=120), st.integers(1, 60), st.randoms(use_true_random=False))
def test_the_finest_level_that_fits_carries_each_line_once_and_the_same_cents(
    raw: list[tuple[str, int, int, date | None, int]], cap: int, shuffle: random.Random
) -> None:
    lines = lines_from(raw)
    levels = [("region",)]
    try:
        chosen = roll_up(lines, levels, cap=cap)
    except RollupError:
        # Only when even one item per metric and late period is over the cap.
        assert len({(line.metric, line.late_from) for line in lines}) > cap
        return
    assert len(chosen.items) <= cap
    carried = Counter(line_id for item in chosen.items for line_id in item.line_ids)
    assert carried == Counter(line.id for line in lines)  # every line, exactly once
    by_id = {line.id: line for line in lines}
    for item in chosen.items:
        assert item.amount == sum(by_id[i].amount for i in item.line_ids)
        assert {by_id[i].metric for i in item.line_ids} == {item.metric}
        assert {by_id[i].late_from for i in item.line_ids} == {item.late_from}
    assert sum(i.amount for i in chosen.items) == sum(line.amount for line in lines)
    # The finest that fits: every finer level is over the cap.
    finer = [DETAIL, *(", ".join(("metric", *level)) for level in levels_with_last(levels))]
    for name in finer[: finer.index(chosen.level)]:
        count = (
            len(lines)
            if name == DETAIL
            else len(
                {
                    (
                        line.metric,
                        line.late_from,
                        line.grouping["region"] if "region" in name else "",
                    )
                    for line in lines
                }
            )
        )
        assert count > cap, (name, count, cap)
    # Deterministic: the same lines in any order give the same items.
    mixed = list(lines)
    shuffle.shuffle(mixed)
    assert roll_up(mixed, levels, cap=cap) == chosen


def test_a_level_whose_item_is_over_strides_largest_amount_is_not_used() -> None:
    lines = [
        Line(i, CPU, {"app": f"a{i}", "region": "fra"}, None, 60_000_000, Decimal(1))
        for i in range(1, 4)
    ]
    with pytest.raises(RollupError, match="at most 99,999,999"):
        roll_up(lines, [("region",)], cap=2)


def test_the_catalog_checks_its_rollup_levels() -> None:
    parsed = parse_catalog(catalog_document([["app", "region"], ["region"]]), "test")
    assert parsed.rollup == (("app", "region"), ("region",))
    assert parse_catalog(catalog_document([]), "test").rollup == ()
    with pytest.raises(CatalogError, match=r"'zone'.*not a group_by dimension"):
        parse_catalog(catalog_document([["zone"]]), "test")
    with pytest.raises(CatalogError, match="fewer dimensions than the one before"):
        parse_catalog(catalog_document([["region"], ["app", "region"]]), "test")
    document = catalog_document()
    document["invoice"]["rolup"] = []
    with pytest.raises(CatalogError, match="unknown field"):
        parse_catalog(document, "test")


# --- syncing rolled-up invoices ----------------------------------------------------------


@pytest.fixture
def catalog() -> Catalog:
    return parse_catalog(catalog_document(), "test")


@pytest.fixture
def billsync(
    settings: Settings, database: Database, clock: ManualClock, catalog: Catalog
) -> Billsync:
    built = build(settings, clock=clock, database=database, catalog=catalog)
    create_account(built, "acme")
    return built


@pytest.fixture
def gateway(running_emulator: RunningEmulator) -> StripeGateway:
    return StripeGateway(
        EMULATOR_KEY, api_base=running_emulator.url, timeout=2.0, max_network_retries=0
    )


@pytest.fixture
def sync(billsync: Billsync, gateway: StripeGateway) -> SyncService:
    return SyncService(
        billsync.database, gateway, billsync.catalog, billsync.clock,
        statement_url="https://platform.example/billing/{account}?period={period}",
    )  # fmt: skip


def stripe_get(emulator: RunningEmulator, path: str, **params: Any) -> Any:
    response = httpx.get(f"{emulator.url}{path}", params=params, headers=HEADERS, timeout=10)
    response.raise_for_status()
    return response.json()


def stripe_items(emulator: RunningEmulator, invoice_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100} | ({"starting_after": after} if after else {})
        page = stripe_get(emulator, f"/v1/invoices/{invoice_id}/lines", **params)
        found += page["data"]
        if not page["has_more"]:
            return found
        after = page["data"][-1]["id"]


def usage(apps: range, regions: int, seconds: int = 3600) -> list[dict[str, Any]]:
    return [
        event("acme", CPU, seconds, at=T0, app=f"app{app:03d}", region=f"r{region:02d}")
        for app in apps
        for region in range(regions)
    ]


def ingest(billsync: Billsync, events: list[dict[str, Any]]) -> None:
    for start in range(0, len(events), 500):
        report = billsync.ingest.ingest(events[start : start + 500])
        assert report.accepted == len(events[start : start + 500]), report


def invoice_of(billsync: Billsync, start: date = NOVEMBER) -> str:
    with billsync.database.read() as connection:
        period = sync_repository.get_period(connection, "acme", start)
    assert period is not None
    assert period.stripe_invoice_id is not None
    return period.stripe_invoice_id


def assert_carried_once(billsync: Billsync, emulator: RunningEmulator) -> list[dict[str, Any]]:
    """Stripe's invoice carries every ledger line exactly once — as its own item or in one
    roll-up item whose amount is its lines' sum — nothing else, at most 250 items, and totals
    the ledger to the cent."""
    invoice_id = invoice_of(billsync)
    items = stripe_items(emulator, invoice_id)
    assert len(items) <= MAX_INVOICE_ITEMS
    with billsync.database.read() as connection:
        ledger = sync_repository.lines_of(connection, "acme", [NOVEMBER])
    by_item: dict[str, list[int]] = {}
    for line in ledger:
        assert line.stripe_line_item_id is not None, f"line {line.id} is in no item"
        by_item.setdefault(line.stripe_line_item_id, []).append(line.id)
    amounts = {line.id: line.amount for line in ledger}
    assert Counter(item["id"] for item in items) == Counter(set(by_item))  # nothing else
    for item in items:
        members = by_item[item["id"]]
        assert item["amount"] == sum(amounts[i] for i in members)
        if "billsync_rollup" in item["metadata"]:
            assert item["metadata"]["billsync_lines"] == str(len(members))
        else:
            assert [int(item["metadata"]["billsync_line_id"])] == members
    invoice = stripe_get(emulator, f"/v1/invoices/{invoice_id}")
    assert invoice["total"] == sum(amounts.values())
    return items


def test_an_invoice_past_250_lines_is_rolled_up_and_bills_every_line_to_the_cent(
    billsync: Billsync,
    sync: SyncService,
    running_emulator: RunningEmulator,
    clock: ManualClock,
) -> None:
    # 200 lines (20 apps x 10 regions): each its own item, as always.
    ingest(billsync, usage(range(20), 10))
    assert sync.sync_account("acme").ok
    items = assert_carried_once(billsync, running_emulator)
    assert len(items) == 200
    assert all("billsync_line_id" in item["metadata"] for item in items)
    invoice = stripe_get(running_emulator, f"/v1/invoices/{invoice_of(billsync)}")
    assert invoice["custom_fields"] == [
        {
            "name": STATEMENT_FIELD,
            "value": "https://platform.example/billing/acme?period=2026-11-01",
        }
    ]

    # 300 lines: over the cap. One item per region (the catalog's first level), the 200
    # items taken off in two calls, the 10 added in one.
    ingest(billsync, usage(range(20, 30), 10))
    assert [type(op).__name__ for op in sync.plan_account("acme")] == [
        "RemoveLines", "RemoveLines", "AddLines",
    ]  # fmt: skip
    outcome = sync.sync_account("acme")
    assert outcome.ok, outcome.error
    assert outcome.calls == 3
    items = assert_carried_once(billsync, running_emulator)
    assert len(items) == 10
    fra = next(item for item in items if "(region r03)" in item["description"])
    assert fra["description"] == (
        "App CPU (region r03): 108000 second — 30 lines, itemised in the detailed statement"
    )
    assert sync.sync_account("acme").calls == 0  # in step: nothing to write

    # Usage on three of the lines, in two regions: only those two items are rewritten.
    ingest(
        billsync,
        [
            event("acme", CPU, 7200, at=T0, app="app001", region="r01"),
            event("acme", CPU, 60, at=T0, app="app025", region="r01"),
            event("acme", CPU, 7200, at=T0, app="app002", region="r07"),
        ],
    )
    (update,) = sync.plan_account("acme")
    assert type(update).__name__ == "UpdateLines"
    assert len(update.changes) == 2  # type: ignore[union-attr]
    assert sync.sync_account("acme").calls == 1
    assert_carried_once(billsync, running_emulator)

    # The cycle closes: the invoice is finalized and paid at the ledger's total.
    lifecycle = LifecycleService(
        billsync.database, clock, sync,
        LifecycleSettings(grace=timedelta(hours=1), review_window=timedelta(hours=1)),
    )  # fmt: skip
    clock.set(T0.replace(month=12, day=1, hour=0, minute=30))
    lifecycle.advance()
    clock.set(T0.replace(month=12, day=1, hour=1, minute=5))
    lifecycle.advance()
    clock.advance(timedelta(minutes=61))
    assert lifecycle.advance().finalized == [("acme", NOVEMBER)]
    assert_carried_once(billsync, running_emulator)
    invoice = stripe_get(running_emulator, f"/v1/invoices/{invoice_of(billsync)}")
    assert invoice["status"] in {"open", "paid"}
    with billsync.database.read() as connection:
        ledger = sync_repository.lines_of(connection, "acme", [NOVEMBER])
    assert invoice["total"] == sum(line.amount for line in ledger) == 300 * 36 + 72 + 1 + 72
    assert Verifier(billsync.database, sync.gateway).verify().ok


def test_when_the_first_level_is_too_fine_the_invoice_has_one_item_per_metric(
    billsync: Billsync, sync: SyncService, running_emulator: RunningEmulator
) -> None:
    # 260 regions: one item per region is still over the cap.
    events = usage(range(1), 260)
    events += [event("acme", EGRESS, "1.5", at=T0, region="r00")]
    ingest(billsync, events)
    assert sync.sync_account("acme").ok
    items = assert_carried_once(billsync, running_emulator)
    assert sorted(item["description"] for item in items) == [
        "App CPU: 936000 second — 260 lines, itemised in the detailed statement",
        "Egress (region r00): 1.5 GB",
    ]


@pytest.mark.parametrize("kind", ["drop_after_commit", "500"])
def test_a_lost_answer_to_a_rolled_up_write_is_read_back_and_nothing_is_billed_twice(
    billsync: Billsync, running_emulator: RunningEmulator, kind: str
) -> None:
    # No retry inside the client: the lost answer reaches the sync. The timeout is long: the
    # fault is the only failure here (a removal outliving the client is the next test's).
    once = StripeGateway(
        EMULATOR_KEY, api_base=running_emulator.url, timeout=10.0, max_network_retries=0
    )
    sync = SyncService(billsync.database, once, billsync.catalog, billsync.clock)
    ingest(billsync, usage(range(10), 10))
    assert sync.sync_account("acme").ok
    ingest(billsync, usage(range(10, 26), 10))  # 260 lines: rolled up from here
    running_emulator.control(
        "POST",
        "faults",
        {"endpoint": "POST /v1/invoices/{id}/add_lines", "kind": kind, "count": 1},
    )
    outcome = sync.sync_account("acme")
    if not outcome.ok:
        outcome = sync.sync_account("acme")
    assert outcome.ok, outcome.error
    items = assert_carried_once(billsync, running_emulator)
    assert len(items) == 10
    assert sync.sync_account("acme").calls == 0


def test_our_removal_that_lands_after_the_client_gave_up_is_not_taken_for_someone_elses(
    billsync: Billsync, running_emulator: RunningEmulator
) -> None:
    """Rolling up removes the lines' own items. The removal times out, the draft is read back
    while Stripe is still at it (the items are there), and it lands later: the next read finds
    the items gone — by our own hand, so nothing is reported as removed in Stripe and every
    line goes into its roll-up item."""
    fast = StripeGateway(
        EMULATOR_KEY, api_base=running_emulator.url, timeout=0.5, max_network_retries=0
    )
    sync = SyncService(billsync.database, fast, billsync.catalog, billsync.clock)
    ingest(billsync, usage(range(10), 10))
    assert sync.sync_account("acme").ok
    ingest(billsync, usage(range(10, 26), 10))
    running_emulator.control(
        "POST",
        "faults",
        {
            "endpoint": "POST /v1/invoices/{id}/remove_lines",
            "kind": "hang",
            "count": 1,
            "seconds": 2.0,
        },
    )
    # The removal times out; the draft read back still has the items, and the removal sent
    # again is refused while the first is running (the same idempotency key).
    sync.sync_account("acme")
    invoice_id = invoice_of(billsync)
    wait_until(
        lambda: (
            not any(
                "billsync_line_id" in item["metadata"]
                for item in stripe_items(running_emulator, invoice_id)
            )
        )
    )
    outcome = sync.sync_account("acme")
    assert outcome.ok, outcome.error
    with billsync.database.read() as connection:
        assert problem_repository.open_problems(connection, "acme") == []
    items = assert_carried_once(billsync, running_emulator)
    assert len(items) == 10
    assert sync.sync_account("acme").calls == 0


def test_a_worker_dying_after_a_rolled_up_write_leaves_nothing_twice(
    billsync: Billsync,
    sync: SyncService,
    running_emulator: RunningEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ingest(billsync, usage(range(26), 10))

    def die(*_args: object, **_kwargs: object) -> None:
        raise SystemExit("worker killed after Stripe answered")

    with monkeypatch.context() as patch:
        patch.setattr(sync_repository, "confirm_lines", die)
        with pytest.raises(SystemExit):
            sync.sync_account("acme")
    # Stripe has the items, the ledger does not know: the next run reads the draft first.
    outcome = sync.sync_account("acme")
    assert outcome.ok, outcome.error
    assert outcome.recovered is False  # a pending intent: read back before planning
    assert_carried_once(billsync, running_emulator)
    assert sync.sync_account("acme").calls == 0


def test_verify_reads_a_rolled_up_item_as_its_lines_and_finds_it_edited(
    billsync: Billsync, sync: SyncService, running_emulator: RunningEmulator
) -> None:
    ingest(billsync, usage(range(26), 10))
    assert sync.sync_account("acme").ok
    verifier = Verifier(billsync.database, sync.gateway)
    clean = verifier.verify()
    assert clean.ok, clean.to_json()
    items = stripe_items(running_emulator, invoice_of(billsync))
    edited = items[0]
    httpx.post(
        f"{running_emulator.url}/v1/invoices/{invoice_of(billsync)}/update_lines",
        data={"lines[0][id]": edited["id"], "lines[0][amount]": str(edited["amount"] + 1)},
        headers=HEADERS,
    ).raise_for_status()
    report = verifier.verify()
    assert report.by_kind() == {"amount_differs": 1, "total_differs": 1}
    (violation,) = [v for v in report.violations if v.kind == "amount_differs"]
    assert violation.stripe_line_item_id == edited["id"]
    assert "25 more lines (one roll-up item)" in violation.detail
    # The next sync puts the ledger's sum back.
    with billsync.database.transaction() as connection:
        first = min(
            line.id
            for line in sync_repository.lines_of(connection, "acme", [NOVEMBER])
            if line.stripe_line_item_id == edited["id"]
        )
        sync_repository.mark_stripe_holds(connection, first, edited["id"], -1)
    assert sync.sync_account("acme").calls == 1
    assert_carried_once(billsync, running_emulator)
    assert verifier.verify().ok


# --- the customer's statement: the detail beside the roll-up --------------------------------


@needs_chromium
def test_the_page_and_the_statement_show_each_line_beside_its_invoice_item_to_the_same_cents(
    billsync: Billsync,
    sync: SyncService,
    running_emulator: RunningEmulator,
    clock: ManualClock,
) -> None:
    ingest(billsync, usage(range(26), 10))
    ingest(billsync, [event("acme", EGRESS, "2.5", at=T0, region="r00")])
    assert sync.sync_account("acme").ok
    items = assert_carried_once(billsync, running_emulator)
    token = customer_tokens.issue(
        billsync.customer_token_secret, "acme", clock.now(), timedelta(minutes=15)
    )
    with serve(billsync) as url, sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page()
        page.goto(f"{url}/billing/acme?token={token}")
        shown = page.locator("#invoice-items tbody tr")
        assert shown.count() == len(items) == 11  # 10 regions of CPU, the egress line
        assert page.locator("#items-total").inner_text() == page.locator("#total").inner_text()
        assert page.locator("#invoice-items tbody td:nth-child(2)").all_inner_texts() == [
            item["description"] for item in items
        ]
        rows = page.locator("#lines tbody tr")
        assert rows.count() == 261
        placed = page.locator("#lines .invoice-item").all_inner_texts()
        assert len(placed) == 261
        assert Counter(placed)["in item 1"] == 26
        browser.close()
    with TestClient(create_app(billsync)) as browser_client:
        assert browser_client.get("/billing/acme/statement.csv").status_code == 401
        browser_client.get(f"/billing/acme?token={token}")  # the page's cookie
        answer = browser_client.get("/billing/acme/statement.csv", params={"period": "2026-11-01"})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    table = list(csv.DictReader(io.StringIO(answer.text)))
    assert len(table) == 261
    lines_total = sum(Decimal(row["amount"]) for row in table)
    by_item: dict[str, list[Decimal]] = {}
    for row in table:
        by_item.setdefault(row["invoice_item"], []).append(Decimal(row["amount"]))
    item_amounts = {row["invoice_item"]: Decimal(row["invoice_item_amount"]) for row in table}
    assert {k: sum(v) for k, v in by_item.items()} == item_amounts  # each item: its lines
    invoice = stripe_get(running_emulator, f"/v1/invoices/{invoice_of(billsync)}")
    assert lines_total == sum(item_amounts.values()) == Decimal(invoice["total"]) / 100
    assert {row["invoice_item_description"] for row in table} == {
        item["description"] for item in items
    }


def test_a_statement_link_longer_than_a_custom_field_goes_in_the_footer(
    billsync: Billsync, gateway: StripeGateway, running_emulator: RunningEmulator
) -> None:
    template = "https://platform.example/" + "x" * 120 + "/billing/{account}?period={period}"
    sync = SyncService(
        billsync.database, gateway, billsync.catalog, billsync.clock, statement_url=template
    )
    ingest(billsync, usage(range(1), 1))
    assert sync.sync_account("acme").ok
    invoice = stripe_get(running_emulator, f"/v1/invoices/{invoice_of(billsync)}")
    link = template.replace("{account}", "acme").replace("{period}", "2026-11-01")
    assert invoice["custom_fields"] is None
    assert invoice["footer"] == f"{STATEMENT_FIELD}: {link}"
