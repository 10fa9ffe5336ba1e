"""``billsync sync``, ``worker``, ``periods advance`` and ``status``."""

from __future__ import annotations

import signal
import threading
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from billsync.bootstrap import Billsync, Syncing
from billsync.cli.common import console, fail, open_billsync
from billsync.clock import ManualClock
from billsync.core.capacity import capacity
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
    limit: Annotated[
        int, typer.Option(min=1, help="Accounts listed: the most overdue first.")
    ] = 50,
) -> None:
    """The platform's sync state (the due queue, the interval achieved, periods by status),
    then per account — the most overdue first: last synced, unsynced amount, pending lines,
    last error."""
    billsync = open_billsync()
    if account is None:
        _platform_summary(billsync)
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
        if account:
            ids = [account]
        else:
            overdue = [
                a for a, _, _ in sync_repository.behind_accounts(
                    connection, with_override=False, limit=limit
                )
            ]  # fmt: skip
            others = sync_repository.all_account_ids(connection)[: limit + len(overdue)]
            ids = (overdue + [a for a in others if a not in set(overdue)])[:limit]
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


def _platform_summary(billsync: Billsync) -> None:
    now = billsync.clock.now()
    settings = billsync.settings
    with billsync.database.read() as connection:
        summary = sync_repository.platform_summary(connection)
    interval = settings.sync_interval_seconds
    waited = (
        (now - summary.oldest_behind_sync).total_seconds()
        if summary.oldest_behind_sync is not None
        else 0.0
    )
    console.print(
        f"{summary.accounts:,} accounts, {summary.active_accounts:,} with usage in an open "
        f"period; {summary.behind:,} behind Stripe ({summary.never_synced_behind:,} never "
        "synced)"
    )
    state = "on time" if waited <= interval else "behind: see billsync capacity"
    console.print(
        f"effective interval {_duration(waited)} (configured {_duration(interval)}): {state}"
    )
    periods = ", ".join(f"{count:,} {status}" for status, count in sorted(summary.periods.items()))
    console.print(f"periods: {periods or 'none yet'}")
    closing = sum(summary.periods.get(status, 0) for status in ("closing", "review", "held"))
    if closing:
        # Month end: every period still to finalize costs at least a final update_lines and a
        # finalize, paced at Stripe's limits.
        bound = capacity(
            closing,
            float(interval),
            settings.stripe_calls_per_second(),
            settings.stripe_endpoint_rate_of,
        )
        console.print(
            f"month end: {closing:,} period(s) to finalize, at least "
            f"{_duration(bound.close_seconds)} more at the limits (bound by "
            f"{bound.close_bound_by})",
            highlight=False,
        )


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def capacity_command(
    accounts: Annotated[
        int | None,
        typer.Option(min=0, help="Active accounts (default: those with usage now)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What Stripe's limits allow at this many active accounts: the interval achievable, the
    month-end close's shortest duration, and the limit increases the configured interval
    would need."""
    billsync = open_billsync()
    settings = billsync.settings
    if accounts is None:
        with billsync.database.read() as connection:
            accounts = sync_repository.platform_summary(connection).active_accounts
    result = capacity(
        accounts,
        float(settings.sync_interval_seconds),
        settings.stripe_calls_per_second(),
        settings.stripe_endpoint_rate_of,
    )
    billsync.close()
    if as_json:
        console.print_json(data={**asdict(result), "meets_interval": result.meets_interval})
        return
    console.print(
        f"{result.accounts:,} active accounts; limits: {result.global_rate:g} calls/s in all, "
        f"update_lines {result.update_lines_rate:g}/s, finalize {result.finalize_rate:g}/s",
        highlight=False,
    )
    console.print(
        f"interval: {_duration(result.achievable_interval_seconds)} achievable (configured "
        f"{_duration(result.interval_seconds)}), bound by {result.interval_bound_by}",
        highlight=False,
    )
    console.print(
        f"month-end close: at least {_duration(result.close_seconds)}, bound by "
        f"{result.close_bound_by}",
        highlight=False,
    )
    if result.meets_interval:
        console.print("the configured interval is within the limits", highlight=False)
    else:
        console.print(
            f"to meet the configured interval: update_lines "
            f"{result.needed_update_lines_rate:,.1f}/s and {result.needed_global_rate:,.1f} "
            "calls/s in all — ask Stripe for those limits, or lengthen "
            "BILLSYNC_SYNC_INTERVAL_SECONDS",
            highlight=False,
        )
