"""``billsync support …``: the console's actions for scripts, through the same service
(``services.support``): the same checks, and the same audit entries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

import typer
from rich.markup import escape

from billsync.bootstrap import Billsync
from billsync.cli.common import console, fail, open_billsync
from billsync.errors import BillsyncError, InvalidRequest
from billsync.services.support import StripeNotConfigured

support_app = typer.Typer(
    help="Support actions for scripts (audited like the console's).", no_args_is_help=True
)
Reason = Annotated[str, typer.Option(help="Why: written to the audit log.")]
Actor = Annotated[str, typer.Option(help="Who acts (for the audit log).")]
Period = Annotated[str, typer.Option(help="The period's start date, YYYY-MM-DD.")]

T = TypeVar("T")
# Refusals the command line must fix: exit code 2, like a usage error.
USAGE_ERRORS = (InvalidRequest, StripeNotConfigured)
UNKNOWN = ("unknown_action", "unknown_decision")


def _run(action: Callable[[Billsync], T]) -> T:
    """Run a support action; a refusal is printed, with exit code 2 for what the command line
    must fix (a missing reason, a bad period or amount, an unknown decision, no Stripe key) and 1
    otherwise."""
    billsync = open_billsync()
    try:
        return action(billsync)
    except BillsyncError as error:
        usage = isinstance(error, USAGE_ERRORS) or error.code in UNKNOWN
        raise fail(error.message, code=2 if usage else 1) from None
    finally:
        billsync.close()


def _act(account: str, action: str, period: str | None, reason: str, actor: str) -> None:
    _run(
        lambda billsync: billsync.support.act(
            action, account, actor=actor, reason=reason, period=period
        )
    )
    console.print(f"{escape(account)}: {action} done")


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
    amount: Annotated[
        str,
        typer.Option(
            help="In the account's currency, exact in its minor unit (12.50); negative = credit."
        ),
    ],
    description: Annotated[str, typer.Option(help="Shown on the invoice.")],
    reason: Reason = "",
    actor: Actor = "cli",
) -> None:
    """Add a credit (negative amount) or a charge to the account's current invoice."""
    adjusted = _run(
        lambda billsync: billsync.support.adjust(
            account, amount, description=description, actor=actor, reason=reason
        )
    )
    console.print(
        f"{escape(account)}: line {adjusted.line_id} of {adjusted.amount} minor units added"
    )


@support_app.command("decide")
def support_decide(
    problem: int,
    decision: Annotated[str, typer.Argument(help="accept (Stripe's version) or repush (ledger)")],
    reason: Reason = "",
    actor: Actor = "cli",
) -> None:
    """Resolve a drift problem."""
    decided = _run(
        lambda billsync: billsync.support.decide(problem, decision, actor=actor, reason=reason)
    ).decision
    console.print(f"problem {problem}: {'resolved' if decided.resolved else decided.error}")
    if not decided.resolved:
        raise typer.Exit(1)
