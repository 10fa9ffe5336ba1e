"""``billsync sync``, ``worker``, ``periods advance`` and ``status``."""

from __future__ import annotations

import signal
import threading
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from billsync.bootstrap import Billsync, Syncing
from billsync.cli.common import console, fail, open_billsync
from billsync.clock import ManualClock
from billsync.core.money import format_minor
from billsync.core.sync_plan import (
    AddLines,
    CreateCustomer,
    CreateInvoice,
    DeleteInvoice,
    FinalizeInvoice,
    Operation,
    PlanError,
    RemoveLines,
    UpdateLines,
)
from billsync.observability.metrics import serve_metrics
from billsync.repositories import sync as sync_repository
from billsync.services.sync_status import sync_status
from billsync.sync.budget import Lane


def describe(operation: Operation) -> str:
    """One readable line per planned Stripe call."""
    if isinstance(operation, CreateCustomer):
        return "create the Stripe customer"
    if isinstance(operation, CreateInvoice):
        return f"create the draft invoice for {operation.period_start}"
    if isinstance(operation, AddLines):
        total = sum(line.amount for line in operation.lines)
        return f"{operation.period_start}: add {len(operation.lines)} line(s), {total} minor units"
    if isinstance(operation, UpdateLines):
        return f"{operation.period_start}: update {len(operation.changes)} line(s) to their totals"
    if isinstance(operation, RemoveLines):
        return f"{operation.period_start}: remove {len(operation.line_item_ids)} line(s)"
    if isinstance(operation, FinalizeInvoice):
        return f"{operation.period_start}: finalize the invoice (Stripe collects)"
    if isinstance(operation, DeleteInvoice):
        return f"{operation.period_start}: delete the empty draft (zero-total period)"
    raise AssertionError(f"unknown operation {operation!r}")


def _syncing(billsync: Billsync) -> Syncing:
    if billsync.sync is None:
        raise fail(
            "set BILLSYNC_STRIPE_API_KEY (and BILLSYNC_STRIPE_API_BASE for the emulator) to sync",
            code=2,
        )
    return billsync.sync


def sync_command(
    account: Annotated[str | None, typer.Option(help="Only this account.")] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the plan; call nothing.")] = False,
) -> None:
    """Sync to Stripe now: one account, or every account with changes."""
    billsync = open_billsync()
    syncing = _syncing(billsync)
    with billsync.database.read() as connection:
        targets = [account] if account else sync_repository.accounts_needing_sync(connection)
    if not targets:
        console.print("nothing to sync: every account is in step with Stripe")
        billsync.close()
        return
    if dry_run:
        for target in targets:
            try:
                operations = syncing.service.plan_account(target)
            except PlanError as error:
                console.print(f"[red]{escape(target)}: {escape(str(error))}[/]")
                continue
            console.print(f"[bold]{escape(target)}[/]: {len(operations)} Stripe call(s)")
            for operation in operations:
                console.print(f"  - {escape(describe(operation))}", highlight=False)
        return
    failed = 0
    for target in targets:
        outcome = syncing.service.sync_account(target, lane=Lane.ON_DEMAND)
        state = "ok" if outcome.ok else f"[red]failed: {escape(outcome.error or '')}[/]"
        console.print(f"{escape(target)}: {outcome.calls} call(s), {state}")
        failed += not outcome.ok
    billsync.close()
    if failed:
        raise typer.Exit(1)


def worker_command() -> None:
    """Run the scheduler and the sync workers until stopped (SIGINT/SIGTERM finish the
    syncs in flight, then exit)."""
    billsync = open_billsync()
    syncing = _syncing(billsync)
    settings = billsync.settings
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    syncing.scheduler.start(
        workers=settings.sync_workers, tick_seconds=settings.scheduler_tick_seconds
    )
    serve_metrics(billsync, settings.metrics_port)
    shared = "shared by every process" if syncing.guard.shared else "this process"
    leases = syncing.scheduler.leases
    console.print(
        f"billsync worker: {settings.sync_workers} worker(s), "
        f"{settings.stripe_calls_per_second():g} Stripe calls/s ({shared}), "
        f"policy {settings.sync_policy}"
        + (f", leases as {leases.owner} ({leases.ttl:g} s)" if leases else ""),
        highlight=False,
    )
    stop.wait()
    console.print("stopping: finishing syncs in flight, giving the leases back")
    billsync.close()


def advance_command(
    now: Annotated[
        str | None, typer.Option(help="Run transitions as if the clock read this (ISO 8601).")
    ] = None,
) -> None:
    """Run the lifecycle transitions that are due: open → closing → review → finalized."""
    clock = None
    if now is not None:
        try:
            moment = datetime.fromisoformat(now)
        except ValueError:
            console.print(f"[bold red]error:[/] --now must be ISO 8601, got {escape(now)}")
            raise typer.Exit(2) from None
        clock = ManualClock(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    billsync = open_billsync(clock=clock)
    syncing = _syncing(billsync)
    report = syncing.lifecycle.advance()
    for label, items in (
        ("closing", report.closing),
        ("review", report.review),
        ("finalized", report.finalized),
    ):
        for account_id, start in items:
            console.print(f"{escape(account_id)} {start}: → {label}")
    for account_id, error in report.failed:
        console.print(f"[red]{escape(account_id)}: {escape(error)}[/]")
    billsync.close()


def status_command(
    account: Annotated[str | None, typer.Option(help="Only this account.")] = None,
) -> None:
    """Sync state per account: last synced, unsynced amount, pending lines, last error."""
    billsync = open_billsync()
    table = Table(title="sync status")
    for column in (
        "account",
        "last synced",
        "unsynced",
        "pending lines",
        "calls",
        "last error",
    ):
        table.add_column(column)
    with billsync.database.read() as connection:
        ids = [account] if account else sync_repository.all_account_ids(connection)
        for account_id in ids:
            status = sync_status(connection, account_id)
            if status is None:
                console.print(f"[red]no account {escape(account_id)}[/]")
                raise typer.Exit(1)
            currency = sync_repository.get_account(connection, account_id)
            assert currency is not None
            table.add_row(
                escape(account_id),
                str(status.last_synced_at or "never"),
                format_minor(status.unsynced_amount, currency.currency),
                str(status.pending_lines),
                str(status.stripe_calls),
                escape(status.last_error or ""),
            )
    console.print(table)
    billsync.close()
