"""``billsync verify``: check the invariants; exit 1 with a readable report on any violation."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from billsync.cli.common import console, open_billsync
from billsync.core.money import format_minor
from billsync.services.verify import Verifier, VerifyReport, Violation


def _amount(violation: Violation, amount: int | None, currency: str) -> str:
    return "" if amount is None else format_minor(amount, currency)


def print_report(report: VerifyReport, currency: str = "usd") -> None:
    for title, rows, style in (
        ("violations", report.violations, "red"),
        ("accepted by a person (not violations)", report.accepted, "yellow"),
        ("explained by Stripe's rules: a coupon (not violations)", report.explained, "cyan"),
    ):
        if not rows:
            continue
        table = Table(title=f"[{style}]{title}[/]")
        for column in ("kind", "account", "period", "line", "event", "stripe"):
            table.add_column(column)
        table.add_column("ledger", justify="right")
        table.add_column("stripe amount", justify="right")
        table.add_column("detail", overflow="fold")
        for v in rows:
            table.add_row(
                v.kind,
                escape(v.account),
                "" if v.period_start is None else v.period_start.isoformat(),
                "" if v.line_id is None else str(v.line_id),
                escape(v.event_id or ""),
                escape(v.stripe_line_item_id or v.stripe_invoice_id or ""),
                _amount(v, v.ledger_amount, currency),
                _amount(v, v.stripe_amount, currency),
                escape(v.detail),
            )
        console.print(table)
    for error in report.errors:
        console.print(f"[red]could not check {escape(error)}[/]")
    stripe = "" if report.invoices or report.accounts == 0 else " (no Stripe key: ledger only)"
    console.print(
        f"checked {report.accounts} account(s), {report.periods} period(s), {report.lines} "
        f"line(s), {report.events} event(s), {report.invoices} Stripe invoice(s){stripe}; "
        f"{report.pending_lines} line(s) waiting for the next sync",
        highlight=False,
    )
    if report.retained_lines:
        console.print(
            f"{report.retained_lines} line(s) of finalized periods whose raw events retention "
            "removed: their totals stand, not re-added from events",
            highlight=False,
        )
    if report.ok:
        console.print("[green]all invariants hold[/]")
    else:
        kinds = ", ".join(f"{kind} {n}" for kind, n in report.by_kind().items())
        console.print(
            f"[red]{len(report.violations)} violation(s)[/] ({kinds or 'none'}), "
            f"{len(report.errors)} account(s) not checked",
            highlight=False,
        )


def verify_command(
    account: Annotated[str | None, typer.Option(help="Only this account.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    require_synced: Annotated[
        bool,
        typer.Option(help="Count lines still waiting for a sync as a failure (after a drain)."),
    ] = False,
) -> None:
    """Check the invariants: every accepted event counted in exactly one line, late usage where
    the rules say, each period's Stripe invoice (draft or final) equal to the ledger to the cent,
    no billsync line twice in Stripe. Read-only. Exit 1 on any violation."""
    billsync = open_billsync()
    syncing = billsync.sync
    try:
        verifier = Verifier(
            billsync.database,
            None if syncing is None else syncing.gateway,
            None if syncing is None else syncing.service.guard,
            namespace=None if syncing is None else syncing.service.namespace,
            catalog=billsync.catalog,
        )
        report = verifier.verify(account)
    finally:
        billsync.close()
    if as_json:
        typer.echo(report.to_json())
    else:
        print_report(report)
    if not report.ok or (require_synced and report.pending_lines):
        raise typer.Exit(1)
