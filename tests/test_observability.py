"""Operability, through the real app on SQLite and PostgreSQL: ``GET /metrics`` (counters that move
by exactly what happened, backlog gauges that equal the database, Stripe requests counted after a
sync against the emulator, a scrape that survives a database outage), request and sync ids in
the answers and in the JSON log lines, and the log formats themselves."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from billsync.api.app import create_app
from billsync.bootstrap import Billsync, build
from billsync.clock import ManualClock
from billsync.config import Settings
from billsync.core.catalog import Catalog
from billsync.db.database import Database
from billsync.db.tables import account_sync
from billsync.observability.logs import build_handler, resolve_format
from billsync.observability.metrics import serve_metrics
from billsync.repositories import sync as sync_repository
from billsync.repositories import webhooks as webhook_repository
from billsync.stripe_gateway import stripe_endpoint
from billsync.sync.budget import Lane
from tests.chaos.harness import TcpProxy
from tests.conftest import T0, TEST_TOKEN, emulator_settings
from tests.factories import create_account, event
from tests.ports import free_port
from tests.stripe_peer import RunningEmulator
from tests.waiting import wait_until

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient) -> Samples:
    answer = client.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(answer.text)


def parse(exposition: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def deltas(before: Samples, after: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """How each series of ``name`` moved between two scrapes (series that did not move: left
    out)."""
    moved = {
        labels: after_value - before.get((sample_name, labels), 0.0)
        for (sample_name, labels), after_value in after.items()
        if sample_name == name
    }
    return {labels: change for labels, change in moved.items() if change}


@contextmanager
def json_logs(level: int = logging.DEBUG) -> Iterator[list[dict[str, Any]]]:
    """billsync's log records, as the JSON handler prints them, decoded line by line once the
    block ends (each line must be one JSON object)."""
    stream = io.StringIO()
    handler = build_handler("json", stream)
    logger = logging.getLogger("billsync")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    lines: list[dict[str, Any]] = []
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        lines.extend(json.loads(line) for line in stream.getvalue().splitlines())


@pytest.fixture
def api(billsync: Billsync) -> Iterator[TestClient]:
    with TestClient(create_app(billsync), headers=AUTH) as client:
        yield client


@pytest.fixture
def synced(
    tmp_path: Path,
    database: Database,
    clock: ManualClock,
    example_catalog: Catalog,
    running_emulator: RunningEmulator,
) -> Iterator[Billsync]:
    """billsync syncing to the emulator."""
    billsync = build(
        emulator_settings(tmp_path, running_emulator),
        clock=clock,
        database=database,
        catalog=example_catalog,
    )
    yield billsync
    billsync.close()


# --- ingest ---------------------------------------------------------------------------------


def test_ingest_counters_move_by_each_events_result_whichever_way_it_came_in(
    billsync: Billsync, api: TestClient
) -> None:
    create_account(billsync, "acme")
    before = scrape(api)
    first = event("acme", at=T0)
    batch = [first, event("acme", at=T0), event("acme", at=T0), dict(first),
             event("acme", "no.such.metric", at=T0)]  # fmt: skip
    answer = api.post("/v1/usage", json={"events": batch})
    assert answer.status_code == 200, answer.text
    assert (answer.json()["accepted"], answer.json()["duplicates"]) == (3, 1)
    assert answer.json()["rejected"] == 1
    # The way a file (`billsync ingest`) or a stream consumer comes in: the service itself.
    report = billsync.ingest.ingest([dict(first), event("acme", at=T0)])
    assert (report.accepted, report.duplicates, report.rejected) == (1, 1, 0)

    after = scrape(api)
    assert deltas(before, after, "billsync_ingest_events_total") == {
        frozenset({("result", "accepted")}): 4,
        frozenset({("result", "duplicate")}): 2,
        frozenset({("result", "rejected")}): 1,
    }
    assert deltas(before, after, "billsync_ingest_batches_total") == {frozenset(): 2}
    usage = {"method": "POST", "route": "/v1/usage"}
    assert (
        value(after, "billsync_http_requests_total", **usage, status="200")
        - value(before, "billsync_http_requests_total", **usage, status="200")
        == 1
    )
    assert (
        value(after, "billsync_http_request_duration_seconds_count", **usage)
        - value(before, "billsync_http_request_duration_seconds_count", **usage)
        == 1
    )


def test_batches_group_committed_together_still_count_one_each(
    billsync: Billsync, api: TestClient
) -> None:
    create_account(billsync, "acme")
    before = scrape(api)
    bodies = [orjson.dumps({"events": [event("acme", at=T0) for _ in range(50)]})
              for _ in range(6)]  # fmt: skip
    start = threading.Barrier(len(bodies))

    def send(body: bytes) -> None:
        start.wait()
        report = billsync.ingest.ingest_body(body, 5000, billsync.ingest_writer.submit)
        assert report.accepted == 50

    threads = [threading.Thread(target=send, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = scrape(api)
    assert deltas(before, after, "billsync_ingest_batches_total") == {frozenset(): 6}
    assert deltas(before, after, "billsync_ingest_events_total") == {
        frozenset({("result", "accepted")}): 300
    }


# --- the backlog, read from the database ----------------------------------------------------


def test_dirty_lines_and_sync_lag_are_the_databases(
    billsync: Billsync, api: TestClient, clock: ManualClock
) -> None:
    for account in ("acme", "globex"):
        create_account(billsync, account)
    billsync.ingest.ingest([
        event("acme", at=T0),
        event("acme", "bandwidth.egress.na-eu.gb", "3", at=T0, region="iad"),
        event("acme", "bandwidth.egress.na-eu.gb", "4", at=T0, region="cdg"),
        event("globex", "ip.ipv4.hours", "24", at=T0),
    ])  # fmt: skip
    clock.advance(timedelta(seconds=120))
    billsync.ingest.ingest([event("globex", "ip.ipv4.hours", "1", at=T0)])  # a newer change

    samples = scrape(api)
    with billsync.database.read() as connection:
        health = sync_repository.health(connection, clock.now())
        needing_sync = sync_repository.accounts_needing_sync(connection)
    assert health["pending_lines"] == 4
    assert value(samples, "billsync_sync_dirty_lines") == health["pending_lines"]
    assert value(samples, "billsync_sync_dirty_accounts") == len(needing_sync) == 2
    assert value(samples, "billsync_sync_lag_seconds") == health["sync_lag_seconds"] == 120
    assert value(samples, "billsync_database_up") == 1
    clock.advance(timedelta(seconds=30))
    assert value(scrape(api), "billsync_sync_lag_seconds") == 150
    # The due queue: both accounts behind, never synced (no effective interval yet).
    assert value(samples, "billsync_sync_behind_accounts") == 2
    assert value(samples, "billsync_sync_effective_interval_seconds") == 0
    with billsync.database.transaction() as connection:  # as a sync would leave them
        connection.execute(
            account_sync.update()
            .where(account_sync.c.account_id == "acme")
            .values(last_synced_at=clock.now() - timedelta(minutes=40))
        )
        connection.execute(
            account_sync.update()
            .where(account_sync.c.account_id == "globex")
            .values(last_synced_at=clock.now() - timedelta(minutes=5))
        )
    # The least recently synced account behind waited 40 minutes: that is the interval
    # achieved, whatever the configured one.
    assert value(scrape(api), "billsync_sync_effective_interval_seconds") == 40 * 60


def test_webhook_lag_is_the_age_of_the_oldest_unhandled_event(
    billsync: Billsync, api: TestClient, clock: ManualClock
) -> None:
    empty = scrape(api)
    assert value(empty, "billsync_webhook_unhandled_events") == 0
    assert value(empty, "billsync_webhook_lag_seconds") == 0
    with billsync.database.transaction() as connection:
        for event_id in ("evt_old", "evt_new"):
            webhook_repository.store_event(
                connection, event_id=event_id, event_type="invoice.paid",
                created=int(T0.timestamp()), livemode=False, payload={"id": event_id},
                source="webhook", now=clock.now(),
            )  # fmt: skip
            clock.advance(timedelta(seconds=30))
    clock.advance(timedelta(seconds=60))
    samples = scrape(api)
    assert value(samples, "billsync_webhook_unhandled_events") == 2
    assert value(samples, "billsync_webhook_lag_seconds") == 120
    with billsync.database.transaction() as connection:
        webhook_repository.mark_handled(connection, "evt_old", "test", clock.now())
    samples = scrape(api)
    assert value(samples, "billsync_webhook_unhandled_events") == 1
    assert value(samples, "billsync_webhook_lag_seconds") == 90


# --- Stripe -----------------------------------------------------------------------------------


def test_stripe_requests_are_counted_by_endpoint_and_status_after_a_sync(
    synced: Billsync, running_emulator: RunningEmulator
) -> None:
    create_account(synced, "acme")
    egress = event("acme", "bandwidth.egress.na-eu.gb", "3", at=T0, region="iad")
    synced.ingest.ingest([event("acme", at=T0), egress])
    assert synced.sync is not None
    with TestClient(create_app(synced), headers=AUTH) as client:
        before = scrape(client)
        assert value(before, "billsync_sync_dirty_lines") == 2
        outcome = synced.sync.service.sync_account("acme")
        assert outcome.ok, outcome.error
        after = scrape(client)
    requests = deltas(before, after, "billsync_stripe_requests_total")
    assert requests == {
        frozenset({("endpoint", "POST /v1/customers"), ("status", "200")}): 1,
        frozenset({("endpoint", "POST /v1/invoices"), ("status", "200")}): 1,
        frozenset({("endpoint", "POST /v1/invoices/{id}/add_lines"), ("status", "200")}): 1,
    }
    assert sum(requests.values()) == outcome.calls
    timed = deltas(before, after, "billsync_stripe_request_duration_seconds_count")
    assert sum(timed.values()) == outcome.calls
    granted = deltas(before, after, "billsync_stripe_budget_granted_total")
    assert granted == {frozenset({("lane", "interval")}): outcome.calls}
    assert value(after, "billsync_sync_dirty_lines") == 0
    assert value(after, "billsync_sync_lag_seconds") == 0
    assert value(after, "billsync_stripe_circuit_state", state="closed") == 1
    assert value(after, "billsync_sync_queue_depth", lane="interval") == 0

    synced.ingest.ingest([event("acme", "bandwidth.egress.na-eu.gb", "2", at=T0, region="cdg")])
    running_emulator.control(
        "POST", "faults", {"endpoint": "POST /v1/invoices/*", "kind": "429", "count": 1}
    )
    with TestClient(create_app(synced), headers=AUTH) as client:
        before = scrape(client)
        assert not synced.sync.service.sync_account("acme").ok
        after = scrape(client)
    assert deltas(before, after, "billsync_stripe_rate_limited_total") == {frozenset(): 1}
    assert deltas(before, after, "billsync_stripe_requests_total") == {
        frozenset({("endpoint", "POST /v1/invoices/{id}/add_lines"), ("status", "429")}): 1
    }
    assert deltas(before, after, "billsync_stripe_budget_penalties_total") == {frozenset(): 1}


@pytest.mark.unit
@pytest.mark.parametrize(
    ("method", "url", "endpoint"),
    [
        ("post", "http://127.0.0.1:1/v1/invoices/in_1Ab/add_lines",
         "POST /v1/invoices/{id}/add_lines"),
        ("get", "https://api.stripe.com/v1/invoices/in_9?expand[]=lines", "GET /v1/invoices/{id}"),
        ("get", "https://api.stripe.com/v1/invoices/in_9/lines?limit=100",
         "GET /v1/invoices/{id}/lines"),
        ("delete", "https://api.stripe.com/v1/invoices/in_9", "DELETE /v1/invoices/{id}"),
        ("post", "https://api.stripe.com/v1/billing_portal/sessions",
         "POST /v1/billing_portal/sessions"),
        ("get", "https://api.stripe.com/v1/events?created[gte]=1", "GET /v1/events"),
        ("get", "https://api.stripe.com/v1/a/b/c/d/e/f/g/h", "GET /v1/{id}/{id}/{id}/{id}/{id}"),
    ],
)  # fmt: skip
def test_stripe_endpoints_never_carry_ids(method: str, url: str, endpoint: str) -> None:
    assert stripe_endpoint(method, url) == endpoint


def test_syncs_and_their_calls_are_counted_by_lane_and_result(
    synced: Billsync, running_emulator: RunningEmulator
) -> None:
    assert synced.sync is not None
    scheduler = synced.sync.scheduler
    create_account(synced, "acme")
    synced.ingest.ingest([event("acme", at=T0)])
    with TestClient(create_app(synced), headers=AUTH) as client:
        before = scrape(client)
        scheduler.enqueue("acme", Lane.INTERVAL)
        first = scheduler.work_once()
        assert first is not None and first.ok and first.calls == 3  # noqa: PT018
        synced.ingest.ingest([event("acme", quantity=30, at=T0)])
        running_emulator.control(
            "POST", "faults", {"endpoint": "POST /v1/invoices/*", "kind": "429", "count": 1}
        )
        scheduler.enqueue("acme", Lane.ON_DEMAND)
        failed = scheduler.work_once()
        assert failed is not None and not failed.ok  # noqa: PT018
        after = scrape(client)
    assert deltas(before, after, "billsync_syncs_total") == {
        frozenset({("lane", "interval"), ("result", "synced")}): 1,
        frozenset({("lane", "on_demand"), ("result", "failed")}): 1,
    }
    assert deltas(before, after, "billsync_sync_stripe_calls_total") == {
        frozenset({("lane", "interval")}): 3,
        frozenset({("lane", "on_demand")}): failed.calls,
    }


def test_each_scheduler_tick_is_timed_on_metrics_and_on_a_workers_port(
    synced: Billsync,
) -> None:
    """``billsync_scheduler_tick_seconds``: one observation per tick, its time added to the
    sum, on ``/metrics`` and on the port a worker serves (BILLSYNC_METRICS_PORT)."""
    assert synced.sync is not None
    scheduler = synced.sync.scheduler
    create_account(synced, "acme")
    synced.ingest.ingest([event("acme", at=T0)])
    with TestClient(create_app(synced), headers=AUTH) as client:
        before = scrape(client)
        for _ in range(3):
            scheduler.tick()
        after = scrape(client)
    count = "billsync_scheduler_tick_seconds_count"
    assert value(after, count) - value(before, count) == 3
    assert value(after, "billsync_scheduler_tick_seconds_sum") > value(
        before, "billsync_scheduler_tick_seconds_sum"
    )
    server = serve_metrics(synced, 0, host="127.0.0.1")
    assert server is not None
    try:
        served = parse(httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=10).text)
    finally:
        server.close()
    assert value(served, count) == value(after, count)
    scheduler.drain()


def test_budget_and_queue_are_this_processs(synced: Billsync) -> None:
    assert synced.sync is not None
    create_account(synced, "acme")
    synced.sync.scheduler.enqueue("acme", Lane.INTERVAL)
    with TestClient(create_app(synced), headers=AUTH) as client:
        samples = scrape(client)
    assert value(samples, "billsync_sync_queue_depth", lane="interval") == 1
    assert value(samples, "billsync_stripe_budget_rate") == 1000
    assert value(samples, "billsync_stripe_budget_waiting", lane="on_demand") == 0


def test_leases_and_the_shared_budget_are_reported(synced: Billsync) -> None:
    assert synced.sync is not None
    leases = synced.sync.scheduler.leases
    assert leases is not None
    for account in ("acme", "globex", "initech"):
        create_account(synced, account)
    assert leases.claim(["acme", "globex", "initech"], limit=2) == ["acme", "globex"]
    assert leases.lead()
    with leases.hold("initech"), TestClient(create_app(synced), headers=AUTH) as client:
        samples = scrape(client)
    assert value(samples, "billsync_leases_held") == 1
    assert value(samples, "billsync_leases_claimed") == 2
    assert value(samples, "billsync_scheduler_leader") == 1
    shared = synced.sync.guard.shared
    if shared is None:  # SQLite: one process's budget
        assert not [name for name, _ in samples if name.startswith("billsync_stripe_shared")]
    else:
        shared.acquire(Lane.ON_DEMAND)
        with TestClient(create_app(synced), headers=AUTH) as client:
            samples = scrape(client)
        assert value(samples, "billsync_stripe_shared_budget_granted_total") == 1


# --- correlation ids in answers and logs --------------------------------------------------------


def test_the_request_id_is_echoed_and_carried_by_the_requests_log_lines(
    synced: Billsync,
) -> None:
    create_account(synced, "acme")
    synced.ingest.ingest([event("acme", at=T0)])
    with TestClient(create_app(synced), headers=AUTH) as client, json_logs() as lines:
        answer = client.post("/v1/accounts/acme/sync", headers={"X-Request-ID": "req-42.a"})
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-request-id"] == "req-42.a"
    calls = [line for line in lines if line["message"] == "stripe.request"]
    assert len(calls) == 3
    assert {line["request_id"] for line in calls} == {"req-42.a"}
    assert len({line["sync_id"] for line in calls}) == 1  # the on-demand sync ran in the request
    assert all(line["level"] == "debug" and line["logger"] == "billsync.stripe" for line in calls)
    assert {line["endpoint"] for line in calls} >= {"POST /v1/customers"}


def test_an_unusable_request_id_is_replaced_and_every_answer_carries_one(
    billsync: Billsync, anonymous: TestClient
) -> None:
    for hostile in ("two words", "x" * 129, "-leading-dash", "a\tb"):
        answer = anonymous.get("/healthz", headers={"X-Request-ID": hostile})
        assert answer.headers["x-request-id"] != hostile
        assert len(answer.headers["x-request-id"]) == 32
    refused = anonymous.get("/v1/catalog")  # refused by the token guard, before any route
    assert refused.status_code == 401
    assert refused.headers["x-request-id"]
    missing = anonymous.get("/no/such/path")
    assert missing.status_code == 404
    assert missing.headers["x-request-id"] != refused.headers["x-request-id"]
    samples = scrape(anonymous)
    assert value(samples, "billsync_http_requests_total", method="GET", route="/v1/catalog",
                 status="401") >= 1  # fmt: skip
    assert value(samples, "billsync_http_requests_total", method="GET", route="unmatched",
                 status="404") >= 1  # fmt: skip
    labels = {
        dict(labels).get("route") for name, labels in samples if name.startswith("billsync_http")
    }
    assert "/no/such/path" not in labels


def test_a_server_error_is_counted_carries_the_id_and_its_log_line_too(billsync: Billsync) -> None:
    app = create_app(billsync)

    @app.get("/fails")
    def fails() -> None:
        raise RuntimeError("a bug")

    client = TestClient(app, raise_server_exceptions=False)
    before = scrape(client)
    with json_logs() as lines:
        answer = client.get("/fails", headers={"X-Request-ID": "req-500"})
    assert answer.status_code == 500
    assert answer.json()["error"]["code"] == "internal_error"
    assert answer.headers["x-request-id"] == "req-500"
    (logged,) = [line for line in lines if line["message"] == "api.error.unhandled"]
    assert logged["request_id"] == "req-500"
    assert logged["level"] == "error"
    assert "RuntimeError: a bug" in logged["exception"]
    after = scrape(client)
    assert deltas(before, after, "billsync_http_requests_total") == {
        frozenset({("method", "GET"), ("route", "/fails"), ("status", "500")}): 1,
        frozenset({("method", "GET"), ("route", "/metrics"), ("status", "200")}): 1,
    }


def test_each_sync_run_has_its_own_sync_id_on_all_its_log_lines(
    synced: Billsync, running_emulator: RunningEmulator
) -> None:
    assert synced.sync is not None
    service = synced.sync.service
    create_account(synced, "acme")
    synced.ingest.ingest([event("acme", at=T0)])
    with json_logs() as first:
        assert service.sync_account("acme").ok
    synced.ingest.ingest([event("acme", "bandwidth.egress.na-eu.gb", "2", at=T0, region="cdg")])
    running_emulator.control(
        "POST", "faults", {"endpoint": "POST /v1/invoices/*", "kind": "429", "count": 1}
    )
    with json_logs() as failed:
        assert not service.sync_account("acme").ok
    first_ids = {line.get("sync_id") for line in first}
    assert len(first) >= 3
    assert len(first_ids) == 1
    assert None not in first_ids
    failed_ids = {line.get("sync_id") for line in failed}
    assert {line["message"] for line in failed} >= {"stripe.request", "sync.account.failed"}
    assert len(failed_ids) == 1
    assert failed_ids.isdisjoint(first_ids)
    assert all("request_id" not in line for line in first + failed)  # no request around them


# --- a database that cannot be read -------------------------------------------------------------


def test_a_scrape_without_the_database_still_answers_with_database_up_0(
    tmp_path: Path, sqlite_template: Path, clock: ManualClock, example_catalog: Catalog
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(sqlite_template, store / "billsync.db")
    database = Database(f"sqlite:///{store / 'billsync.db'}")
    billsync = build(Settings(data_dir=tmp_path, api_token=TEST_TOKEN), clock=clock,
                     database=database, catalog=example_catalog)  # fmt: skip
    client = TestClient(create_app(billsync))
    assert value(scrape(client), "billsync_database_up") == 1
    database.dispose()
    shutil.rmtree(store)  # the volume is gone: SQLite cannot open the file any more
    with json_logs(logging.WARNING) as lines:
        samples = scrape(client)
    assert value(samples, "billsync_database_up") == 0
    assert ("billsync_sync_dirty_lines", frozenset()) not in samples
    assert ("billsync_ingest_batches_total", frozenset()) in samples  # the process's own still
    assert [line["message"] for line in lines] == ["metrics.database.unreadable"]
    assert lines[0]["error"] == "OperationalError"


def test_a_scrape_during_a_postgresql_outage_answers_and_recovers(
    proxied: tuple[Database, TcpProxy], settings: Settings, example_catalog: Catalog
) -> None:
    database, proxy = proxied
    billsync = build(settings, clock=ManualClock(T0), database=database, catalog=example_catalog)
    create_account(billsync, "acme")
    billsync.ingest.ingest([event("acme", at=T0)])
    with TestClient(create_app(billsync)) as client:
        assert value(scrape(client), "billsync_sync_dirty_lines") == 1
        proxy.cut()
        down = scrape(client)
        assert value(down, "billsync_database_up") == 0
        assert ("billsync_sync_dirty_lines", frozenset()) not in down
        proxy.restore()
        back = scrape(client)
        assert value(back, "billsync_database_up") == 1
        assert value(back, "billsync_sync_dirty_lines") == 1
    billsync.close()


# --- a process without the API ----------------------------------------------------------------


def test_serve_metrics_serves_the_same_metrics_on_a_port_of_its_own(billsync: Billsync) -> None:
    assert serve_metrics(billsync, None) is None  # BILLSYNC_METRICS_PORT unset: nothing
    server = serve_metrics(billsync, 0, host="127.0.0.1")
    assert server is not None
    try:
        answer = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=10)
    finally:
        server.close()
    assert answer.status_code == 200
    samples = parse(answer.text)
    assert value(samples, "billsync_database_up") == 1
    assert ("billsync_ingest_batches_total", frozenset()) in samples


# --- log formats ------------------------------------------------------------------------------


@pytest.mark.unit
def test_json_lines_carry_the_event_its_fields_and_the_exception() -> None:
    with json_logs() as lines:
        log = logging.getLogger("billsync.test")
        at = datetime(2026, 11, 15, tzinfo=UTC)
        log.info("thing.done", extra={"account": "acme", "amount": Decimal("1.10"), "at": at,
                                      "level": "x"})  # fmt: skip
        try:
            raise ValueError("multi\nline")
        except ValueError:
            log.exception("thing.failed", extra={"big": 2**70})
    done, failed = lines
    assert done["message"] == "thing.done"
    assert (done["level"], done["logger"]) == ("info", "billsync.test")
    assert datetime.fromisoformat(done["ts"]).tzinfo is not None
    assert done["account"] == "acme"
    assert done["amount"] == "1.10"  # exact, as text
    assert done["at"].startswith("2026-11-15T00:00:00")
    assert done["extra_level"] == "x"  # never overwrites the record's own level
    assert failed["level"] == "error"
    assert failed["big"] == 2**70
    assert "ValueError: multi\nline" in failed["exception"]


@pytest.mark.unit
def test_text_lines_read_well_and_auto_picks_text_only_for_a_terminal() -> None:
    stream = io.StringIO()
    handler = build_handler("text", stream)
    record = logging.LogRecord("billsync.sync", logging.WARNING, __file__, 1,
                               "sync.account.failed", (), None)  # fmt: skip
    record.account = "acme"
    record.error = "StripeUnavailable: down"
    handler.handle(record)
    line = stream.getvalue().strip()
    assert line.endswith("WARNING billsync.sync sync.account.failed account=acme "
                         "error='StripeUnavailable: down'")  # fmt: skip
    assert resolve_format("auto", io.StringIO()) == "json"
    leader, follower = pty.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as terminal:
            assert resolve_format("auto", terminal) == "text"
            assert resolve_format("json", terminal) == "json"
    finally:
        os.close(leader)
        os.close(follower)


def test_billsync_api_logs_json_lines_uvicorns_included(tmp_path: Path) -> None:
    """The real command, as a service manager starts it (stderr not a terminal)."""
    port = free_port()
    environment = {name: value for name, value in os.environ.items()
                   if not name.startswith("BILLSYNC_")}  # fmt: skip
    environment.update(BILLSYNC_DATA_DIR=str(tmp_path), BILLSYNC_API_TOKEN=TEST_TOKEN,
                       BILLSYNC_PORT=str(port), BILLSYNC_LOG_FORMAT="auto")  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "billsync", "api", "--access-log"],
        env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:

        def ready() -> httpx.Response | None:
            assert process.poll() is None, "billsync api exited"
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz",
                                 headers={"X-Request-ID": "req-from-lb"}, timeout=5)  # fmt: skip
            except httpx.TransportError:
                return None

        answer = wait_until(ready, "billsync api answers", every=0.1)
        assert answer.headers["x-request-id"] == "req-from-lb"
    finally:
        process.send_signal(signal.SIGINT)
        _, errors = process.communicate(timeout=30)
    lines = [json.loads(line) for line in errors.decode().splitlines()]  # each one JSON
    assert any(line["logger"] == "uvicorn.error" for line in lines)
    (access,) = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert access["request_id"] == "req-from-lb"
    assert (access["method"], access["path"], access["status"]) == ("GET", "/readyz", 200)


def test_several_api_processes_report_the_sum_of_their_counters(tmp_path: Path) -> None:
    """`billsync api --workers 2`: whichever process answers a scrape, the counters are the
    sum over both (each process counts in a file of a shared directory)."""
    port = free_port()
    environment = {name: value for name, value in os.environ.items()
                   if not name.startswith(("BILLSYNC_", "PROMETHEUS_"))}  # fmt: skip
    environment.update(BILLSYNC_DATA_DIR=str(tmp_path), BILLSYNC_API_TOKEN=TEST_TOKEN,
                       BILLSYNC_PORT=str(port))  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "billsync", "api", "--workers", "2"],
        env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:

        def alive() -> bool:
            assert process.poll() is None, "billsync api exited"
            try:
                return httpx.get(f"{base}/healthz", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(alive, "billsync api answers", every=0.1)
        for _ in range(30):  # fresh connections: the kernel spreads them over both processes
            answer = httpx.get(f"{base}/v1/catalog", headers=AUTH, timeout=10)
            assert answer.status_code == 200
        for _ in range(6):
            samples = parse(httpx.get(f"{base}/metrics", timeout=10).text)
            assert value(samples, "billsync_http_requests_total", method="GET",
                         route="/v1/catalog", status="200") == 30  # fmt: skip
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
