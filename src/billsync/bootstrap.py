"""Wires billsync together from Settings: the one place that builds the object graph."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from billsync.catalog_file import load_catalog
from billsync.clock import Clock, SystemClock
from billsync.config import Settings
from billsync.core.catalog import Catalog
from billsync.db.database import Database
from billsync.services.accounts import AccountService
from billsync.services.group_commit import GroupCommitter
from billsync.services.ingest import IngestService
from billsync.services.lines import LineService


@dataclass
class Billsync:
    settings: Settings
    database: Database
    catalog: Catalog
    clock: Clock
    accounts: AccountService
    ingest: IngestService
    lines: LineService
    ingest_writer: GroupCommitter

    def close(self) -> None:
        self.ingest_writer.close()
        self.database.dispose()


def build(
    settings: Settings,
    *,
    clock: Clock | None = None,
    database: Database | None = None,
    catalog: Catalog | None = None,
) -> Billsync:
    clock = clock or SystemClock()
    catalog = catalog or load_catalog(settings.catalog)
    database = database or Database(
        settings.resolved_database_url(), sqlite_synchronous=settings.sqlite_synchronous
    )
    ingest = IngestService(
        database,
        catalog,
        clock,
        horizon=timedelta(days=settings.usage_horizon_days),
        default_anchor_day=settings.billing_anchor_day,
    )
    return Billsync(
        settings=settings,
        database=database,
        catalog=catalog,
        clock=clock,
        accounts=AccountService(catalog, clock),
        ingest=ingest,
        lines=LineService(catalog, clock, settings.billing_anchor_day),
        ingest_writer=GroupCommitter(ingest.record),
    )
