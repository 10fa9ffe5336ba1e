"""``billsync support …``: the console's actions for scripts, through the same service
(``services.support``): the same checks, and the same audit entries."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Annotated, TypeVar

import typer
from rich.markup import escape

from billsync.bootstrap import Billsync
from billsync.cli.common import console, fail, open_billsync, require_account
from billsync.core.credit_notes import DESTINATIONS, REASONS
from billsync.core.display import format_money
from billsync.errors import BillsyncError, InvalidRequest
from billsync.repositories import sync as sync_repository
from billsync.repositories.accounts import get_account
from billsync.services.support import StripeNotConfigured

support_app = typer.Typer(
    help="Support actions for scripts (audited like the console's).", no_args_is_help=True
)
Account = Annotated[str, typer.Argument(metavar="ACCOUNT", help="The account's id.")]
Reason = Annotated[
    str, typer.Option(metavar="TEXT", help="Why: written to the audit log.", show_default=False)
]
Actor = Annotated[str, typer.Option(metavar="NAME", help="Who acts, for the audit log.")]
# As everywhere in billsync's command line (``accounts show``): any date inside the period.
Problem = Annotated[int, typer.Argument(metavar="PROBLEM", help="The problem's number.")]
PERIOD_HELP = "The period containing this date (YYYY-MM-DD)."
Period = Annotated[str, typer.Option(metavar="DATE", help=PERIOD_HELP, show_default=False)]

T = TypeVar("T")
# Refusals the command line must fix: exit code 2, like a usage error.
USAGE_ERRORS = (InvalidRequest, StripeNotConfigured)
UNKNOWN = ("unknown_action", "unknown_decision")


def _run(action: Callable[[Billsync], T], account: str | None = None) -> T:
    """Run a support action; a refusal is printed, with exit code 2 for what the command line
    must fix (a missing reason, a bad period or amount, an unknown decision, no Stripe key) and 1
    otherwise. An account that does not exist is said first, whatever else is wrong."""
    billsync = open_billsync()
    require_account(billsync, account)
    try:
        return action(billsync)
    except BillsyncError as error:
        usage = isinstance(error, USAGE_ERRORS) or error.code in UNKNOWN
        raise fail(error.message, code=2 if usage else 1) from None
    finally:
        billsync.close()


def _start(billsync: Billsync, account: str, period: str | None) -> str | None:
    """The start of the account's period holding the date ``period`` (as typed when it is not
    a date, for the service to refuse in its own words)."""
    if not period:
        return period
    try:
        day = date.fromisoformat(period.strip())
    except ValueError:
        return period
    with billsync.database.read() as connection:
        start = sync_repository.period_containing(connection, account, day)
        record = get_account(connection, account)
    if start is None and record is not None:  # a period with no row yet (no usage so far)
        start = record.schedule(billsync.settings.billing_anchor_day).period_for_date(day).start
    return period if start is None else start.isoformat()


def _act(account: str, action: str, period: str | None, reason: str, actor: str) -> None:
    _run(
        lambda billsync: billsync.support.act(
            action, account, actor=actor, reason=reason, period=_start(billsync, account, period)
        ),
        account,
    )
    console.print(f"{escape(account)}: {action} done")


@support_app.command("sync")
def support_sync(account: Account, *, reason: Reason, actor: Actor = "cli") -> None:
    """Sync the account to Stripe now."""
    _act(account, "sync", None, reason, actor)


@support_app.command("hold")
def support_hold(account: Account, *, period: Period, reason: Reason, actor: Actor = "cli") -> None:
    """Stop the period's clock: it will not finalize until released."""
    _act(account, "hold", period, reason, actor)


@support_app.command("release")
def support_release(
    account: Account, *, period: Period, reason: Reason, actor: Actor = "cli"
) -> None:
    """Restart a held period's clock where it stopped."""
    _act(account, "release", period, reason, actor)


@support_app.command("approve")
def support_approve(
    account: Account, *, period: Period, reason: Reason, actor: Actor = "cli"
) -> None:
    """Finalize the period's invoice now (its last credits and charges pushed first)."""
    _act(account, "approve", period, reason, actor)


