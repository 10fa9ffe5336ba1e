"""The reconciler against the emulator over HTTP, on SQLite and PostgreSQL: every kind of drift
made through Stripe's API the way a person in the Dashboard would, found, recorded as a
problem, repaired when it is billsync's own line, and left to a person otherwise."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from billsync.bootstrap import Billsync
from billsync.cli.main import app as cli
from billsync.clock import ManualClock
from billsync.core.periods import PeriodStatus
from billsync.db.database import Database
from billsync.errors import Conflict, NotFound
from billsync.repositories import problems as problem_repository
from billsync.repositories import sync as sync_repository
from billsync.repositories.problems import ProblemRecord
from billsync.repositories.sync import SyncLine
from billsync.services.lifecycle import LifecycleService, LifecycleSettings
from billsync.services.reconcile import ACCEPTED, REPAIRED, REPUSHED, DriftItem, Reconciler
from billsync.services.sync import SyncService
from billsync.stripe_gateway import StripeGateway
from tests.conftest import T0, cli_against_emulator
from tests.factories import create_account, event
from tests.stripe_peer import EMULATOR_KEY, RunningEmulator

NOVEMBER = date(2026, 11, 1)
AFTER_GRACE = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
HEADERS = {"Authorization": f"Bearer {EMULATOR_KEY}"}


@dataclass
class World:
    billsync: Billsync
    emulator: RunningEmulator
    sync: SyncService
    lifecycle: LifecycleService
    reconciler: Reconciler

    # --- Stripe, as a person in the Dashboard reaches it -----------------------------------

    def stripe(self, method: str, path: str, data: dict[str, Any] | None = None) -> Any:
        response = httpx.request(
            method, f"{self.emulator.url}{path}", data=data, headers=HEADERS, timeout=10
        )
        response.raise_for_status()
        return response.json()

    def stripe_lines(self, invoice_id: str) -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = self.stripe(
            "GET", f"/v1/invoices/{invoice_id}/lines?limit=100"
        )["data"]
        return lines

    def edit_amount(self, invoice_id: str, line_item_id: str, amount: int) -> None:
        self.stripe(
            "POST",
            f"/v1/invoices/{invoice_id}/update_lines",
            {"lines[0][id]": line_item_id, "lines[0][amount]": str(amount)},
        )

    def add_foreign_line(self, invoice_id: str, amount: int) -> str:
        before = {line["id"] for line in self.stripe_lines(invoice_id)}
        self.stripe(
            "POST",
            f"/v1/invoices/{invoice_id}/add_lines",
            {"lines[0][amount]": str(amount), "lines[0][description]": "Goodwill adjustment"},
        )
        (added,) = {line["id"] for line in self.stripe_lines(invoice_id)} - before
        return str(added)

    def remove(self, invoice_id: str, line_item_id: str) -> None:
        self.stripe(
            "POST",
            f"/v1/invoices/{invoice_id}/remove_lines",
            {"lines[0][id]": line_item_id, "lines[0][behavior]": "delete"},
        )

    # --- the ledger ------------------------------------------------------------------------

    def invoice(self, account: str = "acme") -> str:
        with self.billsync.database.read() as connection:
            period = sync_repository.get_period(connection, account, NOVEMBER)
        assert period is not None
        assert period.stripe_invoice_id is not None
        return period.stripe_invoice_id

    def ledger(self, account: str = "acme") -> dict[str, SyncLine]:
        """The period's lines by region."""
        with self.billsync.database.read() as connection:
            lines = sync_repository.lines_of(connection, account, [NOVEMBER])
        return {line.grouping["region"]: line for line in lines}

    def open_problems(self, account: str = "acme") -> list[ProblemRecord]:
        with self.billsync.database.read() as connection:
            return problem_repository.open_problems(connection, account)

    def problem(self, problem_id: int | None) -> ProblemRecord:
        assert problem_id is not None
        with self.billsync.database.read() as connection:
            found = problem_repository.get(connection, problem_id)
        assert found is not None
        return found

    def egress(self, account: str, region: str, gb: str) -> None:
        self.billsync.ingest.ingest(
            [event(account, "bandwidth.egress.na-eu.gb", gb, at=T0, region=region)]
        )

    def assert_billsync_lines_are_the_ledger(self, account: str = "acme") -> list[dict[str, Any]]:
        """Every ledger line is on the draft once, at the ledger's amount; returns the lines
        that are not billsync's."""
        lines = self.stripe_lines(self.invoice(account))
        mine = [line for line in lines if "billsync_line_id" in line["metadata"]]
        ids = Counter(line["metadata"]["billsync_line_id"] for line in mine)
        assert all(count == 1 for count in ids.values()), f"a line exists twice: {ids}"
        by_id = {line["metadata"]["billsync_line_id"]: line["amount"] for line in mine}
        assert by_id == {str(line.id): line.amount for line in self.ledger(account).values()}
        return [line for line in lines if "billsync_line_id" not in line["metadata"]]


