"""``billsync verify``: check the invariants; exit 1 with a readable report on any violation."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from billsync.cli.common import (
    STRIPE_KEY_HINT,
    console,
    errors,
    open_billsync,
    require_account,
)
from billsync.core.money import format_minor
from billsync.repositories.accounts import get_accounts
from billsync.services.verify import Verifier, VerifyReport, Violation

# Exit status when the check could not be whole: Stripe was not read (no key).
NOT_CHECKED = 2


def _amount(amount: int | None, currency: str) -> str:
    return "" if amount is None else format_minor(amount, currency)


def _where(violation: Violation) -> str:
    """What the violation is about, beyond its account and period."""
    parts = []
    if violation.line_id is not None:
        parts.append(f"line {violation.line_id}")
    if violation.event_id:
        parts.append(f"event {violation.event_id}")
    if violation.stripe_line_item_id or violation.stripe_invoice_id:
        parts.append(str(violation.stripe_line_item_id or violation.stripe_invoice_id))
    return ", ".join(parts)


def print_report(
    report: VerifyReport, currencies: dict[str, str] | None = None, *, stripe_checked: bool = True
) -> None:
    currencies = currencies or {}
    for title, rows, style in (
        ("violations", report.violations, "red"),
        ("accepted by a person (not violations)", report.accepted, "yellow"),
        ("explained by Stripe's rules: a coupon (not violations)", report.explained, "cyan"),
    ):
        if not rows:
            continue
        # Fits 80 columns: one row per violation, then its details on lines of their own.
        table = Table(title=f"[{style}]{title}[/]", box=None, pad_edge=False)
        table.add_column("#", justify="right", no_wrap=True)
        table.add_column("kind", no_wrap=True)
        table.add_column("account", overflow="fold", ratio=1)
        table.add_column("period", no_wrap=True)
        table.add_column("ledger", justify="right", no_wrap=True)
        table.add_column("stripe", justify="right", no_wrap=True)
        for number, v in enumerate(rows, start=1):
            currency = currencies.get(v.account, "usd")
            table.add_row(
                str(number),
                v.kind,
                escape(v.account),
                "" if v.period_start is None else v.period_start.isoformat(),
                _amount(v.ledger_amount, currency),
                _amount(v.stripe_amount, currency),
            )
        console.print(table)
        for number, v in enumerate(rows, start=1):
            where = _where(v)
            console.print(
                escape(f"  {number}. {where + ': ' if where else ''}{v.detail}"),
                highlight=False,
            )
    for error in report.errors:
        console.print(f"[red]could not check {escape(error)}[/]")
    stripe = "" if stripe_checked else " (Stripe not read)"
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
        console.print(
            "[green]all invariants hold[/]"
            if stripe_checked
            else "[green]the ledger's invariants hold[/]; Stripe was not checked"
        )
    else:
        kinds = ", ".join(f"{kind} {n}" for kind, n in report.by_kind().items())
        console.print(
            f"[red]{len(report.violations)} violation(s)[/] ({kinds or 'none'}), "
            f"{len(report.errors)} account(s) not checked",
            highlight=False,
        )


def verify_command(
    account: Annotated[
        str | None,
        typer.Option(metavar="ID", help="Only this account.", show_default="every account"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    require_synced: Annotated[
        bool,
        typer.Option(
            "--require-synced",
            help="Count lines still waiting for a sync as a failure (after a drain).",
        ),
    ] = False,
    ledger_only: Annotated[
        bool,
        typer.Option(
            "--ledger-only",
            help="Check the ledger alone, without reading Stripe (exit 0 without a Stripe key).",
        ),
    ] = False,
) -> None:
    """Check the invariants: every accepted event counted in exactly one line, late usage where
    the rules say, each period's Stripe invoice (draft or final) equal to the ledger to the cent,
    no billsync line twice in Stripe. Read-only. Exit 1 on any violation; 2 when Stripe could
    not be checked (no key; --ledger-only checks the ledger alone)."""
    billsync = open_billsync()
    require_account(billsync, account)
    syncing = None if ledger_only else billsync.sync
    try:
        verifier = Verifier(
            billsync.database,
            None if syncing is None else syncing.gateway,
            None if syncing is None else syncing.service.guard,
            namespace=None if syncing is None else syncing.service.namespace,
            catalog=billsync.catalog,
        )
        report = verifier.verify(account)
        with billsync.database.read() as connection:
            currencies = {
                account_id: record.currency
                for account_id, record in get_accounts(
                    connection, [v.account for v in report.violations + report.accepted]
                ).items()
            }
    finally:
        billsync.close()
    stripe_checked = syncing is not None
    if as_json:
        typer.echo(json.dumps({**report.to_dict(), "stripe_checked": stripe_checked}, indent=2))
    else:
        print_report(report, currencies, stripe_checked=stripe_checked)
    if not stripe_checked and not ledger_only:
        errors.print(
            f"Stripe was not checked: {STRIPE_KEY_HINT} to compare the invoices too, or pass "
            "--ledger-only to check the ledger alone",
            highlight=False,
        )
    if not report.ok or (require_synced and report.pending_lines):
        raise typer.Exit(1)
    if not stripe_checked and not ledger_only:
        raise typer.Exit(NOT_CHECKED)
