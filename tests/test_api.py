"""The HTTP API, through a real app on each store: auth, accounts, catalog, lines, and usage
ingest with every way a batch or an event can be wrong."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Table, func, select

from billsync.api.app import create_app
from billsync.bootstrap import Billsync, build
from billsync.clock import ManualClock
from billsync.config import Settings
from billsync.core.catalog import Catalog
from billsync.db.database import Database
from billsync.db.tables import accounts as accounts_table
from billsync.db.tables import usage_events
from tests.conftest import T0, TEST_TOKEN
from tests.factories import create_account, event, rfc3339

MACHINE = "machine.shared-cpu-1x.seconds"
EGRESS = "bandwidth.egress.na-eu.gb"
VOLUME = "volume.gb_hours"
AN_HOUR_AGO = T0 - timedelta(hours=1)
PLAIN_DECIMAL = re.compile(r"^-?\d+(\.\d+)?$")
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|\+00:00)$")
AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}


# --- fixtures and helpers -----------------------------------------------------------------------


class Case(NamedTuple):
    """One input of a table-driven test and what it must produce."""

    value: Any
    expected: str
    id: str


def never_a_server_error(response: httpx.Response) -> None:
    request = response.request
    assert response.status_code < 500, f"{request.method} {request.url} → {response.status_code}"


@pytest.fixture
def client(client: TestClient) -> TestClient:
    """The shared authenticated client, failing any test that gets a 5xx."""
    client.event_hooks["response"].append(never_a_server_error)
    return client


@pytest.fixture
def anonymous(anonymous: TestClient) -> TestClient:
    anonymous.event_hooks["response"].append(never_a_server_error)
    return anonymous


@pytest.fixture
def acme(billsync: Billsync) -> str:
    return create_account(billsync, "acme", "usd").id


@pytest.fixture
def make_client(
    tmp_path: Path, database: Database, clock: ManualClock, example_catalog: Catalog
) -> Iterator[Callable[..., TestClient]]:
    """Builds an app with its own Settings (limits, tokens) over the test's database."""
    with ExitStack() as stack:

        def make(**overrides: Any) -> TestClient:
            options: dict[str, Any] = {"api_token": TEST_TOKEN, **overrides}
            settings = Settings(data_dir=tmp_path / "custom", **options)
            custom = build(settings, clock=clock, database=database, catalog=example_catalog)
            test_client = stack.enter_context(TestClient(create_app(custom), headers=AUTH))
            test_client.event_hooks["response"].append(never_a_server_error)
            return test_client

        yield make


def ingest(client: TestClient, *events: Any) -> dict[str, Any]:
    response = client.post("/v1/usage", json={"events": list(events)})
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    assert len(report["results"]) == len(events)
    return report


