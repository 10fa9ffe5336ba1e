"""When PostgreSQL goes away (a restart, a network cut — made real here by a TCP proxy that
drops every connection): the API answers 503 ``database_unavailable`` with ``Retry-After``,
records nothing, and works again once the database is back; a starting process waits for the
database instead of dying."""

from __future__ import annotations

import threading

import pytest
import typer
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from billsync.api.app import create_app
from billsync.bootstrap import build
from billsync.cli.common import ensure_schema, wait_for_database
from billsync.clock import ManualClock
from billsync.config import Settings
from billsync.core.catalog import Catalog
from billsync.db import migrate
from billsync.db.database import Database
from billsync.db.tables import usage_events
from tests.chaos.harness import TcpProxy
from tests.conftest import T0, TEST_TOKEN
from tests.factories import create_account, event


def test_the_api_answers_503_while_the_database_is_away_and_records_nothing(
    proxied: tuple[Database, TcpProxy], settings: Settings, example_catalog: Catalog
) -> None:
    database, proxy = proxied
    billsync = build(settings, clock=ManualClock(T0), database=database, catalog=example_catalog)
    create_account(billsync, "acme")
    batch = {"events": [event("acme", at=T0, event_id="during-the-cut")]}
    with TestClient(
        create_app(billsync), headers={"Authorization": f"Bearer {TEST_TOKEN}"}
    ) as client:
        assert client.get("/readyz").json() == {
            "status": "ready", "database": "ok", "schema": migrate.head_revision(database),
        }  # fmt: skip
        proxy.cut()
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json()["database"].startswith("unreachable")
        assert client.get("/healthz").status_code == 200  # alive, just not ready
        refused = client.post("/v1/usage", json=batch)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "database_unavailable"
        assert "retry" in refused.json()["error"]["message"]
        assert refused.headers["retry-after"] == "1"
        assert client.get("/v1/accounts/acme").status_code == 503

        proxy.restore()
        assert client.get("/readyz").status_code == 200
        accepted = client.post("/v1/usage", json=batch)
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["results"][0]["status"] == "accepted"
        again = client.post("/v1/usage", json=batch)
        assert again.json()["results"][0]["status"] == "duplicate"
    with database.read() as connection:
        assert connection.execute(select(func.count()).select_from(usage_events)).scalar() == 1
    billsync.close()


def test_a_starting_process_waits_for_the_database_then_gives_up_with_the_error(
    proxied: tuple[Database, TcpProxy],
) -> None:
    database, proxy = proxied
    proxy.cut()
    restored = threading.Event()

    def restore() -> None:
        restored.set()
        proxy.restore()

    threading.Timer(0.6, restore).start()
    wait_for_database(database, seconds=120)
    assert restored.is_set(), "it went ahead while the database was still cut off"
    database.ping()

    database.engine.dispose()
    proxy.cut()
    with pytest.raises(typer.Exit):
        wait_for_database(database, seconds=0.5)


def test_a_starting_process_survives_the_database_leaving_again_after_the_wait(
    proxied: tuple[Database, TcpProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database answers the wait's ping, then goes away before the schema check (a
    failover): the start retries the whole step instead of dying with a traceback."""
    database, proxy = proxied
    cuts: list[threading.Timer] = []
    real_ping = database.ping

    def ping_then_cut() -> None:
        real_ping()
        if not cuts:  # the first ping succeeds; right after it, the connections are cut
            database.engine.dispose()
            proxy.cut()
            cuts.append(threading.Timer(0.5, proxy.restore))
            cuts[0].start()

    monkeypatch.setattr(database, "ping", ping_then_cut)
    ensure_schema(database, seconds=120)
    assert len(cuts) == 1
    assert migrate.current_revision(database) == migrate.head_revision(database)
