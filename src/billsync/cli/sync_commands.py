"""``billsync sync``, ``worker``, ``periods advance`` and ``status``."""

from __future__ import annotations

import signal
import threading
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from billsync.bootstrap import Billsync
from billsync.cli.common import (
    DATABASE_WAIT_SECONDS,
    console,
    fail,
    load_settings,
    open_billsync,
    require_account,
    require_stripe,
)
from billsync.clock import FileClock, ManualClock, SystemClock
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
from billsync.repositories import lifecycle_preview as preview
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


AccountOption = Annotated[
    str | None, typer.Option(metavar="ID", help="Only this account.", show_default="every account")
]
# Asked before a lifecycle run moves real invoices (Stripe collects finalized ones).
FUTURE_TOLERANCE = timedelta(minutes=1)
SHOWN = 10  # periods named per lifecycle step in a preview


def sync_command(
    account: AccountOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the Stripe calls it would make; call nothing.")
    ] = False,
) -> None:
    """Sync to Stripe now: one account, or every account with changes."""
    billsync = open_billsync()
    require_account(billsync, account)
    syncing = require_stripe(billsync, "sync")
    try:
        with billsync.database.read() as connection:
            targets = [account] if account else sync_repository.accounts_needing_sync(connection)
        if not targets:
            console.print("nothing to sync: every account is in step with Stripe")
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
            console.print("dry run: nothing was sent to Stripe")
            return
        failed = 0
        for target in targets:
            outcome = syncing.service.sync_account(target, lane=Lane.ON_DEMAND)
            state = "ok" if outcome.ok else f"[red]failed: {escape(outcome.error or '')}[/]"
            console.print(f"{escape(target)}: {outcome.calls} call(s), {state}")
            failed += not outcome.ok
    finally:
        billsync.close()
    if failed:
        raise typer.Exit(1)


def worker_command() -> None:
    """Run the scheduler and the sync workers until stopped (SIGINT/SIGTERM finish the
    syncs in flight, then exit)."""
    billsync = open_billsync(wait=DATABASE_WAIT_SECONDS)
    syncing = require_stripe(billsync, "run the sync workers")
    settings = billsync.settings
    try:
        serve_metrics(billsync, settings.metrics_port)
    except OSError as error:
        billsync.close()
        raise fail(
            f"cannot serve /metrics on port {settings.metrics_port} ({error.strerror}): choose "
            "another with BILLSYNC_METRICS_PORT"
        ) from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    syncing.scheduler.start(
        workers=settings.sync_workers, tick_seconds=settings.scheduler_tick_seconds
    )
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


