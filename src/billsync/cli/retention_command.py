"""``billsync retention``: remove the raw events of invoices long final; keep partitions ahead."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from billsync.cli.common import console, errors, open_billsync
from billsync.services.event_retention import EventRetention, RetentionReport


def print_report(report: RetentionReport, store: str) -> None:
    would = "would be " if report.dry_run else ""
    if report.cutoff is None:
        console.print(
            f"{store}: retention is off (BILLSYNC_EVENT_RETENTION_DAYS=0): raw events are kept",
            highlight=False,
        )
    else:
        console.print(
            f"{store}: raw events of periods finalized more than {report.retention_days} day(s) "
            f"ago (before {report.cutoff:%Y-%m-%d %H:%M} UTC) {would}removed; lines are kept",
            highlight=False,
        )
    for change in report.partitions_created:
        moved = (
            f", {change.rows_from_default:,} row(s) from DEFAULT"
            if change.rows_from_default
            else ""
        )
        console.print(f"  partition {change.name} {would}created{moved}", highlight=False)
    for dropped in report.partitions_dropped:
        console.print(
            f"  partition {dropped.name} {would}dropped ({dropped.events:,} event(s))",
            highlight=False,
        )
    for name in report.partitions_kept:
        console.print(
            f"  partition {name} kept: some of its events belong to periods not finalized "
            "long enough",
            highlight=False,
        )
    if report.cutoff is not None:
        console.print(
            f"  {report.events_deleted:,} event(s) {would}deleted in chunks "
            f"({report.periods:,} period(s) finalized since the last run); "
            f"{report.events_removed:,} in all",
            highlight=False,
        )
    if report.distinct_released_before is not None:
        console.print(
            f"  {report.distinct_values_released:,} distinct value(s) of unique_count metrics "
            f"{would}released: usage periods starting before "
            f"{report.distinct_released_before:%Y-%m-%d}, which no event can reach any more",
            highlight=False,
        )
    for error in report.errors:
        errors.print(f"[red]not done:[/] {escape(error)} (the next run tries again)")
    if report.dry_run:
        console.print("dry run: nothing was changed")


def retention_command(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be done; change nothing.")
    ] = False,
) -> None:
    """Remove the raw usage events of periods finalized more than BILLSYNC_EVENT_RETENTION_DAYS
    ago (lines, the invoiced totals, are kept) and, on PostgreSQL, create the coming months'
    event partitions. Release the distinct values unique_count metrics kept for usage periods
    past the usage horizon. Safe to run at any time and repeatedly; exit 1 if part of it could
    not be done (it is retried by the next run)."""
    billsync = open_billsync()
    try:
        retention = EventRetention.from_settings(
            billsync.settings, billsync.database, billsync.clock
        )
        report = retention.run(dry_run=dry_run)
    finally:
        billsync.close()
    print_report(report, billsync.database.dialect)
    if report.errors:
        raise typer.Exit(1)
