"""``billsync reconcile``: compare Stripe with the ledger, repair billsync's own lines."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from billsync.cli.common import console, fail, open_billsync, require_account, require_stripe
from billsync.core.money import format_minor
from billsync.errors import BillsyncError
from billsync.services.reconcile import DriftItem, Reconciler, ReconcileReport
from billsync.sync.budget import Lane


def _amount(item: DriftItem, amount: int | None) -> str:
    return "" if amount is None else format_minor(amount, item.currency or "usd")


def _state(item: DriftItem) -> str:
    if item.repaired:
        return "[green]repaired[/]"
    if item.repairable:
        return "[yellow]repairable[/]"
    return "[red]to decide[/]"


def _where(item: DriftItem) -> str:
    parts = []
    if item.line_id is not None:
        parts.append(f"line {item.line_id}")
    if item.stripe_line_item_id:
        parts.append(item.stripe_line_item_id)
    return ", ".join(parts)


def print_report(report: ReconcileReport) -> None:
    """The report for people: one row per difference (80 columns: its details follow the
    table, one line each, numbered as its row), then the totals."""
    if report.items:
        table = Table(title="drift between the ledger and Stripe", box=None, pad_edge=False)
        table.add_column("#", justify="right", no_wrap=True)
        table.add_column("problem", justify="right", no_wrap=True)
        table.add_column("account", overflow="fold", ratio=1)
        table.add_column("period", no_wrap=True)
        table.add_column("kind", overflow="fold")
        table.add_column("ledger", justify="right", no_wrap=True)
        table.add_column("stripe", justify="right", no_wrap=True)
        table.add_column("state", no_wrap=True)
        for number, item in enumerate(report.items, start=1):
            table.add_row(
                str(number),
                "" if item.problem_id is None else str(item.problem_id),
                escape(item.account),
                item.period_start.isoformat(),
                item.kind,
                _amount(item, item.ledger_amount),
                _amount(item, item.stripe_amount),
                _state(item),
            )
        console.print(table)
        for number, item in enumerate(report.items, start=1):
            where = _where(item)
            console.print(
                escape(f"  {number}. {where + ': ' if where else ''}{item.detail}"),
                highlight=False,
            )
        if any(not (item.repaired or item.repairable) for item in report.items):
            console.print(
                "to decide: a person chooses, on the account's console page or with "
                "`billsync support decide`",
                highlight=False,
            )
    for error in report.errors:
        where = f" {error.period_start}" if error.period_start else ""
        console.print(f"[red]{escape(error.account)}{where}: {escape(error.error)}[/]")
    console.print(
        f"{report.accounts} account(s), {report.invoices} invoice(s) read: "
        f"{len(report.items)} difference(s), {len(report.repaired)} repaired, "
        f"{len(report.unrepaired)} left; {report.pending_lines} line(s) waiting for the next "
        f"sync; {report.accepted} accepted earlier; {report.closed} problem(s) closed",
        highlight=False,
    )
    if any(item.repairable and not item.repaired for item in report.items) and not report.repair:
        console.print("run with --repair to re-push billsync's own lines", highlight=False)


def reconcile_command(
    account: Annotated[
        str | None,
        typer.Option(metavar="ID", help="Only this account.", show_default="every account"),
    ] = None,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair", help="Re-push billsync's own lines that drifted, then check again."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Compare Stripe with the ledger: drafts line by line, finalized invoices by total.
    Differences are recorded as problems; exit 1 when some remain unrepaired (or an invoice
    could not be read)."""
    billsync = open_billsync()
    require_account(billsync, account)
    syncing = require_stripe(billsync, "reconcile")
    reconciler = syncing.reconciler or Reconciler(
        billsync.database, syncing.gateway, syncing.service, billsync.clock
    )
    try:
        report = reconciler.reconcile(account, repair=repair, lane=Lane.ON_DEMAND)
    except BillsyncError as error:
        raise fail(error.message) from None
    finally:
        billsync.close()
    if as_json:
        typer.echo(report.to_json())
    else:
        print_report(report)
    if not report.ok:
        raise typer.Exit(1)