@pytest.fixture
def world(billsync: Billsync, running_emulator: RunningEmulator, clock: ManualClock) -> World:
    gateway = StripeGateway(
        EMULATOR_KEY, api_base=running_emulator.url, timeout=2.0, max_network_retries=0
    )
    sync = SyncService(billsync.database, gateway, billsync.catalog, clock)
    lifecycle = LifecycleService(
        billsync.database, clock, sync,
        LifecycleSettings(grace=timedelta(hours=1), review_window=timedelta(hours=2)),
    )  # fmt: skip
    reconciler = Reconciler(billsync.database, gateway, sync, clock)
    return World(billsync, running_emulator, sync, lifecycle, reconciler)


def synced(world: World, account: str = "acme", regions: tuple[str, ...] = ("iad",)) -> None:
    create_account(world.billsync, account)
    for region in regions:
        world.egress(account, region, "100")
    outcome = world.sync.sync_account(account)
    assert outcome.ok, outcome.error


def drift(world: World) -> dict[str, str]:
    """acme's draft with three billsync lines, then in Stripe: iad's amount edited, a line
    added by hand, cdg's line removed."""
    synced(world, regions=("iad", "cdg", "fra"))
    invoice = world.invoice()
    ledger = world.ledger()
    items = {region: line.stripe_line_item_id or "" for region, line in ledger.items()}
    world.edit_amount(invoice, items["iad"], 12345)
    extra = world.add_foreign_line(invoice, 500)
    world.remove(invoice, items["cdg"])
    return {**items, "extra": extra, "invoice": invoice}


def by_kind(items: list[DriftItem]) -> dict[str, DriftItem]:
    found = {item.kind: item for item in items}
    assert len(found) == len(items), items
    return found


def test_each_kind_of_drift_in_an_open_draft_is_found_and_recorded_once(world: World) -> None:
    ids = drift(world)
    world.egress("acme", "fra", "50")  # the ledger moved on: behind, not drift
    world.egress("acme", "syd", "10")  # never pushed yet: behind, not drift
    ledger = world.ledger()

    report = world.reconciler.reconcile(repair=False)

    found = by_kind(report.items)
    assert set(found) == {"amount_differs", "extra_in_stripe", "removed_in_stripe"}
    edited = found["amount_differs"]
    assert (edited.line_id, edited.stripe_line_item_id) == (ledger["iad"].id, ids["iad"])
    assert (edited.ledger_amount, edited.stripe_amount) == (200, 12345)
    assert edited.repairable
    assert not edited.repaired
    extra = found["extra_in_stripe"]
    assert (extra.line_id, extra.stripe_line_item_id, extra.stripe_amount) == (
        None, ids["extra"], 500,
    )  # fmt: skip
    assert not extra.repairable
    removed = found["removed_in_stripe"]
    assert (removed.line_id, removed.stripe_line_item_id) == (ledger["cdg"].id, ids["cdg"])
    assert not removed.repairable
    assert {item.invoice_id for item in report.items} == {ids["invoice"]}
    assert report.pending_lines == 2
    assert (report.accounts, report.invoices, report.ok) == (1, 1, False)

    problems = {problem.kind: problem for problem in world.open_problems()}
    assert set(problems) == set(found)
    assert problems["amount_differs"].repairable
    assert problems["amount_differs"].stripe_object_id == ids["iad"]
    assert (problems["extra_in_stripe"].stripe_amount, problems["extra_in_stripe"].line_id) == (
        500, None,
    )  # fmt: skip
    assert {item.problem_id for item in report.items} == {p.id for p in problems.values()}

    again = world.reconciler.reconcile(repair=False)
    assert {item.problem_id for item in again.items} == {p.id for p in problems.values()}
    assert len(world.open_problems()) == 3
    assert again.closed == 0
    as_json = json.loads(again.to_json())
    assert as_json["by_kind"] == {"amount_differs": 1, "extra_in_stripe": 1, "removed_in_stripe": 1}
    assert (as_json["drift"], as_json["repairable"], as_json["ok"]) == (3, 1, False)


