"""Shared fixtures: real SQLite and real PostgreSQL, the example catalog, a manual clock.

PostgreSQL runs when BILLSYNC_TEST_DATABASE_URL is set (e.g.
postgresql+psycopg://postgres@127.0.0.1:5432/test). In CI (CI=true) it is required: the run
fails at once if it is missing or unreachable. Elsewhere its tests are skipped with a message.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

# billsync's CLI prints through rich consoles made when it is imported; without a terminal they
# are 80 columns wide, so a table or a long path would wrap differently with the length of the
# test's temporary folder (longer under pytest-xdist). Every test sees the same wide console.
os.environ["COLUMNS"] = "200"

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from billsync.api.app import create_app
from billsync.bootstrap import Billsync, build
from billsync.catalog_file import load_catalog
from billsync.clock import ManualClock
from billsync.config import EXAMPLE_CATALOG, Settings
from billsync.core.catalog import Catalog
from billsync.db import migrate
from billsync.db.database import Database

if TYPE_CHECKING:  # imported at run time only as a plugin (so pytest can rewrite its asserts)
    from tests.chaos.harness import TcpProxy
    from tests.stripe_peer import RunningEmulator

pytest_plugins = ["tests.stripe_peer", "tests.webhook_receiver", "tests.emulator_wire"]

PG_URL_VARIABLE = "BILLSYNC_TEST_DATABASE_URL"
TEST_TOKEN = "test-token-0123456789"
# Mid-month, so "current period" tests have room on both sides.
T0 = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
TABLES = (
    "sign_in_failures",
    "rate_budgets",
    "job_leases",
    "audit_log",
    "catalog_pricings",
    "console_sessions",
    "users",
    "webhook_events",
    "credit_notes",
    "invoice_mirror",
    "problems",
    "cursors",
    "sync_intents",
    "account_sync",
    "usage_events",
    "usage_event_ids",
    "distinct_values",
    "credit_grant_uses",
    "credit_grants",
    "alert_crossings",
    "spend_alerts",
    "lines",
    "billing_periods",
    "accounts",
)


def _postgres_url() -> str | None:
    return os.environ.get(PG_URL_VARIABLE) or None


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return
    url = _postgres_url()
    if url is None:
        pytest.exit(f"CI needs PostgreSQL: set {PG_URL_VARIABLE}", returncode=3)
    try:
        engine = create_engine(url)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as error:  # any failure to connect must stop CI loudly
        pytest.exit(f"CI needs PostgreSQL at {url}: {error}", returncode=3)


# Fixtures that reach a database, the emulator, a broker or a server: a test marked ``unit``
# may not use them (the unit layer runs in seconds, with nothing running beside it).
OUTSIDE_WORLD = frozenset({
    "database", "billsync", "client", "anonymous", "postgres_schema_url", "sqlite_template",
    "proxied", "running_emulator", "emulator_server", "stripe_peer", "webhook_receiver",
    "nats_url", "stream", "workers", "served", "empty_postgres_schema",
})  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("unit") is None:
            continue
        used = OUTSIDE_WORLD & set(getattr(item, "fixturenames", ()))
        if used:
            raise pytest.UsageError(
                f"{item.nodeid} is marked unit but uses {sorted(used)}: drop the mark"
            )


@pytest.fixture(scope="session")
def example_catalog() -> Catalog:
    return load_catalog(EXAMPLE_CATALOG)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (migrating per test is slow)."""
    path = tmp_path_factory.mktemp("template") / "billsync.db"
    database = Database(f"sqlite:///{path}")
    migrate.upgrade(database)
    database.dispose()
    return path


@pytest.fixture(scope="session")
def postgres_schema_url() -> Iterator[str]:
    """A private schema in the test database, migrated once, dropped at the end."""
    url = _postgres_url()
    if url is None:
        pytest.skip(f"PostgreSQL tests skipped: set {PG_URL_VARIABLE} to run them")
    schema = f"billsync_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    # Named after the schema, so that a test can tell its own sessions from those of the
    # other test processes sharing the database (tests.waiting.blocked_by).
    scoped = make_url(url).update_query_dict(
        {"options": f"-csearch_path={schema}", "application_name": schema}
    )
    scoped_url = scoped.render_as_string(hide_password=False)
    database = Database(scoped_url)
    migrate.upgrade(database)
    database.dispose()
    yield scoped_url
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated, empty ledger on each store."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "billsync.db"
        shutil.copy(template, path)
        db = Database(f"sqlite:///{path}")
    else:
        db = Database(request.getfixturevalue("postgres_schema_url"))
        with db.engine.begin() as connection:
            connection.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
            # The installation keeps its namespace; the Stripe mode it is tied to starts unset.
            connection.execute(text("UPDATE installation SET stripe_mode = NULL"))
    yield db
    db.dispose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "var", api_token=TEST_TOKEN)


def emulator_settings(data_dir: Path, emulator: RunningEmulator, **overrides: Any) -> Settings:
    """billsync's settings against the test emulator: no retries, no client-side rate limit."""
    from tests.stripe_peer import EMULATOR_KEY  # noqa: PLC0415 - loaded as a plugin by then

    return Settings(
        data_dir=data_dir, api_token=TEST_TOKEN, stripe_api_key=EMULATOR_KEY,
        stripe_api_base=emulator.url, stripe_max_retries=0, stripe_rate=1000, **overrides,
    )  # fmt: skip


def cli_against_emulator(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path, database: Database, emulator: RunningEmulator
) -> None:
    """The environment a ``billsync`` command reads, pointed at this test's store and
    emulator (wide columns, so tables print whole)."""
    from tests.stripe_peer import EMULATOR_KEY  # noqa: PLC0415 - loaded as a plugin by then

    for name, value in {
        "BILLSYNC_DATA_DIR": str(data_dir),
        "BILLSYNC_DATABASE_URL": database.url,
        "BILLSYNC_API_TOKEN": TEST_TOKEN,
        "BILLSYNC_STRIPE_API_KEY": EMULATOR_KEY,
        "BILLSYNC_STRIPE_API_BASE": emulator.url,
        "BILLSYNC_STRIPE_MAX_RETRIES": "0",
        "COLUMNS": "200",
    }.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def billsync(
    settings: Settings, database: Database, clock: ManualClock, example_catalog: Catalog
) -> Billsync:
    return build(settings, clock=clock, database=database, catalog=example_catalog)


@pytest.fixture
def client(billsync: Billsync) -> Iterator[TestClient]:
    with TestClient(
        create_app(billsync), headers={"Authorization": f"Bearer {TEST_TOKEN}"}
    ) as test_client:
        yield test_client


@pytest.fixture
def anonymous(billsync: Billsync) -> Iterator[TestClient]:
    with TestClient(create_app(billsync)) as test_client:
        yield test_client


@pytest.fixture
def proxied(postgres_schema_url: str) -> Iterator[tuple[Database, TcpProxy]]:
    """The PostgreSQL test ledger reached through a TCP proxy the test can cut and restore."""
    from tests.chaos.harness import TcpProxy  # noqa: PLC0415 - only the outage tests need it

    url = make_url(postgres_schema_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    database = Database(url.set(host="127.0.0.1", port=proxy.port).render_as_string(False))
    with database.engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    yield database, proxy
    database.dispose()
    proxy.close()
