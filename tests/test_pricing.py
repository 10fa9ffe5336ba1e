"""Price versions in the catalog and negotiated rates per account, on SQLite and PostgreSQL: a
period is rated with the prices in effect at its start (late usage with its own period's),
``PUT /v1/accounts/{id}/prices`` re-rates the current period at once and never a period whose
invoice is being made, verify holds every line to the price that applies, and the customer's
page, the lines API and the console say which price applied."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from billsync.api.app import create_app
from billsync.bootstrap import Billsync, build
from billsync.clock import ManualClock
from billsync.config import Settings
from billsync.core.catalog import Catalog, CatalogError, parse_catalog
from billsync.core.periods import PeriodStatus
from billsync.db.database import Database
from billsync.db.tables import audit_log, lines
from billsync.repositories import ledger
from billsync.services import console_views
from billsync.services.verify import Verifier
from tests.conftest import T0 as NOW
from tests.factories import create_account, event

T0 = NOW - timedelta(hours=6)
OCTOBER = date(2026, 10, 1)
NOVEMBER = date(2026, 11, 1)
DECEMBER = date(2026, 12, 1)
CPU = "cpu.seconds"
GB = "storage.gb"


def document(**cpu: Any) -> dict[str, Any]:
    return {
        "catalog": {"currencies": ["usd", "eur"]},
        "metric": [
            {
                "id": CPU,
                "unit": "second",
                "price": {"usd": "0.001", "eur": "0.0009"},
                # From November on, a second costs more.
                "price_versions": [
                    {"effective_from": "2026-11-01", "price": {"usd": "0.002", "eur": "0.0018"}}
                ],
                **cpu,
            },
            {
                "id": GB,
                "unit": "GB",
                "decimals": 3,
                "price": {
                    "usd": {"tiers": [{"up_to": "100", "unit_price": "0"}, {"unit_price": "0.1"}]},
                    "eur": "0.09",
                },
            },
        ],
    }


@pytest.fixture
def catalog() -> Catalog:
    return parse_catalog(document(), "test")


@pytest.fixture
def billsync(
    settings: Settings, database: Database, clock: ManualClock, catalog: Catalog
) -> Billsync:
    built = build(settings, clock=clock, database=database, catalog=catalog)
    create_account(built, "acme")
    return built


def amounts(billsync: Billsync) -> dict[tuple[date, str], tuple[Decimal, int, int]]:
    """(period, key) → (quantity, amount, version)."""
    with billsync.database.read() as connection:
        rows = connection.execute(
            select(
                lines.c.period_start,
                lines.c.line_key,
                lines.c.quantity,
                lines.c.amount,
                lines.c.version,
            )
        ).all()
    return {(r[0], r[1]): (Decimal(r[2]), r[3], r[4]) for r in rows}


def violations(billsync: Billsync, catalog: Catalog) -> list[str]:
    report = Verifier(billsync.database, None, catalog=catalog).verify()
    return [f"{v.kind}: {v.detail}" for v in report.violations]


def set_status(billsync: Billsync, clock: ManualClock, start: date, status: PeriodStatus) -> None:
    with billsync.database.transaction() as connection:
        ledger.set_period_status(connection, "acme", start, status, clock.now())


# --- the catalog's price versions ---------------------------------------------------------


def test_a_metric_has_the_prices_of_the_version_in_effect_at_a_period_start(
    catalog: Catalog,
) -> None:
    cpu = catalog.metrics[CPU]
    assert cpu.prices_on(OCTOBER)["usd"].tiers[0].unit_price == Decimal("0.001")
    assert cpu.prices_on(NOVEMBER)["usd"].tiers[0].unit_price == Decimal("0.002")
    assert cpu.prices_on(DECEMBER)["usd"].tiers[0].unit_price == Decimal("0.002")
    assert (cpu.version_on(OCTOBER), cpu.version_on(DECEMBER)) == (None, NOVEMBER)


@pytest.mark.parametrize(
    ("versions", "problem"),
    [
        ([{"price": {"usd": "1", "eur": "1"}}], "effective_from: required"),
        ([{"effective_from": "soon", "price": {"usd": "1", "eur": "1"}}], "effective_from"),
        ([{"effective_from": "2027-01-01", "price": {"usd": "1"}}], "no price for eur"),
        (
            [
                {"effective_from": "2027-02-01", "price": {"usd": "1", "eur": "1"}},
                {"effective_from": "2027-01-01", "price": {"usd": "2", "eur": "2"}},
            ],
            "must be later than the version before (2027-02-01)",
        ),
        ([{"effective_from": "2027-01-01", "price": {"usd": "-1", "eur": "1"}}], "negative"),
    ],
)
def test_a_wrong_price_version_is_named(versions: list[dict[str, Any]], problem: str) -> None:
    with pytest.raises(CatalogError) as raised:
        parse_catalog(document(price_versions=versions), "test")
    assert any(
        f"metric '{CPU}'.price_versions" in p and problem in p for p in raised.value.problems
    ), raised.value.problems


def test_each_period_is_rated_with_the_version_in_effect_at_its_start(
    billsync: Billsync, clock: ManualClock, catalog: Catalog, client: TestClient
) -> None:
    october = T0 - timedelta(days=31)
    billsync.ingest.ingest([event("acme", CPU, 1000, at=october), event("acme", CPU, 1000, at=T0)])
    set_status(billsync, clock, OCTOBER, PeriodStatus.FINALIZED)
    billsync.ingest.ingest([event("acme", CPU, 500, at=october)])  # late October usage
    found = amounts(billsync)
    assert found[OCTOBER, CPU][1] == 100  # 1,000 s × $0.001
    assert found[NOVEMBER, CPU][1] == 200  # 1,000 s × $0.002: November's version
    # Late October usage on November's invoice, at October's price.
    assert found[NOVEMBER, f"{CPU}[late_from=2026-10-01]"][1] == 50
    assert violations(billsync, catalog) == []
    shown = {
        line["key"]: line["price"] for line in client.get("/v1/accounts/acme/lines").json()["lines"]
    }
    assert shown[CPU] == {
        "source": "catalog",
        "effective_from": "2026-11-01",
        "label": "catalog price from 2026-11-01",
    }
    assert shown[f"{CPU}[late_from=2026-10-01]"]["label"] == "catalog price"
    listed = {m["id"]: m for m in client.get("/v1/catalog").json()["metrics"]}
    assert listed[CPU]["price_versions"] == [
        {
            "effective_from": "2026-11-01",
            "prices": {
                "usd": [{"up_to": None, "unit_price": "0.002"}],
                "eur": [{"up_to": None, "unit_price": "0.0018"}],
            },
        }
    ]


# --- negotiated rates ---------------------------------------------------------------------


def test_negotiated_rates_re_rate_the_current_period_and_rate_what_comes(
    billsync: Billsync, catalog: Catalog, client: TestClient
) -> None:
    billsync.ingest.ingest([event("acme", CPU, 1000, at=T0), event("acme", GB, "150", at=T0)])
    assert amounts(billsync)[NOVEMBER, CPU][1:] == (200, 1)
    answer = client.put(
        "/v1/accounts/acme/prices",
        json={
            "prices": {
                CPU: "0.0015",
                GB: {"tiers": [{"up_to": "50", "unit_price": "0"}, {"unit_price": "0.04"}]},
            },
            "reason": "enterprise agreement",
        },
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["lines_re_rated"] == 2
    assert body["period"]["start"].startswith("2026-11-01")
    by_metric = {item["metric"]: item for item in body["prices"]}
    assert by_metric[CPU]["source"] == "negotiated"
    assert by_metric[CPU]["label"] == "negotiated rate from 2026-11-01"
    assert by_metric[CPU]["tiers"] == [{"up_to": None, "unit_price": "0.0015"}]
    assert [card["effective_from"] for card in body["rate_cards"]] == ["2026-11-01"]
    assert body["rate_cards"][0]["set_by"] == "api"
    found = amounts(billsync)
    assert found[NOVEMBER, CPU][1:] == (150, 2)  # re-rated, a new version for the next sync
    assert found[NOVEMBER, GB][1:] == (400, 2)  # 100 GB past the free 50, at $0.04
    # Usage that arrives afterwards is rated at the negotiated price.
    billsync.ingest.ingest([event("acme", CPU, 1000, at=T0 + timedelta(minutes=1))])
    assert amounts(billsync)[NOVEMBER, CPU][1] == 300
    assert violations(billsync, catalog) == []
    with billsync.database.read() as connection:
        audit = connection.execute(
            select(audit_log).where(audit_log.c.action == "account.prices")
        ).mappings().all()  # fmt: skip
    assert len(audit) == 1
    assert audit[0]["actor"] == "api"
    assert audit[0]["reason"] == "enterprise agreement"
    assert audit[0]["detail"]["lines_re_rated"] == 2
    assert audit[0]["detail"]["prices"][CPU] == {"tiers": [{"up_to": None, "unit_price": "0.0015"}]}
    # GET says the same; the lines say which price applies.
    assert client.get("/v1/accounts/acme/prices").json()["prices"] == body["prices"]
    shown = {line["key"]: line for line in client.get("/v1/accounts/acme/lines").json()["lines"]}
    assert shown[CPU]["price"]["label"] == "negotiated rate from 2026-11-01"
    assert shown[CPU]["unit_price"] == "0.0015"


def test_a_rate_card_from_a_later_period_leaves_the_current_one_alone(
    billsync: Billsync, client: TestClient
) -> None:
    billsync.ingest.ingest([event("acme", CPU, 1000, at=T0)])
    answer = client.put(
        "/v1/accounts/acme/prices", json={"prices": {CPU: "0.0001"}, "effective_from": "2026-12-01"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["lines_re_rated"] == 0
    assert amounts(billsync)[NOVEMBER, CPU][1:] == (200, 1)
    current = {p["metric"]: p for p in client.get("/v1/accounts/acme/prices").json()["prices"]}
    assert current[CPU]["source"] == "catalog"
    december = client.get("/v1/accounts/acme/prices", params={"period": "2026-12-05"}).json()
    assert {p["metric"]: p["source"] for p in december["prices"]} == {
        CPU: "negotiated",
        GB: "catalog",
    }
    # A card from the current period replaces none of the later ones' earlier days, and an
    # empty card returns the account to the catalog from its day on.
    assert client.put("/v1/accounts/acme/prices", json={"prices": {}}).status_code == 200
    cards = client.get("/v1/accounts/acme/prices").json()["rate_cards"]
    assert [(c["effective_from"], c["prices"]) for c in cards] == [("2026-11-01", {})]


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        ({"prices": {"gpu.seconds": "1"}}, 422, "invalid_prices", "no such metric"),
        ({"prices": {CPU: "cheap"}}, 422, "invalid_prices", "'cheap' is not a decimal number"),
        (
            {"prices": {CPU: "0.01"}, "effective_from": "2026-10-01"},
            409, "period_not_open", "from the current period (2026-11-01) on",
        ),
        (
            {"prices": {CPU: "0.01"}, "effective_from": "2026-12-15"},
            409, "not_a_period_start", "2026-12-15 is not",
        ),
        ({"prices": {CPU: "0.01"}, "colour": "blue"}, 422, None, "colour"),
    ],
)  # fmt: skip
def test_a_rate_card_that_cannot_be_set_is_refused_with_a_reason(  # noqa: PLR0917
    billsync: Billsync,
    client: TestClient,
    body: dict[str, Any],
    status: int,
    code: str | None,
    message: str,
) -> None:
    answer = client.put("/v1/accounts/acme/prices", json=body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    if code is not None:
        assert error["code"] == code
    assert message in error["message"] or message in answer.text
    assert client.get("/v1/accounts/acme/prices").json()["rate_cards"] == []
    assert client.put("/v1/accounts/nobody/prices", json={"prices": {}}).status_code == 404


def test_a_period_whose_invoice_is_being_made_is_never_re_rated(
    billsync: Billsync, clock: ManualClock, client: TestClient
) -> None:
    billsync.ingest.ingest([event("acme", CPU, 1000, at=T0)])
    set_status(billsync, clock, NOVEMBER, PeriodStatus.CLOSING)
    answer = client.put("/v1/accounts/acme/prices", json={"prices": {CPU: "0.0001"}})
    assert answer.status_code == 409
    assert "closing" in answer.json()["error"]["message"]
    assert amounts(billsync)[NOVEMBER, CPU][1:] == (200, 1)


def test_verify_holds_lines_to_the_negotiated_rate(
    billsync: Billsync, catalog: Catalog, client: TestClient
) -> None:
    billsync.ingest.ingest([event("acme", CPU, 1000, at=T0)])
    client.put("/v1/accounts/acme/prices", json={"prices": {CPU: "0.0015"}})
    assert violations(billsync, catalog) == []
    with billsync.database.transaction() as connection:
        connection.execute(lines.update().values(amount=200))  # the catalog's price, wrongly
    found = violations(billsync, catalog)
    assert any("line_amount_differs" in v and "rates to 1.50" in v for v in found), found


def test_the_console_and_the_customer_page_say_which_price_applied(
    billsync: Billsync, catalog: Catalog, client: TestClient
) -> None:
    billsync.ingest.ingest([event("acme", CPU, 1000, at=T0), event("acme", GB, "1", at=T0)])
    client.put("/v1/accounts/acme/prices", json={"prices": {GB: "0.2"}})
    with billsync.database.read() as connection:
        view = console_views.account_view(connection, "acme", catalog)
    assert view is not None
    shown = {row.line.key: row.price for row in view.periods[0].lines}
    assert shown == {CPU: "catalog price from 2026-11-01", GB: "negotiated rate from 2026-11-01"}
    token = client.post("/v1/accounts/acme/customer-tokens", json={}).json()["token"]
    with TestClient(create_app(billsync)) as customer:
        page = customer.get(f"/billing/acme?token={token}")
        assert page.status_code == 200, page.text[:300]
        assert "negotiated rate from 2026-11-01" in page.text
        bill = customer.get(
            "/v1/accounts/acme/billing", headers={"Authorization": f"Bearer {token}"}
        ).json()
    prices = {line["key"]: line["price"]["source"] for line in bill["lines"]}
    assert prices == {CPU: "catalog", GB: "negotiated"}