def test_repair_re_pushes_billsync_lines_and_leaves_the_rest_to_a_person(world: World) -> None:
    ids = drift(world)
    world.egress("acme", "fra", "50")

    report = world.reconciler.reconcile(repair=True)

    found = by_kind(report.items)
    assert found["amount_differs"].repaired
    assert not found["extra_in_stripe"].repaired
    assert not found["removed_in_stripe"].repaired
    assert [item.kind for item in report.unrepaired] == ["extra_in_stripe", "removed_in_stripe"]
    assert not report.errors
    # Stripe shows the ledger for iad (set back) and fra (pushed along); cdg stays removed.
    lines = {line["id"]: line for line in world.stripe_lines(ids["invoice"])}
    ledger = world.ledger()
    assert lines[ids["iad"]]["amount"] == ledger["iad"].amount == 200
    assert lines[ids["fra"]]["amount"] == ledger["fra"].amount == 300
    assert ids["cdg"] not in lines
    assert lines[ids["extra"]]["amount"] == 500
    assert len(lines) == 3
    assert world.problem(found["amount_differs"].problem_id).resolution == REPAIRED
    assert {p.kind for p in world.open_problems()} == {"extra_in_stripe", "removed_in_stripe"}

    again = world.reconciler.reconcile(repair=True)
    assert {item.kind for item in again.items} == {"extra_in_stripe", "removed_in_stripe"}
    assert {item.problem_id for item in again.items} == {
        found["extra_in_stripe"].problem_id, found["removed_in_stripe"].problem_id,
    }  # fmt: skip
    assert again.closed == 0

    world.remove(ids["invoice"], ids["extra"])  # someone fixed it by hand in Stripe
    third = world.reconciler.reconcile(repair=False)
    assert [item.kind for item in third.items] == ["removed_in_stripe"]
    assert third.closed == 1
    closed = world.problem(found["extra_in_stripe"].problem_id)
    assert closed.resolution == "no longer found"


def test_a_line_missing_in_review_is_re_added_inside_the_idempotency_window(
    world: World, clock: ManualClock
) -> None:
    synced(world, regions=("iad",))
    world.egress("acme", "cdg", "100")
    assert world.sync.sync_account("acme").ok  # cdg added alone: its key names only cdg
    clock.set(AFTER_GRACE)
    assert world.lifecycle.advance().review == [("acme", NOVEMBER)]
    ledger = world.ledger()
    world.remove(world.invoice(), ledger["cdg"].stripe_line_item_id or "")
    # What the sync engine's recovery does when it reads the draft and the line is gone.
    with world.billsync.database.transaction() as connection:
        sync_repository.forget_lines(connection, [ledger["cdg"].id])

    found = world.reconciler.reconcile(repair=False)
    assert [(i.kind, i.line_id, i.repairable) for i in found.items] == [
        ("missing_in_stripe", ledger["cdg"].id, True)
    ]
    # Re-sending the first add_lines would be answered from Stripe's idempotency store
    # without adding anything: the repair writes under keys of its own.
    repaired = world.reconciler.reconcile(repair=True)
    assert [(i.kind, i.repaired) for i in repaired.items] == [("missing_in_stripe", True)]
    assert repaired.ok
    assert world.assert_billsync_lines_are_the_ledger() == []
    assert world.open_problems() == []
    later = world.reconciler.reconcile(repair=False)
    assert (later.items, later.closed, later.ok) == ([], 0, True)