def ingest_raw(client: TestClient, body: bytes) -> dict[str, Any]:
    response = client.post("/v1/usage", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    return report


def lines_of(client: TestClient, account: str = "acme", period: str = "current") -> dict[str, Any]:
    response = client.get(f"/v1/accounts/{account}/lines", params={"period": period})
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


def line(view: dict[str, Any], key: str) -> dict[str, Any]:
    found = [item for item in view["lines"] if item["key"] == key]
    assert len(found) == 1, (key, view["lines"])
    result: dict[str, Any] = found[0]
    return result


def error_of(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code, body
    message: str = body["error"]["message"]
    assert message
    return message


def row_count(billsync: Billsync, table: Table) -> int:
    with billsync.database.read() as connection:
        count = connection.execute(select(func.count()).select_from(table)).scalar_one()
    return int(count)


def event_count(billsync: Billsync) -> int:
    """Raw usage events stored in the ledger."""
    return row_count(billsync, usage_events)


def account_count(billsync: Billsync) -> int:
    return row_count(billsync, accounts_table)


def statuses(report: dict[str, Any]) -> list[str]:
    return [result["status"] for result in report["results"]]


# --- authentication -----------------------------------------------------------------------------

V1_ROUTES = [
    ("POST", "/v1/accounts"),
    ("GET", "/v1/accounts"),
    ("GET", "/v1/accounts/{account_id}"),
    ("PATCH", "/v1/accounts/{account_id}"),
    ("GET", "/v1/accounts/{account_id}/lines"),
    ("GET", "/v1/accounts/{account_id}/prices"),
    ("PUT", "/v1/accounts/{account_id}/prices"),
    ("POST", "/v1/accounts/{account_id}/credit-grants"),
    ("GET", "/v1/accounts/{account_id}/credit-grants"),
    ("POST", "/v1/accounts/{account_id}/alerts"),
    ("GET", "/v1/accounts/{account_id}/alerts"),
    ("DELETE", "/v1/accounts/{account_id}/alerts/{alert_id}"),
    ("GET", "/v1/catalog"),
    ("POST", "/v1/usage"),
    ("GET", "/v1/accounts/{account_id}/sync"),
    ("POST", "/v1/accounts/{account_id}/sync"),
    ("GET", "/v1/accounts/{account_id}/billing"),
    ("GET", "/v1/accounts/{account_id}/usage"),
    ("POST", "/v1/accounts/{account_id}/portal"),
    ("POST", "/v1/accounts/{account_id}/customer-tokens"),
]


# Proven by Stripe's signature instead of the API token (tests/test_webhooks.py).
SIGNED_ROUTES = [("POST", "/v1/stripe/webhook")]


def test_route_list_covers_every_v1_route(billsync: Billsync) -> None:
    paths = create_app(billsync).openapi()["paths"]
    found = {
        (method.upper(), path)
        for path, operations in paths.items()
        if path.startswith("/v1")
        for method in operations
    }
    assert found == set(V1_ROUTES) | set(SIGNED_ROUTES)


def request_for(method: str, path: str) -> dict[str, Any]:
    bodies: dict[str, Any] = {
        "/v1/accounts": {"id": "intruder", "currency": "usd"},
        "/v1/usage": {"events": [event("acme", at=AN_HOUR_AGO, event_id="sneaky")]},
    }
    url = path.format(account_id="acme", alert_id=1)
    return {"method": method, "url": url, "json": bodies.get(path)}


BAD_AUTHORIZATIONS = [
    (None, "missing_token"),
    ("Basic dGVzdDp0ZXN0", "missing_token"),
    (TEST_TOKEN, "missing_token"),  # no scheme
    ("Bearer", "missing_token"),
    ("Bearer wrong-token", "invalid_token"),
    (f"Bearer {TEST_TOKEN}x", "invalid_token"),
    (f"Bearer {TEST_TOKEN[:-1]}", "invalid_token"),
]


def test_v1_routes_need_the_token(
    anonymous: TestClient, billsync: Billsync, acme: str, subtests: pytest.Subtests
) -> None:
    for method, path in V1_ROUTES:
        for authorization, code in BAD_AUTHORIZATIONS:
            with subtests.test(f"{method} {path}", authorization=authorization):
                headers = {} if authorization is None else {"Authorization": authorization}
                response = anonymous.request(**request_for(method, path), headers=headers)
                error_of(response, 401, code)
                assert response.headers["WWW-Authenticate"] == "Bearer"
    # Nothing was done on the caller's behalf.
    assert account_count(billsync) == 1
    assert event_count(billsync) == 0


@pytest.mark.parametrize("path", ["/v1/accounts", "/v1/usage"])
def test_auth_is_checked_before_the_body_is_parsed(anonymous: TestClient, path: str) -> None:
    response = anonymous.post(
        path, content=b"{not json", headers={"Content-Type": "application/json"}
    )
    error_of(response, 401, "missing_token")


def test_scheme_is_case_insensitive(anonymous: TestClient) -> None:
    response = anonymous.get("/v1/catalog", headers={"Authorization": f"bearer {TEST_TOKEN}"})
    assert response.status_code == 200


def test_rotated_tokens_are_all_accepted(make_client: Callable[..., TestClient]) -> None:
    custom = make_client(api_token=f"old-token, {TEST_TOKEN}")
    for token in ("old-token", TEST_TOKEN):
        response = custom.get("/v1/catalog", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, token
    response = custom.get("/v1/catalog", headers={"Authorization": "Bearer old-token, "})
    assert response.status_code == 401


def test_healthz_needs_no_token(anonymous: TestClient) -> None:
    assert anonymous.get("/healthz").json() == {"status": "ok"}


# --- accounts -----------------------------------------------------------------------------------


def test_create_account_returns_201_with_its_fields(client: TestClient) -> None:
    body = {
        "id": "acme-01",
        "name": "  Acme Inc  ",
        "email": "billing@acme.example",
        "currency": " USD ",
        "billing_anchor_day": 28,
    }
    response = client.post("/v1/accounts", json=body)
    assert response.status_code == 201, response.text
    assert response.json() == {
        "id": "acme-01",
        "name": "Acme Inc",
        "email": "billing@acme.example",
        "currency": "usd",
        "billing_anchor_day": 28,
        "billing_anchor_from": None,
        "sync_policy": None,
        "stripe_customer_id": None,
        "created_at": "2026-11-15T12:00:00Z",
        "minimum_amount": None,
        "minimum_amount_from": None,
    }
    fetched = client.get("/v1/accounts/acme-01")
    assert fetched.status_code == 200
    assert fetched.json() == response.json()


def test_create_account_defaults(client: TestClient) -> None:
    response = client.post("/v1/accounts", json={"id": "cust:42.a_b-c", "currency": "jpy"})
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["name"] == "cust:42.a_b-c"
    assert created["email"] is None
    assert created["currency"] == "jpy"
    assert created["billing_anchor_day"] == 1  # settings.billing_anchor_day
    assert RFC3339_UTC.match(created["created_at"]), created["created_at"]
    assert client.get("/v1/accounts/cust:42.a_b-c").json() == created


def test_create_account_twice_is_a_conflict(client: TestClient, billsync: Billsync) -> None:
    first = client.post("/v1/accounts", json={"id": "acme", "currency": "usd", "name": "First"})
    assert first.status_code == 201
    again = client.post("/v1/accounts", json={"id": "acme", "currency": "eur", "name": "Second"})
    message = error_of(again, 409, "account_exists")
    assert "acme" in message
    assert client.get("/v1/accounts/acme").json() == first.json()
    assert account_count(billsync) == 1


ACCOUNT_REFUSALS = [
    Case({"id": "a1", "currency": "gbp"}, "currency_not_supported", id="gbp"),
    Case({"id": "a1", "currency": "kwd"}, "invalid_currency", id="three-decimal"),
    Case({"id": "a1", "currency": "us"}, "invalid_currency", id="two-letters"),
    Case({"id": "a1", "currency": "usdd"}, "invalid_currency", id="four-letters"),
    Case({"id": "a1", "currency": "u5d"}, "invalid_currency", id="digit"),
    Case({"id": "a1", "currency": ""}, "invalid_currency", id="empty"),
    Case({"id": "a1", "currency": "ü$d"}, "invalid_currency", id="non-ascii"),
    Case({"id": "a1", "currency": 840}, "invalid_request", id="number"),
    Case({"id": "a1"}, "invalid_request", id="currency-missing"),
    Case({"id": "has space", "currency": "usd"}, "invalid_account_id", id="id-space"),
    Case({"id": "-dash", "currency": "usd"}, "invalid_account_id", id="id-dash"),
    Case({"id": "a/b", "currency": "usd"}, "invalid_account_id", id="id-slash"),
    Case({"id": "acmé", "currency": "usd"}, "invalid_account_id", id="id-accent"),
    Case({"id": "acme\n", "currency": "usd"}, "invalid_account_id", id="id-newline"),
    Case({"id": "", "currency": "usd"}, "invalid_request", id="id-empty"),
    Case({"id": "a" * 256, "currency": "usd"}, "invalid_request", id="id-too-long"),
    Case({"id": 42, "currency": "usd"}, "invalid_request", id="id-number"),
    Case({"currency": "usd"}, "invalid_request", id="id-missing"),
    Case({"id": "a1", "currency": "usd", "email": "nope"}, "invalid_email", id="email-no-at"),
    Case({"id": "a1", "currency": "usd", "email": "a@"}, "invalid_email", id="email-no-domain"),
    Case({"id": "a1", "currency": "usd", "email": "a b@c.d"}, "invalid_email", id="email-space"),
    Case(
        {"id": "a1", "currency": "usd", "email": "a@b.c\n"},
        "invalid_email",
        id="email-newline",
    ),
    Case(
        {"id": "a1", "currency": "usd", "billing_anchor_day": 29},
        "invalid_request",
        id="anchor-29",
    ),
    Case(
        {"id": "a1", "currency": "usd", "billing_anchor_day": 0},
        "invalid_request",
        id="anchor-0",
    ),
    Case(
        {"id": "a1", "currency": "usd", "billing_anchor_day": "first"},
        "invalid_request",
        id="anchor-text",
    ),
    Case({"id": "a1", "currency": "usd", "name": "   "}, "invalid_name", id="name-blank"),
    Case({"id": "a1", "currency": "usd", "plan": "pro"}, "invalid_request", id="unknown-field"),
]


def test_create_account_refuses_bad_input(
    client: TestClient, billsync: Billsync, subtests: pytest.Subtests
) -> None:
    for case in ACCOUNT_REFUSALS:
        with subtests.test(case.id):
            existing = account_count(billsync)
            error_of(client.post("/v1/accounts", json=case.value), 422, case.expected)
            assert account_count(billsync) == existing


def test_create_account_refuses_bad_bodies(client: TestClient, subtests: pytest.Subtests) -> None:
    for content, status, code in [(b"{", 400, "invalid_json"), (b"[]", 422, "invalid_request")]:
        with subtests.test(content=content):
            response = client.post(
                "/v1/accounts", content=content, headers={"Content-Type": "application/json"}
            )
            error_of(response, status, code)


def test_get_unknown_account_is_404(client: TestClient) -> None:
    message = error_of(client.get("/v1/accounts/ghost"), 404, "account_not_found")
    assert "ghost" in message
    error_of(client.get("/v1/accounts/ghost/lines"), 404, "account_not_found")


# --- catalog ------------------------------------------------------------------------------------


def test_catalog_lists_metrics_with_prices_as_decimal_strings(
    client: TestClient, example_catalog: Catalog
) -> None:
    response = client.get("/v1/catalog")
    assert response.status_code == 200
    body = response.json()
    assert body["currencies"] == ["usd", "eur", "jpy"]
    assert [metric["id"] for metric in body["metrics"]] == list(example_catalog.metrics)
    by_id = {metric["id"]: metric for metric in body["metrics"]}
    assert by_id[MACHINE] == {
        "id": MACHINE,
        "unit": "second",
        "description": "Machine shared-cpu-1x (1 shared vCPU, 256 MB)",
        "decimals": 0,
        "group_by": [],
        "allow_negative": False,
        "prices": {
            "usd": [{"up_to": None, "unit_price": "0.00000075"}],
            "eur": [{"up_to": None, "unit_price": "0.00000069"}],
            "jpy": [{"up_to": None, "unit_price": "0.000113"}],
        },
        "aggregation": "sum",
        "unique_by": None,
        "price_versions": [],
    }
    assert by_id[VOLUME]["prices"]["usd"] == [
        {"up_to": "2190", "unit_price": "0"},
        {"up_to": None, "unit_price": "0.000205479452"},
    ]
    assert by_id[EGRESS]["group_by"] == ["region"]
    assert by_id[EGRESS]["decimals"] == 9
    for metric in body["metrics"]:
        source = example_catalog.metrics[metric["id"]]
        for currency, tiers in metric["prices"].items():
            expected = source.prices[currency].tiers
            assert len(tiers) == len(expected)
            for tier, want in zip(tiers, expected, strict=True):
                assert isinstance(tier["unit_price"], str)
                assert PLAIN_DECIMAL.match(tier["unit_price"]), tier
                assert Decimal(tier["unit_price"]) == want.unit_price
                if tier["up_to"] is not None:
                    assert PLAIN_DECIMAL.match(tier["up_to"]), tier
                    assert Decimal(tier["up_to"]) == want.up_to


# --- lines --------------------------------------------------------------------------------------


def test_lines_of_an_empty_current_period(client: TestClient, acme: str) -> None:
    view = lines_of(client)
    assert view == {
        "account": "acme",
        "period": {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z"},
        "currency": "usd",
        "lines": [],
        "total": 0,
    }


def test_egress_line_amount_and_format(client: TestClient, acme: str) -> None:
    report = ingest(client, event(acme, EGRESS, "1.5", at=AN_HOUR_AGO, region="fra"))
    assert report["accepted"] == 1
    view = lines_of(client)
    assert view["lines"] == [
        {
            "key": "bandwidth.egress.na-eu.gb[region=fra]",
            "metric": EGRESS,
            "description": "Outbound data transfer, North America and Europe",
            "dimensions": {"region": "fra"},
            "late_from": None,
            "quantity": "1.5",
            "unit": "GB",
            "unit_price": "0.02",
            "tiers": None,
            "amount": 3,
            "version": 1,
            "event_count": 1,
            "price": {"source": "catalog", "effective_from": None, "label": "catalog price"},
        }
    ]
    assert view["total"] == 3


def test_lines_amounts_formats_and_total(client: TestClient, acme: str) -> None:
    ingest(
        client,
        event(acme, MACHINE, 400_000, at=AN_HOUR_AGO, machine_id="m-1"),
        event(acme, MACHINE, "600000", at=AN_HOUR_AGO, machine_id="m-2"),  # same line
        event(acme, EGRESS, "0.125", at=AN_HOUR_AGO, region="iad"),
        event(acme, EGRESS, "0.125", at=AN_HOUR_AGO, region="iad"),
        event(acme, EGRESS, "2", at=AN_HOUR_AGO, region="fra"),
        event(acme, VOLUME, "3000", at=AN_HOUR_AGO),
        event(acme, "ip.ipv4.hours", "0.000001", at=AN_HOUR_AGO),
    )
    view = lines_of(client)
    machine = line(view, MACHINE)
    assert machine["quantity"] == "1000000"
    assert machine["unit_price"] == "0.00000075"  # never 7.5E-7
    assert machine["amount"] == 75  # 1,000,000 s × $0.00000075
    assert machine["event_count"] == 2
    assert machine["dimensions"] == {}  # machine_id does not split the line
    # 0.25 GB × $0.02 = 0.5¢: rounded once per line, half up (per event it would be 0 + 0).
    iad = line(view, "bandwidth.egress.na-eu.gb[region=iad]")
    assert (iad["quantity"], iad["amount"], iad["version"]) == ("0.250", 1, 1)
    assert line(view, "bandwidth.egress.na-eu.gb[region=fra]")["amount"] == 4
    volume = line(view, VOLUME)
    # 2,190 free GB-hours, then 810 × $0.000205479452 = $0.16643835612 → 17¢.
    assert volume["amount"] == 17
    assert volume["unit_price"] == "0.000205479452"
    assert volume["tiers"] == [
        {"up_to": "2190", "unit_price": "0"},
        {"up_to": None, "unit_price": "0.000205479452"},
    ]
    ip = line(view, "ip.ipv4.hours")
    assert ip["quantity"] == "0.000001"
    assert ip["amount"] == 0
    for item in view["lines"]:
        assert PLAIN_DECIMAL.match(item["quantity"]), item
        assert PLAIN_DECIMAL.match(item["unit_price"]), item
        assert isinstance(item["amount"], int)
    assert view["total"] == sum(item["amount"] for item in view["lines"]) == 75 + 1 + 4 + 17
    assert [item["key"] for item in view["lines"]] == sorted(item["key"] for item in view["lines"])


def test_volume_below_the_free_tier(client: TestClient, acme: str) -> None:
    ingest(client, event(acme, VOLUME, "100.5", at=AN_HOUR_AGO))
    volume = line(lines_of(client), VOLUME)
    assert (volume["quantity"], volume["unit_price"], volume["amount"]) == ("100.5", "0", 0)


def test_amounts_in_zero_decimal_and_other_currencies(
    client: TestClient, billsync: Billsync
) -> None:
    create_account(billsync, "tokyo", "jpy")
    create_account(billsync, "paris", "eur")
    ingest(
        client,
        event("tokyo", EGRESS, "1.5", at=AN_HOUR_AGO, region="nrt"),
        event("paris", MACHINE, 1_000_000, at=AN_HOUR_AGO),
    )
    tokyo = lines_of(client, "tokyo")
    assert tokyo["currency"] == "jpy"
    assert tokyo["lines"][0]["unit_price"] == "3"
    assert tokyo["total"] == 5  # ¥4.5 rounds half up to ¥5 (jpy has no minor unit)
    paris = lines_of(client, "paris")
    assert paris["currency"] == "eur"
    assert paris["total"] == 69


def test_small_and_exponent_quantities_are_plain_decimals(client: TestClient, acme: str) -> None:
    stamp = rfc3339(AN_HOUR_AGO)
    body = (
        '{"events": ['
        f'{{"id": "tiny", "account": "acme", "metric": "{EGRESS}", "quantity": 1E-7,'
        f' "timestamp": "{stamp}", "dimensions": {{"region": "fra"}}}},'
        f'{{"id": "kilo", "account": "acme", "metric": "{MACHINE}", "quantity": 1e3,'
        f' "timestamp": "{stamp}"}},'
        f'{{"id": "text", "account": "acme", "metric": "{MACHINE}", "quantity": "2E+3",'
        f' "timestamp": "{stamp}"}}'
        "]}"
    )
    assert ingest_raw(client, body.encode())["accepted"] == 3
    view = lines_of(client)
    assert line(view, "bandwidth.egress.na-eu.gb[region=fra]")["quantity"] == "0.0000001"
    assert line(view, MACHINE)["quantity"] == "3000"


@pytest.mark.parametrize("typed", [True, False], ids=["fast-path", "generic-path"])
def test_an_exponent_of_more_than_two_digits_is_refused(
    client: TestClient, billsync: Billsync, acme: str, typed: bool
) -> None:
    """As a JSON number or in text alike: ``0e999999999`` is a zero whose exponent no store or
    formatter should have to write out. The batch is decoded on the fast path when every event
    is well-typed, and generically otherwise: both give the same verdicts."""
    stamp = rfc3339(AN_HOUR_AGO)
    quantities = ["0e999999999", "1e100", "1E-100", "2.5e+123", '"0e999999999"', '"0E-999"']
    events = [
        f'{{"id": "x-{index}", "account": "acme", "metric": "{EGRESS}", "quantity": {quantity},'
        f' "timestamp": "{stamp}", "dimensions": {{"region": "fra"}}}}'
        for index, quantity in enumerate(quantities)
    ]
    if not typed:  # one mistyped event sends the whole batch down the generic path
        events.append('{"id": 7}')
    report = ingest_raw(client, ('{"events": [' + ",".join(events) + "]}").encode())
    codes = [result["error"]["code"] for result in report["results"]]
    assert codes == ["invalid_quantity"] * len(quantities) + ([] if typed else ["invalid_id"])
    assert "two digits" in report["results"][0]["error"]["message"]
    assert event_count(billsync) == 0


def test_json_number_is_stored_exactly(client: TestClient, acme: str) -> None:
    stamp = rfc3339(AN_HOUR_AGO)

    def egress_event(event_id: str, number: str, region: str) -> str:
        return (
            f'{{"id": "{event_id}", "account": "acme", "metric": "{EGRESS}", "quantity": {number},'
            f' "timestamp": "{stamp}", "dimensions": {{"region": "{region}"}}}}'
        )

    single = ingest_raw(client, ('{"events": [' + egress_event("a", "0.1", "one") + "]}").encode())
    assert single["accepted"] == 1
    view = lines_of(client)
    assert line(view, "bandwidth.egress.na-eu.gb[region=one]")["quantity"] == "0.1"
    # 0.1 + 0.2 as binary floats is 0.30000000000000004; here it is 0.3.
    pair = [egress_event("b", "0.1", "two"), egress_event("c", "0.2", "two")]
    assert ingest_raw(client, ('{"events": [' + ",".join(pair) + "]}").encode())["accepted"] == 2
    assert line(lines_of(client), "bandwidth.egress.na-eu.gb[region=two]")["quantity"] == "0.3"


def test_period_selection_by_any_date_inside(client: TestClient, acme: str) -> None:
    october = T0 - timedelta(days=20)  # 2026-10-26
    ingest(
        client,
        event(acme, MACHINE, 10, at=AN_HOUR_AGO),
        event(acme, MACHINE, 20, at=october),
    )
    november = {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z"}
    for period in ("current", "2026-11-01", "2026-11-15", "2026-11-30"):
        view = lines_of(client, period=period)
        assert view["period"] == november, period
        assert [item["quantity"] for item in view["lines"]] == ["10"], period
    for period in ("2026-10-01", "2026-10-26", "2026-10-31"):
        view = lines_of(client, period=period)
        assert view["period"] == {
            "start": "2026-10-01T00:00:00Z",
            "end": "2026-11-01T00:00:00Z",
        }
        assert [item["quantity"] for item in view["lines"]] == ["20"], period
    december = lines_of(client, period="2026-12-01")
    assert december["period"]["start"] == "2026-12-01T00:00:00Z"
    assert december["lines"] == []
    assert december["total"] == 0


def test_period_follows_the_account_anchor_day(client: TestClient, billsync: Billsync) -> None:
    create_account(billsync, "mid", "usd", billing_anchor_day=15)
    ingest(client, event("mid", MACHINE, 5, at=T0 - timedelta(hours=13)))  # 14th, 23:00
    current = lines_of(client, "mid")
    assert current["period"] == {"start": "2026-11-15T00:00:00Z", "end": "2026-12-15T00:00:00Z"}
    assert current["lines"] == []
    previous = lines_of(client, "mid", "2026-11-14")
    assert previous["period"] == {"start": "2026-10-15T00:00:00Z", "end": "2026-11-15T00:00:00Z"}
    assert previous["lines"][0]["quantity"] == "5"


def test_bad_period_is_422(client: TestClient, acme: str, subtests: pytest.Subtests) -> None:
    for period in ["last", "2026-13-01", "2026-02-30", "2026/11/01", "", "current ", "11-2026"]:
        with subtests.test(period=period):
            response = client.get("/v1/accounts/acme/lines", params={"period": period})
            error_of(response, 422, "invalid_period")


def test_period_at_the_edge_of_the_calendar_is_not_a_crash(
    client: TestClient, billsync: Billsync, subtests: pytest.Subtests
) -> None:
    for anchor in (1, 15):
        create_account(billsync, f"edge-{anchor}", "usd", billing_anchor_day=anchor)
        for period in ("9999-12-31", "0001-01-01", "0001-01-14"):
            with subtests.test(anchor=anchor, period=period):
                response = client.get(
                    f"/v1/accounts/edge-{anchor}/lines", params={"period": period}
                )
                assert response.status_code in (200, 422), response.text
                if response.status_code == 422:
                    error_of(response, 422, "invalid_period")


# --- POST /v1/usage: the batch ------------------------------------------------------------------


MALFORMED_BODIES = [
    b"{",
    b"",
    b"events",
    b'{"events": [}',
    b'{"events": []} trailing',
    b"\xff\xfe{}",
    b"{'events': []}",
    b'{"events": [{"id": "a",}]}',
]


def test_malformed_json_is_400(client: TestClient, acme: str, subtests: pytest.Subtests) -> None:
    for content in MALFORMED_BODIES:
        with subtests.test(content=content):
            response = client.post(
                "/v1/usage", content=content, headers={"Content-Type": "application/json"}
            )
            error_of(response, 400, "invalid_json")


def test_nan_literal_in_the_body_is_400(client: TestClient, billsync: Billsync, acme: str) -> None:
    stamp = rfc3339(AN_HOUR_AGO)
    for literal in ("NaN", "Infinity", "-Infinity"):
        body = (
            f'{{"events": [{{"id": "nan", "account": "acme", "metric": "{MACHINE}",'
            f' "quantity": {literal}, "timestamp": "{stamp}"}}]}}'
        )
        response = client.post(
            "/v1/usage", content=body.encode(), headers={"Content-Type": "application/json"}
        )
        error_of(response, 400, "invalid_json")
    assert event_count(billsync) == 0


BAD_BATCH_SHAPES: list[Any] = [
    [],
    "events",
    5,
    None,
    {},
    {"event": []},
    {"events": {}},
    {"events": "e1"},
    {"events": None},
    {"events": 3},
    {"events": [], "dry_run": True},
]


def test_batch_shape_is_422(
    client: TestClient, billsync: Billsync, acme: str, subtests: pytest.Subtests
) -> None:
    for document in BAD_BATCH_SHAPES:
        with subtests.test(document=document):
            response = client.post(
                "/v1/usage",
                content=orjson.dumps(document),
                headers={"Content-Type": "application/json"},
            )
            error_of(response, 422, "invalid_batch")
    assert event_count(billsync) == 0


def test_empty_batch_is_fine(client: TestClient, acme: str) -> None:
    assert ingest(client) == {"accepted": 0, "duplicates": 0, "rejected": 0, "results": []}


def test_batch_over_the_event_limit_is_413(
    make_client: Callable[..., TestClient], billsync: Billsync, acme: str
) -> None:
    small = make_client(max_batch_events=3)
    events = [event(acme, at=AN_HOUR_AGO) for _ in range(4)]
    message = error_of(small.post("/v1/usage", json={"events": events}), 413, "batch_too_large")
    assert "3" in message
    assert event_count(billsync) == 0
    assert ingest(small, *events[:3])["accepted"] == 3


def padded_batch(size: int) -> bytes:
    """A valid one-event batch padded with JSON whitespace to exactly ``size`` bytes."""
    body = orjson.dumps({"events": [event("acme", at=AN_HOUR_AGO, event_id="padded")]})
    assert len(body) < size
    return body[:-1] + b" " * (size - len(body)) + b"}"


def test_body_over_the_byte_limit_is_413(
    make_client: Callable[..., TestClient], billsync: Billsync, acme: str
) -> None:
    small = make_client(max_body_bytes=1024)
    headers = {"Content-Type": "application/json"}
    response = small.post("/v1/usage", content=padded_batch(1025), headers=headers)
    assert response.request.headers["Content-Length"] == "1025"
    error_of(response, 413, "body_too_large")
    assert event_count(billsync) == 0
    at_limit = small.post("/v1/usage", content=padded_batch(1024), headers=headers)
    assert at_limit.status_code == 200, at_limit.text
    assert at_limit.json()["accepted"] == 1


def test_streamed_body_over_the_byte_limit_is_413(
    make_client: Callable[..., TestClient], billsync: Billsync, acme: str
) -> None:
    small = make_client(max_body_bytes=1024)
    body = padded_batch(3000)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 500):
            yield body[start : start + 500]

    response = small.post(
        "/v1/usage", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "Content-Length" not in response.request.headers
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    error_of(response, 413, "body_too_large")
    assert event_count(billsync) == 0


# --- POST /v1/usage: one event at a time --------------------------------------------------------

BASE = event("acme", MACHINE, 60, at=AN_HOUR_AGO, event_id="candidate")


def changed(**fields: Any) -> dict[str, Any]:
    return {**BASE, **fields}


def without(name: str) -> dict[str, Any]:
    return {key: value for key, value in BASE.items() if key != name}


def egress(quantity: Any, **fields: Any) -> dict[str, Any]:
    return changed(
        **{"metric": EGRESS, "quantity": quantity, "dimensions": {"region": "fra"}, **fields}
    )


REJECTIONS = [
    # not an object
    Case(42, "invalid_event", id="event-number"),
    Case("event", "invalid_event", id="event-string"),
    Case(None, "invalid_event", id="event-null"),
    Case([BASE], "invalid_event", id="event-array"),
    Case(True, "invalid_event", id="event-bool"),
    # id
    Case(without("id"), "invalid_id", id="id-missing"),
    Case(changed(id=""), "invalid_id", id="id-empty"),
    Case(changed(id=None), "invalid_id", id="id-null"),
    Case(changed(id=17), "invalid_id", id="id-number"),
    Case(changed(id=" padded "), "invalid_id", id="id-padded"),
    Case(changed(id="tab\tinside"), "invalid_id", id="id-control-char"),
    Case(changed(id="x" * 256), "invalid_id", id="id-too-long"),
    Case(changed(id="a\x00b"), "invalid_id", id="id-nul"),
    Case(changed(id="a\u202eb"), "invalid_id", id="id-bidi-override"),
    Case(changed(id="a\x85b"), "invalid_id", id="id-c1-control"),
    # fields
    Case(changed(unit="s"), "unknown_field", id="unknown-field"),
    Case(changed(Quantity=1), "unknown_field", id="field-wrong-case"),
    # account
    Case(changed(account="ghost"), "unknown_account", id="unknown-account"),
    Case(without("account"), "invalid_account", id="account-missing"),
    Case(changed(account=""), "invalid_account", id="account-empty"),
    Case(changed(account=7), "invalid_account", id="account-number"),
    Case(changed(account="ac\x00me"), "invalid_account", id="account-nul"),
    Case(changed(account="ac\u2066me"), "invalid_account", id="account-bidi-isolate"),
    # metric
    Case(changed(metric="machine.huge.seconds"), "unknown_metric", id="unknown-metric"),
    Case(changed(metric=MACHINE.upper()), "unknown_metric", id="metric-upper-case"),
    Case(without("metric"), "unknown_metric", id="metric-missing"),
    Case(changed(metric=["x"]), "unknown_metric", id="metric-list"),
    Case(changed(metric=MACHINE + "\x00"), "unknown_metric", id="metric-nul"),
    Case(changed(metric="\u202e" + MACHINE), "unknown_metric", id="metric-bidi-override"),
    # quantity
    Case(without("quantity"), "invalid_quantity", id="quantity-missing"),
    Case(changed(quantity=None), "invalid_quantity", id="quantity-null"),
    Case(changed(quantity=True), "invalid_quantity", id="quantity-true"),
    Case(changed(quantity=False), "invalid_quantity", id="quantity-false"),
    Case(changed(quantity=[1]), "invalid_quantity", id="quantity-list"),
    Case(changed(quantity={"value": 1}), "invalid_quantity", id="quantity-object"),
    Case(changed(quantity="sixty"), "invalid_quantity", id="quantity-word"),
    Case(changed(quantity="NaN"), "invalid_quantity", id="quantity-nan-text"),
    Case(changed(quantity="nan"), "invalid_quantity", id="quantity-nan-lower"),
    Case(changed(quantity="Infinity"), "invalid_quantity", id="quantity-infinity"),
    Case(changed(quantity="-Infinity"), "invalid_quantity", id="quantity-neg-inf"),
    Case(changed(quantity="1e400x"), "invalid_quantity", id="quantity-1e400x"),
    Case(changed(quantity=""), "invalid_quantity", id="quantity-empty"),
    Case(changed(quantity=" 60"), "invalid_quantity", id="quantity-space"),
    Case(changed(quantity="0x3c"), "invalid_quantity", id="quantity-hex"),
    Case(changed(quantity="60_000"), "invalid_quantity", id="quantity-underscore"),
    Case(changed(quantity="1,5"), "invalid_quantity", id="quantity-comma"),
    Case(changed(quantity="١٢"), "invalid_quantity", id="quantity-arabic-indic-digits"),
    Case(changed(quantity="１"), "invalid_quantity", id="quantity-fullwidth-digit"),
    Case(changed(quantity="1.٥"), "invalid_quantity", id="quantity-arabic-indic-fraction"),
    Case(changed(quantity="٠"), "invalid_quantity", id="quantity-arabic-indic-zero"),
    Case(changed(quantity="+60"), "invalid_quantity", id="quantity-plus-sign"),
    Case(changed(quantity="60\x00"), "invalid_quantity", id="quantity-nul"),
    Case(changed(quantity="0e999999999"), "invalid_quantity", id="quantity-zero-huge-exponent"),
    Case(changed(quantity="1e100"), "invalid_quantity", id="quantity-three-digit-exponent"),
    Case(changed(quantity="1e٣"), "invalid_quantity", id="quantity-arabic-indic-exponent"),
    # decimals (machine: 0, egress: 9)
    Case(changed(quantity="0.5"), "too_many_decimals", id="decimals-text"),
    Case(changed(quantity=1.5), "too_many_decimals", id="decimals-json-number"),
    Case(changed(quantity="1e-1"), "too_many_decimals", id="decimals-exponent"),
    Case(egress("0.0000000001"), "too_many_decimals", id="decimals-egress-10"),
    Case(
        changed(quantity="1.00000000000000000000000000000001"),
        "too_many_decimals",
        id="decimals-beyond-28-digits",
    ),
    Case(changed(quantity="1." + "0" * 80 + "1"), "invalid_quantity", id="more-than-40-digits"),
    # sign and size
    Case(changed(quantity=-1), "negative_quantity", id="negative"),
    Case(changed(quantity="-0.000000001"), "too_many_decimals", id="negative-tiny"),
    Case(egress("-0.5"), "negative_quantity", id="negative-egress"),
    Case(changed(quantity=10**15 + 1), "quantity_too_large", id="too-large-int"),
    Case(changed(quantity="1e16"), "quantity_too_large", id="too-large-exponent"),
    Case(changed(quantity="1e400"), "invalid_quantity", id="too-large-1e400"),
    Case(changed(quantity="1e999999999"), "invalid_quantity", id="too-large-huge-exponent"),
    Case(changed(quantity=10**30), "quantity_too_large", id="too-large-bigint"),
    # timestamp
    Case(without("timestamp"), "invalid_timestamp", id="timestamp-missing"),
    Case(changed(timestamp=None), "invalid_timestamp", id="timestamp-null"),
    Case(changed(timestamp=1763204400), "invalid_timestamp", id="timestamp-epoch"),
    Case(changed(timestamp="2026-11-15"), "invalid_timestamp", id="timestamp-date"),
    Case(changed(timestamp="2026-11-15T11:00:00"), "invalid_timestamp", id="timestamp-no-offset"),
    Case(
        changed(timestamp="2026-11-15T11:00:00.000000"),
        "invalid_timestamp",
        id="timestamp-no-offset-fraction",
    ),
    Case(changed(timestamp="2026-11-15T25:00:00Z"), "invalid_timestamp", id="timestamp-hour-25"),
    Case(changed(timestamp="2026-02-30T10:00:00Z"), "invalid_timestamp", id="timestamp-feb-30"),
    Case(
        changed(timestamp="15/11/2026 11:00:00+00:00"),
        "invalid_timestamp",
        id="timestamp-local-format",
    ),
    Case(changed(timestamp="yesterday, late"), "invalid_timestamp", id="timestamp-words"),
    Case(
        changed(timestamp="9999-12-31T23:59:59-23:59"),
        "invalid_timestamp|timestamp_in_future",
        id="timestamp-beyond-year-9999-in-utc",
    ),
    Case(
        changed(timestamp="0001-01-01T00:00:00+01:00"),
        "invalid_timestamp|timestamp_too_old",
        id="timestamp-before-year-1-in-utc",
    ),
    Case(
        changed(timestamp=rfc3339(T0 + timedelta(minutes=5, seconds=1))),
        "timestamp_in_future",
        id="future-5min-1s",
    ),
    Case(
        changed(timestamp=rfc3339(T0 + timedelta(days=1))), "timestamp_in_future", id="future-day"
    ),
    Case(changed(timestamp="2026-11-15T12:06:00+00:00"), "timestamp_in_future", id="future-6min"),
    Case(
        changed(timestamp="2026-11-15T13:10:00+01:00"),
        "timestamp_in_future",
        id="future-10min-offset",
    ),
    Case(
        changed(timestamp=rfc3339(T0 - timedelta(days=45, seconds=1))),
        "timestamp_too_old",
        id="older-than-horizon",
    ),
    Case(changed(timestamp="2020-01-01T00:00:00Z"), "timestamp_too_old", id="years-too-old"),
    # dimensions
    Case(changed(dimensions="region=fra"), "invalid_dimensions", id="dims-string"),
    Case(changed(dimensions=["fra"]), "invalid_dimensions", id="dims-list"),
    Case(changed(dimensions=5), "invalid_dimensions", id="dims-number"),
    Case(changed(dimensions={"Region": "fra"}), "invalid_dimensions", id="dims-upper"),
    Case(changed(dimensions={"1st": "fra"}), "invalid_dimensions", id="dims-digit-first"),
    Case(changed(dimensions={"": "fra"}), "invalid_dimensions", id="dims-empty-name"),
    Case(changed(dimensions={"a-b": "fra"}), "invalid_dimensions", id="dims-dash"),
    Case(changed(dimensions={"a" * 41: "x"}), "invalid_dimensions", id="dims-long-name"),
    Case(changed(dimensions={"zone\n": "x"}), "invalid_dimensions", id="dims-newline"),
    Case(changed(dimensions={"zone": 5}), "invalid_dimensions", id="dims-number-value"),
    Case(changed(dimensions={"zone": None}), "invalid_dimensions", id="dims-null-value"),
    Case(changed(dimensions={"zone": True}), "invalid_dimensions", id="dims-bool-value"),
    Case(changed(dimensions={"zone": ["a"]}), "invalid_dimensions", id="dims-list-value"),
    Case(changed(dimensions={"zone": ""}), "invalid_dimensions", id="dims-empty-value"),
    Case(changed(dimensions={"zone": "x" * 201}), "invalid_dimensions", id="dims-long-value"),
    Case(changed(dimensions={"zone": "a\x00b"}), "invalid_dimensions", id="dims-nul-value"),
    Case(changed(dimensions={"zone": "\x00"}), "invalid_dimensions", id="dims-only-nul"),
    Case(changed(dimensions={"zo\x00ne": "a"}), "invalid_dimensions", id="dims-nul-name"),
    Case(changed(dimensions={"zone": "a\tb"}), "invalid_dimensions", id="dims-tab-value"),
    Case(changed(dimensions={"zone": "a\x7fb"}), "invalid_dimensions", id="dims-del-value"),
    Case(changed(dimensions={"zone": "a\x9bb"}), "invalid_dimensions", id="dims-c1-value"),
    Case(changed(dimensions={"zone": "a\u2028b"}), "invalid_dimensions", id="dims-line-separator"),
    Case(changed(dimensions={"zone": "fra\u202e"}), "invalid_dimensions", id="dims-bidi-override"),
    Case(changed(dimensions={"zone": "\u2066fra"}), "invalid_dimensions", id="dims-bidi-isolate"),
    Case(changed(dimensions={"zo\u202ene": "a"}), "invalid_dimensions", id="dims-bidi-name"),
    Case(
        changed(metric=EGRESS, quantity=1, dimensions={"region": "a\x00b"}),
        "invalid_dimensions",
        id="dims-nul-grouped",
    ),
    Case(
        changed(dimensions={f"d{index}": "x" for index in range(17)}),
        "invalid_dimensions",
        id="dims-too-many",
    ),
    Case(changed(metric=EGRESS, quantity=1, dimensions={}), "missing_dimension", id="no-region"),
    Case(changed(metric=EGRESS, quantity=1, dimensions=None), "missing_dimension", id="dims-null"),
    Case(without("dimensions") | {"metric": EGRESS}, "missing_dimension", id="no-dims"),
    Case(
        changed(metric=EGRESS, quantity=1, dimensions={"zone": "fra"}),
        "missing_dimension",
        id="wrong-dimension",
    ),
]


def test_rejected_event_leaves_the_ledger_unchanged(
    client: TestClient, billsync: Billsync, acme: str, subtests: pytest.Subtests
) -> None:
    ingest(client, event(acme, MACHINE, 60, at=AN_HOUR_AGO, event_id="seed"))
    for index, case in enumerate(REJECTIONS):
        raw = case.value
        if isinstance(raw, dict) and raw.get("id") == BASE["id"]:
            raw = {**raw, "id": f"reject-{index}"}  # a wrongly accepted case must not mask others
        with subtests.test(case.id):
            before, stored = lines_of(client), event_count(billsync)

            report = ingest(client, raw)

            assert (report["accepted"], report["duplicates"], report["rejected"]) == (0, 0, 1)
            (result,) = report["results"]
            assert result["status"] == "rejected"
            code = result["error"]["code"]
            assert code in case.expected.split("|"), result
            assert result["error"]["message"]
            if code in ("invalid_event", "invalid_id"):
                assert result["id"] is None
            else:
                assert result["id"] == raw["id"]
            assert lines_of(client) == before
            assert event_count(billsync) == stored


ACCEPTED_EDGES = [
    Case(changed(timestamp=rfc3339(T0 + timedelta(minutes=4))), "", id="future-4min"),
    Case(changed(timestamp=rfc3339(T0 + timedelta(minutes=5))), "", id="future-5min"),
    Case(changed(timestamp="2026-11-15T13:04:00+01:00"), "", id="future-4min-offset"),
    Case(changed(timestamp=rfc3339(T0 - timedelta(days=44))), "", id="old-44-days"),
    Case(changed(timestamp=rfc3339(T0 - timedelta(days=45))), "", id="old-45-days"),
    Case(changed(timestamp="2026-11-15T06:00:00-05:00"), "", id="negative-offset"),
    Case(changed(quantity=10**15), "", id="quantity-10^15"),
    Case(changed(quantity="1000000000000000"), "", id="quantity-10^15-text"),
    Case(changed(quantity="0"), "", id="quantity-zero"),
    Case(changed(quantity="60.000"), "", id="trailing-zeros"),
    Case(changed(dimensions=None), "", id="dims-null"),
    Case(without("dimensions"), "", id="dims-missing"),
    Case(changed(dimensions={f"d{index}": "x" * 200 for index in range(16)}), "", id="dims-16"),
    Case(egress("0.000000001"), "", id="egress-9-decimals"),
    Case(egress(7, dimensions={"region": "fra", "pop": "cdg"}), "", id="egress-extra-dims"),
    Case(changed(id="x" * 255), "", id="id-255"),
    Case(changed(id="ünïcode-ïd ✓"), "", id="id-unicode"),
    Case(egress("1E-9"), "", id="egress-as-python-writes-a-decimal"),
    Case(changed(quantity="6e+01"), "", id="quantity-two-digit-exponent"),
    Case(changed(dimensions={"zone": "São Paulo 🌎"}), "", id="dims-unicode-value"),
    Case(egress(1, dimensions={"region": "عربي"}), "", id="dims-arabic-grouped"),
]


def test_edge_events_are_accepted(
    client: TestClient, billsync: Billsync, acme: str, subtests: pytest.Subtests
) -> None:
    for index, case in enumerate(ACCEPTED_EDGES):
        raw = case.value
        if case.id not in ("id-255", "id-unicode"):
            raw = {**raw, "id": f"edge-{index}"}
        with subtests.test(case.id):
            stored = event_count(billsync)
            report = ingest(client, raw)
            assert statuses(report) == ["accepted"], report
            assert report["results"][0]["id"] == raw["id"]
            assert event_count(billsync) == stored + 1


def test_event_in_the_past_lands_in_its_own_period(client: TestClient, acme: str) -> None:
    ingest(client, changed(timestamp=rfc3339(T0 - timedelta(days=44))))  # 2026-10-02
    assert lines_of(client)["lines"] == []
    october = lines_of(client, period="2026-10-02")
    assert october["lines"][0]["quantity"] == "60"
    assert october["lines"][0]["late_from"] is None


# --- duplicates ---------------------------------------------------------------------------------


def test_exact_duplicate_across_batches_is_a_duplicate(client: TestClient, acme: str) -> None:
    original = event(acme, MACHINE, 60, at=AN_HOUR_AGO, event_id="e-1")
    assert statuses(ingest(client, original)) == ["accepted"]
    before = lines_of(client)
    report = ingest(client, original)
    assert (report["accepted"], report["duplicates"], report["rejected"]) == (0, 1, 0)
    assert report["results"] == [{"id": "e-1", "status": "duplicate", "error": None}]
    assert lines_of(client) == before


def test_duplicate_is_judged_on_value_not_spelling(client: TestClient, acme: str) -> None:
    original = event(acme, EGRESS, "1.5", at=AN_HOUR_AGO, event_id="e-1", region="fra")
    ingest(client, original)
    respelt = {
        **original,
        "quantity": "1.50",
        "timestamp": "2026-11-15T12:00:00+01:00",  # the same instant as 11:00Z
    }
    assert statuses(ingest(client, respelt)) == ["duplicate"]
    view = lines_of(client)
    assert view["lines"][0]["quantity"] == "1.5"
    assert view["lines"][0]["event_count"] == 1


def test_exact_duplicate_within_a_batch_counts_once(client: TestClient, acme: str) -> None:
    original = event(acme, MACHINE, 60, at=AN_HOUR_AGO, event_id="e-1")
    report = ingest(client, original, original, dict(original))
    assert statuses(report) == ["accepted", "duplicate", "duplicate"]
    assert (report["accepted"], report["duplicates"], report["rejected"]) == (1, 2, 0)
    machine = line(lines_of(client), MACHINE)
    assert (machine["quantity"], machine["event_count"]) == ("60", 1)


def test_conflicting_duplicate_within_a_batch_is_rejected(client: TestClient, acme: str) -> None:
    original = event(acme, MACHINE, 60, at=AN_HOUR_AGO, event_id="e-1")
    report = ingest(client, original, {**original, "quantity": 61}, original)
    assert statuses(report) == ["accepted", "rejected", "duplicate"]
    conflict = report["results"][1]
    assert conflict["id"] == "e-1"
    assert conflict["error"]["code"] == "duplicate_conflict"
    assert "e-1" in conflict["error"]["message"]
    machine = line(lines_of(client), MACHINE)
    assert (machine["quantity"], machine["event_count"]) == ("60", 1)


def test_conflicting_duplicate_across_batches_is_rejected(
    client: TestClient, billsync: Billsync, acme: str, subtests: pytest.Subtests
) -> None:
    create_account(billsync, "other", "usd")
    original = event(acme, MACHINE, 60, at=AN_HOUR_AGO, event_id="e-1", machine_id="m-1")
    ingest(client, original)
    before = (lines_of(client), lines_of(client, "other"))
    changes: dict[str, dict[str, Any]] = {
        "quantity": {"quantity": 61},
        "timestamp": {"timestamp": rfc3339(AN_HOUR_AGO + timedelta(seconds=1))},
        "metric": {"metric": "machine.shared-cpu-2x.seconds"},
        "dimensions": {"dimensions": {"machine_id": "m-2"}},
        "no-dimensions": {"dimensions": {}},
        "account": {"account": "other"},
    }
    for name, change in changes.items():
        with subtests.test(name):
            report = ingest(client, {**original, **change})
            assert (report["accepted"], report["duplicates"], report["rejected"]) == (0, 0, 1)
            assert report["results"][0]["error"]["code"] == "duplicate_conflict"
            assert (lines_of(client), lines_of(client, "other")) == before
            assert event_count(billsync) == 1


def test_rejected_id_can_be_sent_again_once_fixed(client: TestClient, acme: str) -> None:
    broken = event(acme, "no.such.metric", 60, at=AN_HOUR_AGO, event_id="e-1")
    assert statuses(ingest(client, broken)) == ["rejected"]
    fixed = {**broken, "metric": MACHINE}
    assert statuses(ingest(client, fixed)) == ["accepted"]


# --- atomicity ----------------------------------------------------------------------------------


def test_mixed_batch_commits_exactly_the_good_events(
    client: TestClient, billsync: Billsync, acme: str
) -> None:
    good_1 = event(acme, MACHINE, 100, at=AN_HOUR_AGO, event_id="good-1")
    good_2 = event(acme, EGRESS, "1.5", at=AN_HOUR_AGO, event_id="good-2", region="fra")
    good_3 = event(acme, MACHINE, 23, at=AN_HOUR_AGO, event_id="good-3")
    batch: list[Any] = [
        good_1,
        event(acme, "no.such.metric", 1, at=AN_HOUR_AGO, event_id="bad-metric"),
        good_2,
        good_1,
        {**good_1, "quantity": 5},
        event("ghost", MACHINE, 1, at=AN_HOUR_AGO, event_id="bad-account"),
        "not an event",
        event(acme, MACHINE, -4, at=AN_HOUR_AGO, event_id="bad-negative"),
        good_3,
    ]
    report = ingest(client, *batch)
    assert (report["accepted"], report["duplicates"], report["rejected"]) == (3, 1, 5)
    assert [(result["id"], result["status"]) for result in report["results"]] == [
        ("good-1", "accepted"),
        ("bad-metric", "rejected"),
        ("good-2", "accepted"),
        ("good-1", "duplicate"),
        ("good-1", "rejected"),
        ("bad-account", "rejected"),
        (None, "rejected"),
        ("bad-negative", "rejected"),
        ("good-3", "accepted"),
    ]
    codes = [result["error"]["code"] if result["error"] else None for result in report["results"]]
    assert codes == [
        None,
        "unknown_metric",
        None,
        None,
        "duplicate_conflict",
        "unknown_account",
        "invalid_event",
        "negative_quantity",
        None,
    ]
    view = lines_of(client)
    assert [(item["key"], item["quantity"], item["event_count"]) for item in view["lines"]] == [
        ("bandwidth.egress.na-eu.gb[region=fra]", "1.5", 1),
        (MACHINE, "123", 2),
    ]
    assert event_count(billsync) == 3


def test_a_failing_batch_commits_nothing(
    billsync: Billsync, acme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TestClient(create_app(billsync), headers=AUTH) as test_client:
        ingest(test_client, event(acme, MACHINE, 60, at=AN_HOUR_AGO, event_id="before"))
        before = lines_of(test_client)

    database = billsync.database
    real_transaction = database.transaction

    @contextmanager
    def failing_transaction() -> Iterator[Connection]:
        """Runs the whole batch, then fails just before the commit."""
        with real_transaction() as connection:
            yield connection
            raise RuntimeError("the disk is full")

    monkeypatch.setattr(database, "transaction", failing_transaction)
    with TestClient(
        create_app(billsync), headers=AUTH, raise_server_exceptions=False
    ) as failing_client:
        response = failing_client.post(
            "/v1/usage",
            json={
                "events": [
                    event(acme, MACHINE, 40, at=AN_HOUR_AGO, event_id="lost"),
                    event(acme, EGRESS, "1", at=AN_HOUR_AGO, event_id="lost-2", region="x"),
                ]
            },
        )
        error_of(response, 500, "internal_error")
    monkeypatch.undo()
    with TestClient(create_app(billsync), headers=AUTH) as test_client:
        assert lines_of(test_client) == before
        assert event_count(billsync) == 1
        # Nothing of the failed batch was kept: its ids are still free.
        report = ingest(test_client, event(acme, MACHINE, 40, at=AN_HOUR_AGO, event_id="lost"))
        assert statuses(report) == ["accepted"]


def test_a_json_boolean_is_not_taken_for_a_number(client: TestClient) -> None:
    """Pydantic's lax mode would read ``true`` as 1: a client sending a boolean where the
    schema says integer gets a 422 naming the field, not a one-second token or day 1."""
    account = client.post(
        "/v1/accounts", json={"id": "acme", "currency": "usd", "billing_anchor_day": True}
    )
    assert account.status_code == 422, account.text
    assert "billing_anchor_day" in account.text
    whole = {"id": "acme", "currency": "usd", "billing_anchor_day": 20.0}  # JSON's integer
    assert client.post("/v1/accounts", json=whole).status_code == 201
    token = client.post("/v1/accounts/acme/customer-tokens", json={"ttl_seconds": True})
    assert token.status_code == 422, token.text
    assert "ttl_seconds" in token.text
    assert client.post("/v1/accounts/acme/customer-tokens", json={"ttl_seconds": 60}).is_success
