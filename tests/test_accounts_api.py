"""``GET /v1/accounts`` (keyset pages, filters) and ``PATCH /v1/accounts/{id}`` (name, email,
sync policy, anchor day for future periods), on each store."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from billsync.bootstrap import Billsync
from billsync.clock import ManualClock
from billsync.core.periods import PeriodStatus
from billsync.db.tables import audit_log, billing_periods
from billsync.repositories import ledger
from billsync.repositories import sync as sync_repository
from tests.conftest import T0
from tests.factories import create_account, event


def ids_of(page: dict[str, Any]) -> list[str]:
    return [account["id"] for account in page["data"]]


def periods_of(billsync: Billsync, account: str) -> list[tuple[date, date]]:
    with billsync.database.read() as connection:
        rows = connection.execute(
            select(billing_periods.c.start, billing_periods.c.end)
            .where(billing_periods.c.account_id == account)
            .order_by(billing_periods.c.start)
        )
        return [(row.start, row.end) for row in rows]


def ingest(billsync: Billsync, account: str, at: datetime, event_id: str) -> None:
    report = billsync.ingest.ingest([event(account, at=at, event_id=event_id)])
    assert report.results[0].status.value == "accepted", report.results[0]


# --- GET /v1/accounts ------------------------------------------------------------------------


def test_pages_follow_the_id_order_with_a_cursor_and_end_with_null(
    billsync: Billsync, client: TestClient
) -> None:
    for account in ("delta", "alpha", "echo", "charlie", "bravo", "golf", "foxtrot"):
        create_account(billsync, account)
    first = client.get("/v1/accounts", params={"limit": 3}).json()
    assert ids_of(first) == ["alpha", "bravo", "charlie"]
    assert first["next"] == "charlie"
    # An account created before the cursor meanwhile does not shift the next page (keyset, not
    # an offset).
    create_account(billsync, "able")
    second = client.get("/v1/accounts", params={"limit": 3, "cursor": first["next"]}).json()
    assert ids_of(second) == ["delta", "echo", "foxtrot"]
    last = client.get("/v1/accounts", params={"limit": 3, "cursor": second["next"]}).json()
    assert ids_of(last) == ["golf"]
    assert last["next"] is None
    exact = client.get("/v1/accounts", params={"limit": 2, "cursor": "echo"}).json()
    assert ids_of(exact) == ["foxtrot", "golf"]
    assert exact["next"] is None  # the page ended exactly at the last account
    assert ids_of(client.get("/v1/accounts").json())[:2] == ["able", "alpha"]


def test_each_account_shows_its_terms(billsync: Billsync, client: TestClient) -> None:
    create_account(billsync, "acme", name="Acme Inc", email="billing@acme.test")
    (account,) = client.get("/v1/accounts").json()["data"]
    assert account["id"] == "acme"
    assert account["name"] == "Acme Inc"
    assert account["email"] == "billing@acme.test"
    assert account["currency"] == "usd"
    assert account["billing_anchor_day"] == 1
    assert account["billing_anchor_from"] is None
    assert account["sync_policy"] is None
    assert account["stripe_customer_id"] is None


def test_filters_by_name_prefix_exact_email_and_customer(
    billsync: Billsync, client: TestClient
) -> None:
    create_account(billsync, "a1", name="Acme EU", email="eu@acme.test")
    create_account(billsync, "a2", name="Acme US", email="us@acme.test")
    create_account(billsync, "a3", name="acme lowercase", email="eu@acme.test")
    create_account(billsync, "b1", name="Globex 100%_off", email="x@globex.test")
    with billsync.database.transaction() as connection:
        sync_repository.set_customer(connection, "a2", "cus_A2", T0)

    def found(**params: Any) -> list[str]:
        response = client.get("/v1/accounts", params=params)
        assert response.status_code == 200, response.text
        return ids_of(response.json())

    assert found(name="Acme") == ["a1", "a2"]  # a prefix, in exact case
    assert found(name="acme") == ["a3"]
    assert found(name="Acme E") == ["a1"]
    assert found(name="Globex 100%_") == ["b1"]  # % and _ are the name's, not wildcards
    assert found(name="Globex 1%") == []
    assert found(name="cme") == []  # a prefix, not a substring
    assert found(email="eu@acme.test") == ["a1", "a3"]
    assert found(email="eu@acme") == []  # exact
    assert found(customer="cus_A2") == ["a2"]
    assert found(name="Acme", email="eu@acme.test") == ["a1"]  # combined
    assert found(name="Acme", limit=1) == ["a1"]
    assert client.get("/v1/accounts", params={"name": "Acme", "limit": 1}).json()["next"] == "a1"
    assert found(name="Acme", cursor="a1") == ["a2"]


def test_a_bad_limit_or_cursor_is_refused(client: TestClient) -> None:
    for params in ({"limit": 0}, {"limit": 501}, {"limit": "ten"}, {"cursor": "has space"}):
        response = client.get("/v1/accounts", params=params)
        assert response.status_code == 422, (params, response.text)
        assert "error" in response.json()
    assert client.get("/v1/accounts", params={"limit": 500}).status_code == 200


# --- PATCH /v1/accounts/{id} -------------------------------------------------------------------


def audit_entries(billsync: Billsync) -> list[dict[str, Any]]:
    with billsync.database.read() as connection:
        rows = connection.execute(
            select(audit_log).where(audit_log.c.action == "account.update").order_by(audit_log.c.id)
        ).mappings()
        return [dict(row) for row in rows]


def test_patch_changes_only_the_fields_given_and_audits_them(
    billsync: Billsync, client: TestClient
) -> None:
    create_account(billsync, "acme", name="Acme", email="old@acme.test")
    changed = client.patch(
        "/v1/accounts/acme",
        json={"name": "  Acme Inc ", "sync_policy": {"policy": "threshold", "threshold": 5000}},
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert body["name"] == "Acme Inc"
    assert body["email"] == "old@acme.test"  # not given: unchanged
    assert body["sync_policy"] == {"policy": "threshold", "interval_seconds": None,
                                   "threshold": 5000}  # fmt: skip
    assert client.get("/v1/accounts/acme").json() == body
    (entry,) = audit_entries(billsync)
    assert entry["actor"] == "api"
    assert entry["account_id"] == "acme"
    assert entry["detail"] == {
        "name": "Acme Inc", "sync_policy": {"policy": "threshold", "threshold": 5000},
    }  # fmt: skip
    with billsync.database.read() as connection:
        account = sync_repository.get_account(connection, "acme")
    assert account is not None
    assert account.sync_policy == {"policy": "threshold", "threshold": 5000}  # the scheduler's

    cleared = client.patch("/v1/accounts/acme", json={"email": None, "sync_policy": None}).json()
    assert cleared["email"] is None
    assert cleared["sync_policy"] is None
    assert cleared["name"] == "Acme Inc"
    same = client.patch("/v1/accounts/acme", json={"name": "Acme Inc"})
    assert same.status_code == 200
    assert len(audit_entries(billsync)) == 2  # nothing changed: nothing audited


def test_patch_refuses_what_it_cannot_take(billsync: Billsync, client: TestClient) -> None:
    create_account(billsync, "acme")
    for body in (
        {"name": None},
        {"name": "   "},
        {"email": "not an email"},
        {"billing_anchor_day": 29},
        {"billing_anchor_day": None},
        {"billing_anchor_day": True},
        {"sync_policy": {"policy": "hourly"}},
        {"sync_policy": {"threshold": 0}},
        {"sync_policy": {"interval_seconds": None}},
        {"sync_policy": {"interval_seconds": 86_400_000_000_000}},  # once a timedelta overflow
        {"sync_policy": {"threshold": 10**13}},
        {"currency": "eur"},  # not something an account changes
    ):
        response = client.patch("/v1/accounts/acme", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["code"], body
    missing = client.patch("/v1/accounts/ghost", json={"name": "Ghost"})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "account_not_found"
    assert audit_entries(billsync) == []


# --- the anchor day: future periods only -------------------------------------------------------


def test_a_new_anchor_day_leaves_the_current_period_and_starts_on_the_new_day_after_it(
    billsync: Billsync, client: TestClient, clock: ManualClock
) -> None:
    """Anchor 1 → 15 on Nov 15: November keeps Nov 1 – Dec 1, then Dec 1 – Dec 15 (short), then
    Dec 15 – Jan 15. Usage on either side of each boundary lands in the period it belongs to."""
    create_account(billsync, "acme")
    ingest(billsync, "acme", T0, "nov-15")
    changed = client.patch("/v1/accounts/acme", json={"billing_anchor_day": 15}).json()
    assert changed["billing_anchor_day"] == 15
    assert changed["billing_anchor_from"] == "2026-12-01"
    (entry,) = audit_entries(billsync)
    assert entry["detail"] == {"billing_anchor_day": 15, "anchor_applies_from": "2026-12-01"}
    current = client.get("/v1/accounts/acme/lines").json()["period"]
    assert current == {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z"}

    clock.set(datetime(2026, 12, 1, 0, 1, tzinfo=UTC))
    ingest(billsync, "acme", datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC), "nov-30")
    ingest(billsync, "acme", datetime(2026, 12, 1, tzinfo=UTC), "dec-1")
    clock.set(datetime(2026, 12, 15, 0, 1, tzinfo=UTC))
    ingest(billsync, "acme", datetime(2026, 12, 14, 23, 59, tzinfo=UTC), "dec-14")
    ingest(billsync, "acme", datetime(2026, 12, 15, tzinfo=UTC), "dec-15")
    assert periods_of(billsync, "acme") == [
        (date(2026, 11, 1), date(2026, 12, 1)),
        (date(2026, 12, 1), date(2026, 12, 15)),
        (date(2026, 12, 15), date(2027, 1, 15)),
    ]
    lines = client.get("/v1/accounts/acme/lines", params={"period": "2026-12-14"}).json()
    assert lines["period"]["end"] == "2026-12-15T00:00:00Z"
    assert lines["lines"][0]["event_count"] == 2  # Dec 1 and Dec 14
    november = client.get("/v1/accounts/acme/lines", params={"period": "2026-11-30"}).json()
    assert november["lines"][0]["event_count"] == 2  # Nov 15 and Nov 30


def test_late_usage_after_a_change_lands_on_the_short_period_that_follows(
    billsync: Billsync, client: TestClient, clock: ManualClock
) -> None:
    """November is in review when usage for it arrives: it goes to the next period — which,
    after the change, is Dec 1 – Dec 15, created on the spot with those dates."""
    create_account(billsync, "acme")
    ingest(billsync, "acme", T0, "nov-15")
    assert client.patch("/v1/accounts/acme", json={"billing_anchor_day": 15}).status_code == 200
    clock.set(datetime(2026, 12, 1, 3, tzinfo=UTC))
    with billsync.database.transaction() as connection:
        ledger.set_period_status(
            connection, "acme", date(2026, 11, 1), PeriodStatus.REVIEW, clock.now()
        )
    ingest(billsync, "acme", datetime(2026, 11, 30, 22, tzinfo=UTC), "late-nov")
    assert periods_of(billsync, "acme") == [
        (date(2026, 11, 1), date(2026, 12, 1)),
        (date(2026, 12, 1), date(2026, 12, 15)),
    ]
    december = client.get("/v1/accounts/acme/lines", params={"period": "2026-12-02"}).json()
    assert [line["late_from"] for line in december["lines"]] == ["2026-11-01"]


def test_a_change_before_the_last_took_effect_replaces_it(
    billsync: Billsync, client: TestClient
) -> None:
    create_account(billsync, "acme")
    assert client.patch("/v1/accounts/acme", json={"billing_anchor_day": 15}).status_code == 200
    again = client.patch("/v1/accounts/acme", json={"billing_anchor_day": 10}).json()
    assert (again["billing_anchor_day"], again["billing_anchor_from"]) == (10, "2026-12-01")
    back = client.patch("/v1/accounts/acme", json={"billing_anchor_day": 1}).json()
    assert (back["billing_anchor_day"], back["billing_anchor_from"]) == (1, None)
    assert [entry["detail"]["billing_anchor_day"] for entry in audit_entries(billsync)] == [
        15,
        10,
        1,
    ]


def test_a_second_change_keeps_the_periods_of_the_first(
    billsync: Billsync, client: TestClient, clock: ManualClock
) -> None:
    """1 → 15 on Nov 15 (from Dec 1), then 15 → 20 on Dec 5 (from Dec 15): usage late for
    November still lands in Nov 1 – Dec 1, December's short period stays Dec 1 – Dec 15."""
    create_account(billsync, "acme")
    client.patch("/v1/accounts/acme", json={"billing_anchor_day": 15})
    clock.set(datetime(2026, 12, 5, tzinfo=UTC))
    second = client.patch("/v1/accounts/acme", json={"billing_anchor_day": 20}).json()
    assert (second["billing_anchor_day"], second["billing_anchor_from"]) == (20, "2026-12-15")
    ingest(billsync, "acme", datetime(2026, 11, 20, tzinfo=UTC), "nov-20")
    ingest(billsync, "acme", datetime(2026, 12, 4, tzinfo=UTC), "dec-4")
    clock.set(datetime(2026, 12, 21, 1, tzinfo=UTC))
    ingest(billsync, "acme", datetime(2026, 12, 16, tzinfo=UTC), "dec-16")
    ingest(billsync, "acme", datetime(2026, 12, 21, tzinfo=UTC), "dec-21")
    assert periods_of(billsync, "acme") == [
        (date(2026, 11, 1), date(2026, 12, 1)),
        (date(2026, 12, 1), date(2026, 12, 15)),
        (date(2026, 12, 15), date(2026, 12, 20)),
        (date(2026, 12, 20), date(2027, 1, 20)),
    ]


def test_a_period_that_already_began_keeps_its_dates(
    billsync: Billsync, client: TestClient, clock: ManualClock
) -> None:
    """Two minutes before December, usage stamped a minute into December (events may be a
    little ahead of the clock) opened Dec 1 – Jan 1: a change now applies from Jan 1."""
    create_account(billsync, "acme")
    clock.set(datetime(2026, 11, 30, 23, 58, tzinfo=UTC))
    ingest(billsync, "acme", datetime(2026, 12, 1, 0, 1, tzinfo=UTC), "early-dec")
    changed = client.patch("/v1/accounts/acme", json={"billing_anchor_day": 15}).json()
    assert changed["billing_anchor_from"] == "2027-01-01"
    clock.set(datetime(2027, 1, 2, tzinfo=UTC))
    ingest(billsync, "acme", datetime(2027, 1, 1, 12, tzinfo=UTC), "jan-1")
    assert periods_of(billsync, "acme")[-2:] == [
        (date(2026, 12, 1), date(2027, 1, 1)),
        (date(2027, 1, 1), date(2027, 1, 15)),
    ]