def test_a_person_accepts_stripes_version(world: World) -> None:
    ids = drift(world)
    report = world.reconciler.reconcile(repair=False)
    found = by_kind(report.items)
    for kind in ("amount_differs", "extra_in_stripe", "removed_in_stripe"):
        problem_id = found[kind].problem_id
        assert problem_id is not None
        decision = world.reconciler.accept_stripe(problem_id)
        assert decision.resolved
        assert (decision.resolution or "").startswith(ACCEPTED)
        assert (world.problem(problem_id).resolution or "").startswith(ACCEPTED)
    with pytest.raises(Conflict):
        world.reconciler.accept_stripe(found["extra_in_stripe"].problem_id or 0)
    with pytest.raises(NotFound):
        world.reconciler.accept_stripe(999_999)

    again = world.reconciler.reconcile(repair=True)
    assert (again.items, again.accepted, again.ok) == ([], 3, True)
    assert world.open_problems() == []
    lines = {line["id"]: line["amount"] for line in world.stripe_lines(ids["invoice"])}
    assert lines == {ids["iad"]: 12345, ids["fra"]: 200, ids["extra"]: 500}  # as accepted

    world.edit_amount(ids["invoice"], ids["extra"], 600)  # a new change: reported again
    third = world.reconciler.reconcile(repair=False)
    assert [(i.kind, i.stripe_amount) for i in third.items] == [("extra_in_stripe", 600)]
    assert third.items[0].problem_id == found["extra_in_stripe"].problem_id  # reopened
    assert third.accepted == 2


def test_billsyncs_own_lines_cannot_be_accepted_away(world: World, clock: ManualClock) -> None:
    synced(world, regions=("iad", "cdg"))
    clock.set(AFTER_GRACE)
    world.lifecycle.advance()
    ledger = world.ledger()
    world.remove(world.invoice(), ledger["cdg"].stripe_line_item_id or "")
    with world.billsync.database.transaction() as connection:
        sync_repository.forget_lines(connection, [ledger["cdg"].id])
    (missing,) = world.reconciler.reconcile(repair=False).items
    with pytest.raises(Conflict):
        world.reconciler.accept_stripe(missing.problem_id or 0)


def test_a_person_re_pushes_the_ledger(world: World) -> None:
    ids = drift(world)
    report = world.reconciler.reconcile(repair=False)
    for item in report.items:
        decision = world.reconciler.repush_ledger(item.problem_id or 0)
        assert decision.resolved, decision.error
        assert world.problem(item.problem_id).resolution == REPUSHED
    assert world.assert_billsync_lines_are_the_ledger() == []
    invoice = world.stripe("GET", f"/v1/invoices/{ids['invoice']}")
    assert invoice["total"] == sum(line.amount for line in world.ledger().values()) == 600
    after = world.reconciler.reconcile(repair=False)
    assert (after.items, after.ok) == ([], True)
    assert world.open_problems() == []


def test_voided_deleted_and_elsewhere_finalized_invoices_are_surfaced(world: World) -> None:
    synced(world, "acme", ("iad", "cdg"))
    synced(world, "globex", ("iad",))
    acme, globex = world.invoice("acme"), world.invoice("globex")
    world.stripe("POST", f"/v1/invoices/{acme}/finalize")
    world.stripe("DELETE", f"/v1/invoices/{globex}")

    first = world.reconciler.reconcile(repair=True)
    assert sorted((i.account, i.kind, i.invoice_id, i.repaired) for i in first.items) == [
        ("acme", "invoice_finalized_in_stripe", acme, False),
        ("globex", "invoice_deleted", globex, False),
    ]
    finalized_elsewhere = next(i for i in first.items if i.account == "acme")
    with pytest.raises(Conflict):
        world.reconciler.repush_ledger(finalized_elsewhere.problem_id or 0)

    world.stripe("POST", f"/v1/invoices/{acme}/void")
    second = world.reconciler.reconcile(repair=False)
    assert sorted((i.account, i.kind) for i in second.items) == [
        ("acme", "invoice_voided"), ("globex", "invoice_deleted"),
    ]  # fmt: skip
    voided = next(i for i in second.items if i.account == "acme")
    assert voided.fingerprint == f"invoice_voided:{acme}"  # as the webhook processor has it
    assert voided.ledger_amount == 400
    assert world.problem(finalized_elsewhere.problem_id).resolution == "no longer found"

    decision = world.reconciler.repush_ledger(voided.problem_id or 0)  # re-bill on a new draft
    assert decision.resolved, decision.error
    assert world.invoice("acme") != acme
    assert world.assert_billsync_lines_are_the_ledger("acme") == []

    deleted = next(i for i in second.items if i.account == "globex")
    assert world.reconciler.accept_stripe(deleted.problem_id or 0).resolved
    with world.billsync.database.read() as connection:
        period = sync_repository.get_period(connection, "globex", NOVEMBER)
    assert period is not None
    assert (period.status, period.stripe_invoice_id) == (PeriodStatus.FINALIZED, None)
    last = world.reconciler.reconcile(repair=False)
    assert (last.items, last.ok) == ([], True)
    assert world.open_problems("acme") == world.open_problems("globex") == []