@support_app.command("adjust")
def support_adjust(
    account: Account,
    *,
    amount: Annotated[
        str,
        typer.Option(
            metavar="AMOUNT",
            help="In the account's currency, exact in its minor unit (12.50); negative = credit.",
        ),
    ],
    description: Annotated[str, typer.Option(metavar="TEXT", help="Shown on the invoice.")],
    period: Annotated[
        str,
        typer.Option(
            metavar="DATE",
            help=PERIOD_HELP[:-1] + ", whose invoice takes it; default: the account's oldest "
            "period not finalized.",
            show_default=False,
        ),
    ] = "",
    reason: Reason,
    actor: Actor = "cli",
) -> None:
    """Add a credit (negative amount) or a charge to a period's invoice, then push it to the
    period's Stripe draft. A credit larger than the invoice is refused."""
    adjusted = _run(
        lambda billsync: billsync.support.adjust(
            account,
            amount,
            description=description,
            actor=actor,
            reason=reason,
            period=_start(billsync, account, period) or None,
        ),
        account,
    )
    what = f"{adjusted.kind} of {format_money(abs(adjusted.amount), adjusted.currency)}"
    status = "" if adjusted.period_status is None else f" ({adjusted.period_status.value})"
    pushed = {
        True: "; in the Stripe draft now",
        False: f"; not in the Stripe draft yet ({adjusted.error}): the next sync pushes it",
        None: "",
    }[adjusted.pushed]
    console.print(
        f"{escape(account)}: {what} added to the invoice of the period starting "
        f"{adjusted.period_start}{status}, line {adjusted.line_id}{escape(pushed)}",
        highlight=False,
    )


@support_app.command("credit-note")
def support_credit_note(
    account: Account,
    *,
    period: Period,
    amount: Annotated[
        str,
        typer.Option(
            metavar="AMOUNT",
            help="In the account's currency (12.50); default: all that can still be credited.",
            show_default=False,
        ),
    ] = "",
    line: Annotated[
        int | None,
        typer.Option(
            metavar="LINE",
            help="A ledger line id of the invoice: credit that line only.",
            min=1,
            show_default=False,
        ),
    ] = None,
    destination: Annotated[
        str,
        typer.Option(
            metavar="WHERE",
            help="Where the part already paid goes: "
            + "; ".join(f"{name}: {what}" for name, what in DESTINATIONS.items())
            + ". What is still due is lowered first.",
        ),
    ] = "credit",
    stripe_reason: Annotated[
        str,
        typer.Option(
            metavar="REASON", help=f"Stripe's reason: {', '.join(REASONS)}.", show_default=False
        ),
    ] = "",
    memo: Annotated[
        str,
        typer.Option(
            metavar="TEXT", help="Printed on the credit note for the customer.", show_default=False
        ),
    ] = "",
    reason: Reason,
    actor: Actor = "cli",
) -> None:
    """Lower the period's finalized invoice with a credit note in Stripe."""
    issued = _run(
        lambda billsync: billsync.support.issue_credit_note(
            account,
            _start(billsync, account, period),
            actor=actor,
            reason=reason,
            amount=amount or None,
            line_id=line,
            reason_code=stripe_reason or None,
            destination=destination,
            memo=memo or None,
        ),
        account,
    )
    console.print(f"{escape(account)}: {escape(issued.summary())}", highlight=False)


@support_app.command("decide")
def support_decide(
    problem: Problem,
    decision: Annotated[
        str,
        typer.Argument(metavar="DECISION", help="accept (Stripe's version) or repush (ledger)"),
    ],
    *,
    reason: Reason,
    actor: Actor = "cli",
) -> None:
    """Resolve a drift problem."""
    decided = _run(
        lambda billsync: billsync.support.decide(problem, decision, actor=actor, reason=reason)
    ).decision
    console.print(f"problem {problem}: {'resolved' if decided.resolved else decided.error}")
    if not decided.resolved:
        raise typer.Exit(1)


def _problem(problem: int, action: str, reason: str, actor: str) -> bool:
    acted = _run(
        lambda billsync: billsync.support.problem_action(
            problem, action, actor=actor, reason=reason
        )
    )
    console.print(f"problem {problem}: {escape(acted.message)}", highlight=False)
    return acted.resolved


@support_app.command("retry-payment")
def support_retry_payment(problem: Problem, *, reason: Reason, actor: Actor = "cli") -> None:
    """Retry a failed payment now (the customer's default payment method); exit 1 when it is
    declined again."""
    if not _problem(problem, "retry_payment", reason, actor):
        raise typer.Exit(1)


@support_app.command("contacted")
def support_contacted(problem: Problem, *, reason: Reason, actor: Actor = "cli") -> None:
    """Note that the customer was contacted about a problem (it stays open)."""
    _problem(problem, "contacted", reason, actor)


@support_app.command("resolve")
def support_resolve(
    problem: Problem,
    *,
    reason: Annotated[
        str, typer.Option(metavar="TEXT", help="The note it is resolved with.", show_default=False)
    ],
    actor: Actor = "cli",
) -> None:
    """Resolve a problem with a note (a failed payment settled outside Stripe, a customer
    reached …)."""
    _problem(problem, "resolve", reason, actor)