def parse_moment(text: str, option: str) -> datetime:
    """An ISO 8601 time; without an offset it is UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise fail(
            f"{option} must be an ISO 8601 time such as 2026-12-01T01:00:00Z, not {text!r}",
            code=2,
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def advance_command(
    now: Annotated[
        str | None,
        typer.Option(
            metavar="TIME",
            help="Run the transitions due at this ISO 8601 time (UTC unless it says otherwise); "
            "a time ahead of the clock needs --yes.",
            show_default="the clock",
        ),
    ] = None,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes", help="Do it: close, sync and finalize the periods due (Stripe collects)."
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only print what would be done (without --yes too).")
    ] = False,
) -> None:
    """Run the lifecycle transitions that are due: open → closing → review → finalized. Without
    --yes it prints what it would do and changes nothing."""
    moment = None if now is None else parse_moment(now, "--now")
    settings = load_settings()
    # The clock billsync runs on (a file's in the chaos suite), whatever --now says.
    clock = FileClock(settings.clock_file) if settings.clock_file else SystemClock()
    billsync = open_billsync(settings, clock=None if moment is None else ManualClock(moment))
    try:
        clock_now = clock.now()
        at = moment or clock_now
        ahead = at - clock_now
        _preview(billsync, at, ahead)
        if dry_run or not yes:
            if ahead > FUTURE_TOLERANCE:
                console.print(
                    f"[bold]--now is {_duration(ahead.total_seconds())} ahead of the clock[/]: "
                    "doing this closes and finalizes real invoices early (Stripe collects a "
                    "finalized invoice at once) and records times in the future. Nothing was "
                    "done; add --yes to do it anyway.",
                    highlight=False,
                )
            else:
                console.print("nothing was done: run again with --yes to do it", highlight=False)
            return
        syncing = require_stripe(billsync, "run the lifecycle")
        if ahead > FUTURE_TOLERANCE:
            console.print(
                f"--yes: running {_duration(ahead.total_seconds())} ahead of the clock",
                highlight=False,
            )
        report = syncing.lifecycle.advance()
    finally:
        billsync.close()
    for label, items in (
        ("closing", report.closing),
        ("review", report.review),
        ("finalized", report.finalized),
    ):
        for account_id, start in items:
            console.print(f"{escape(account_id)} {start}: → {label}")
    for account_id, error in report.failed:
        console.print(f"[red]{escape(account_id)}: {escape(error)}[/]")
    if not (report.closing or report.review or report.finalized or report.failed):
        console.print("nothing was due")
    if report.failed:
        raise typer.Exit(1)


def _preview(billsync: Billsync, at: datetime, ahead: timedelta) -> None:
    """What a run at ``at`` would take, step by step."""
    settings = billsync.settings
    grace = timedelta(seconds=settings.close_grace_seconds)
    with billsync.database.read() as connection:
        steps = (
            ("would start closing (ended)", preview.ended_open(connection, at.date(), SHOWN)),
            (
                "would stop taking usage and get their final sync (grace over)",
                preview.grace_over(connection, (at - grace).date(), SHOWN),
            ),
            (
                "would get their final sync, then their review window",
                preview.drafts_to_complete(connection, SHOWN),
            ),
            (
                "would be finalized: Stripe collects their invoices",
                preview.review_over(connection, at, SHOWN),
            ),
        )
    when = at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    relative = (
        f", {_duration(ahead.total_seconds())} ahead of the clock"
        if ahead > FUTURE_TOLERANCE
        else ""
    )
    console.print(f"as of {when}{relative}:", highlight=False)
    if not any(step.count for _, step in steps):
        console.print("  no period is due")
    for label, step in steps:
        if not step.count:
            continue
        named = ", ".join(f"{account} {start}" for account, start in step.first)
        more = f" and {step.count - len(step.first):,} more" if step.count > len(step.first) else ""
        console.print(
            escape(f"  {step.count:,} period(s) {label}: {named}{more}"),
            highlight=False,
            soft_wrap=True,
        )


def _when(moment: datetime | None) -> str:
    """A time to the second, in UTC."""
    return "never" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def status_command(
    account: AccountOption = None,
    limit: Annotated[
        int, typer.Option(metavar="N", min=1, help="Accounts listed: the most overdue first.")
    ] = 50,
) -> None:
    """The platform's sync state (the due queue, the interval achieved, periods by status),
    then per account — the most overdue first: last synced, unsynced amount, pending lines,
    last error."""
    billsync = open_billsync()
    require_account(billsync, account)
    try:
        if account is None:
            _platform_summary(billsync)
        rows = _status_rows(billsync, account, limit)
    finally:
        billsync.close()
    # Fits 80 columns: ids and errors fold, times and amounts never break.
    table = Table(title="sync status", box=None, pad_edge=False)
    table.add_column("account", overflow="fold", ratio=1)
    table.add_column("last synced (UTC)", no_wrap=True)
    table.add_column("cur", no_wrap=True)
    table.add_column("unsynced", justify="right", no_wrap=True)
    table.add_column("lines", justify="right", no_wrap=True)
    table.add_column("calls", justify="right", no_wrap=True)
    table.add_column("last error", overflow="fold", ratio=2)
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _status_rows(billsync: Billsync, account: str | None, limit: int) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
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
            terms = sync_repository.get_account(connection, account_id)
            if status is None or terms is None:
                continue  # removed meanwhile
            rows.append(
                (
                    escape(account_id),
                    _when(status.last_synced_at),
                    terms.currency.upper(),
                    format_minor(status.unsynced_amount, terms.currency),
                    str(status.pending_lines),
                    str(status.stripe_calls),
                    escape(status.last_error or ""),
                )
            )
    return rows


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
        typer.Option(
            metavar="N",
            min=0,
            help="Active accounts.",
            show_default="those with usage in an open period now",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What Stripe's limits allow at this many active accounts: the interval achievable, the
    month-end close's shortest duration, and the limit increases the configured interval
    would need."""
    billsync = open_billsync()
    settings = billsync.settings
    try:
        if accounts is None:
            with billsync.database.read() as connection:
                accounts = sync_repository.platform_summary(connection).active_accounts
    finally:
        billsync.close()
    result = capacity(
        accounts,
        float(settings.sync_interval_seconds),
        settings.stripe_calls_per_second(),
        settings.stripe_endpoint_rate_of,
    )
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