def test_a_finalized_invoice_whose_total_differs_is_surfaced(
    world: World, clock: ManualClock
) -> None:
    synced(world, regions=("iad", "cdg"))
    ledger = world.ledger()
    invoice = world.invoice()
    world.edit_amount(invoice, ledger["iad"].stripe_line_item_id or "", 250)  # never reconciled
    clock.set(AFTER_GRACE)
    world.lifecycle.advance()
    assert world.lifecycle.approve_now("acme", NOVEMBER)
    assert world.stripe("GET", f"/v1/invoices/{invoice}")["status"] == "open"

    report = world.reconciler.reconcile(repair=True)
    assert [(i.kind, i.ledger_amount, i.stripe_amount, i.repairable, i.repaired) for i in
            report.items] == [("total_differs", 400, 450, False, False)]  # fmt: skip
    problem_id = report.items[0].problem_id or 0
    with pytest.raises(Conflict):
        world.reconciler.repush_ledger(problem_id)
    assert world.reconciler.accept_stripe(problem_id).resolved
    again = world.reconciler.reconcile(repair=False)
    assert (again.items, again.accepted, again.ok) == ([], 1, True)


def test_an_invoice_that_cannot_be_read_keeps_its_problems_open(world: World) -> None:
    ids = drift(world)
    first = world.reconciler.reconcile(repair=False)
    assert len(first.items) == 3
    world.emulator.control(
        "POST", "faults", {"endpoint": "GET /v1/invoices/*", "kind": "500", "count": 10}
    )
    blind = world.reconciler.reconcile(repair=True)
    assert blind.items == []
    assert [(e.account, e.period_start, e.invoice_id) for e in blind.errors] == [
        ("acme", NOVEMBER, ids["invoice"])
    ]
    assert (blind.closed, blind.ok) == (0, False)
    assert len(world.open_problems()) == 3


def test_the_cli_prints_json_and_exits_1_while_drift_remains(
    world: World, database: Database, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli_against_emulator(monkeypatch, tmp_path, database, world.emulator)
    ids = drift(world)
    world.remove(ids["invoice"], ids["extra"])
    runner = CliRunner()

    found = runner.invoke(cli, ["reconcile", "--json"])
    assert found.exit_code == 1, found.output
    data = json.loads(found.stdout)
    assert data["by_kind"] == {"amount_differs": 1, "removed_in_stripe": 1}
    assert (data["drift"], data["repaired"], data["repairable"], data["ok"]) == (2, 0, 1, False)
    item = next(i for i in data["items"] if i["kind"] == "amount_differs")
    assert (item["account"], item["period_start"], item["invoice_id"]) == (
        "acme", "2026-11-01", ids["invoice"],
    )  # fmt: skip
    assert (item["stripe_line_item_id"], item["ledger_amount"], item["stripe_amount"]) == (
        ids["iad"], 200, 12345,
    )  # fmt: skip

    repaired = runner.invoke(cli, ["reconcile", "--account", "acme", "--repair", "--json"])
    assert repaired.exit_code == 1, repaired.output
    data = json.loads(repaired.stdout)
    assert (data["repaired"], data["unrepaired"]) == (1, 1)
    removed = next(i for i in data["items"] if i["kind"] == "removed_in_stripe")

    table = runner.invoke(cli, ["reconcile"])
    assert table.exit_code == 1, table.output
    assert "removed_in_stripe" in table.stdout
    assert "1 difference(s), 0 repaired, 1 left" in table.stdout

    assert world.reconciler.accept_stripe(removed["problem_id"]).resolved
    clean = runner.invoke(cli, ["reconcile"])
    assert clean.exit_code == 0, clean.output
    assert "0 difference(s)" in clean.stdout
    assert "1 accepted earlier" in clean.stdout

    unknown = runner.invoke(cli, ["reconcile", "--account", "nobody"])
    assert unknown.exit_code == 1
