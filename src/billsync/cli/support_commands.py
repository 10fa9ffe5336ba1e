"""``billsync support …``: the console's actions for scripts, audited the same way."""

from __future__ import annotations

from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Annotated

import typer
from rich.markup import escape

from billsync.bootstrap import Billsync
from billsync.cli.common import console, fail, open_billsync
from billsync.core.money import to_minor_units
from billsync.errors import BillsyncError
from billsync.repositories import console as console_repository
from billsync.repositories.accounts import get_account
from billsync.sync.budget import Lane

support_app = typer.Typer(
    help="Support actions for scripts (audited like the console's).", no_args_is_help=True
)
Reason = Annotated[str, typer.Option(help="Why: written to the audit log.")]
Actor = Annotated[str, typer.Option(help="Who acts (for the audit log).")]
Period = Annotated[str, typer.Option(help="The period's start date, YYYY-MM-DD.")]


def _audit(
    billsync: Billsync,
    *,
    actor: str,
    action: str,
    account: str | None,
    start: date | None,
    reason: str,
    **detail: object,
) -> None:
    with billsync.database.transaction() as connection:
        console_repository.record(
            connection,
            actor=actor,
            action=action,
            now=billsync.clock.now(),
            account_id=account,
            period_start=start,
            reason=reason,
            detail=dict(detail),
        )


def _start(period: str) -> date:
    try:
        return date.fromisoformat(period)
    except ValueError:
        raise fail(f"--period must be a date YYYY-MM-DD, not {period!r}", code=2) from None


def _act(account: str, action: str, period: str | None, reason: str, actor: str) -> None:
    if not reason.strip():
        raise fail("--reason is required: it goes to the audit log", code=2)
    billsync = open_billsync()
    syncing = billsync.sync
    if syncing is None:
        raise fail("set BILLSYNC_STRIPE_API_KEY to act on Stripe", code=2)
    start = _start(period) if period else None
    try:
        if action == "sync":
            outcome = syncing.service.sync_account(account, lane=Lane.ON_DEMAND)
            detail: dict[str, object] = {"calls": outcome.calls, "error": outcome.error}
        else:
            if start is None:
                raise fail("--period is required", code=2)
            operation = {
                "hold": syncing.lifecycle.hold,
                "release": syncing.lifecycle.release,
                "approve": syncing.lifecycle.approve_now,
            }[action]
            detail = {"result": operation(account, start)}
    except BillsyncError as error:
        raise fail(error.message) from None
    _audit(
        billsync,
        actor=actor,
        action=f"{'period' if start else 'account'}.{action}",
        account=account,
        start=start,
        reason=reason.strip(),
        **detail,
    )
    console.print(f"{escape(account)}: {action} done")
    billsync.close()


@support_app.command("sync")
def support_sync(account: str, reason: Reason = "", actor: Actor = "cli") -> None:
    """Sync the account to Stripe now."""
    _act(account, "sync", None, reason, actor)


@support_app.command("hold")
def support_hold(account: str, period: Period, reason: Reason = "", actor: Actor = "cli") -> None:
    """Stop the period's clock: it will not finalize until released."""
    _act(account, "hold", period, reason, actor)


@support_app.command("release")
def support_release(
    account: str, period: Period, reason: Reason = "", actor: Actor = "cli"
) -> None:
    """Restart a held period's clock where it stopped."""
    _act(account, "release", period, reason, actor)


@support_app.command("approve")
def support_approve(
    account: str, period: Period, reason: Reason = "", actor: Actor = "cli"
) -> None:
    """Finalize the period's invoice now."""
    _act(account, "approve", period, reason, actor)


@support_app.command("adjust")
def support_adjust(
    account: str,
    amount: Annotated[str, typer.Option(help="In the account's currency; negative = credit.")],
    description: Annotated[str, typer.Option(help="Shown on the invoice.")],
    reason: Reason = "",
    actor: Actor = "cli",
) -> None:
    """Add a credit (negative amount) or a charge to the account's current invoice."""
    if not reason.strip():
        raise fail("--reason is required: it goes to the audit log", code=2)
    billsync = open_billsync()
    try:
        value = Decimal(amount)
    except InvalidOperation:
        raise fail(f"--amount must be a number, not {amount!r}", code=2) from None
    with billsync.database.read() as connection:
        record = get_account(connection, account)
    if record is None:
        raise fail(f"account {account!r} does not exist")
    minor = to_minor_units(value, record.currency)
    try:
        line = billsync.adjustments.add(
            account, amount=minor, description=description, actor=actor, reason=reason.strip()
        )
    except BillsyncError as error:
        raise fail(error.message) from None
    console.print(f"{escape(account)}: line {line} of {minor} minor units added")
    billsync.close()


@support_app.command("decide")
def support_decide(
    problem: int,
    decision: Annotated[str, typer.Argument(help="accept (Stripe's version) or repush (ledger)")],
    reason: Reason = "",
    actor: Actor = "cli",
) -> None:
    """Resolve a drift problem."""
    if not reason.strip() or decision not in ("accept", "repush"):
        raise fail("give accept or repush, and a --reason", code=2)
    billsync = open_billsync()
    if billsync.sync is None or billsync.sync.reconciler is None:
        raise fail("set BILLSYNC_STRIPE_API_KEY to act on Stripe", code=2)
    reconciler = billsync.sync.reconciler
    call = reconciler.accept_stripe if decision == "accept" else reconciler.repush_ledger
    try:
        outcome = call(problem)
    except BillsyncError as error:
        raise fail(error.message) from None
    _audit(
        billsync,
        actor=actor,
        action=f"drift.{decision}",
        account=None,
        start=None,
        reason=reason.strip(),
        problem=problem,
        resolved=outcome.resolved,
    )
    console.print(f"problem {problem}: {'resolved' if outcome.resolved else outcome.error}")
    billsync.close()
    if not outcome.resolved:
        raise typer.Exit(1)
