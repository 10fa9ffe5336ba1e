"""What the console shows: search, and everything about one account in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from billsync.core.event_storage import events_retained
from billsync.core.line_state import LineState, charged, line_state, line_sync
from billsync.core.periods import PeriodStatus
from billsync.repositories import console, problems, webhooks
from billsync.repositories import sync as sync_repository
from billsync.repositories.accounts import AccountRecord, get_account
from billsync.repositories.event_storage import retention_mark
from billsync.repositories.problems import ProblemRecord
from billsync.repositories.sync import PeriodRow, SyncLine


def search(connection: Connection, query: str, limit: int = 50) -> list[dict[str, Any]]:
    """Accounts by id, name, email or Stripe customer id; invoices by number or id."""
    text = query.strip()
    if not text:
        return []
    return console.search_accounts(connection, text, limit) + console.search_invoices(
        connection, text, limit
    )


@dataclass(frozen=True, slots=True)
class LineRow:
    line: SyncLine
    state: str  # in step | pending | drift
    problem: ProblemRecord | None


@dataclass(frozen=True, slots=True)
class PeriodView:
    period: PeriodRow
    lines: list[LineRow]
    ledger_total: int
    stripe_total: int
    mirror: dict[str, Any] | None
    # Retention removed the raw events of this finalized period: the lines are all there is.
    events_retained: bool = False


@dataclass(frozen=True, slots=True)
class AccountView:
    account: AccountRecord
    sync: dict[str, Any]
    periods: list[PeriodView]
    problems: list[ProblemRecord]
    audit: list[dict[str, Any]]
    mirrors: list[dict[str, Any]]
    intents: list[dict[str, Any]]
    events: list[dict[str, Any]]


STATE_LABELS = {
    LineState.IN_STRIPE: "in step",
    LineState.PENDING: "pending",
    LineState.ACCEPTED: "accepted",  # Stripe's amount, as support accepted it
    LineState.DRIFT: "drift",
}


def account_view(connection: Connection, account_id: str) -> AccountView | None:
    account = get_account(connection, account_id)
    if account is None:
        return None
    all_periods = sync_repository.periods_with_status(
        connection, list(PeriodStatus), account_id=account_id
    )
    recent = sorted(all_periods, key=lambda p: p.start, reverse=True)[:3]
    open_problems = problems.open_problems(connection, account_id)
    by_line = {p.line_id: p for p in open_problems if p.line_id is not None}
    mirrors = webhooks.mirrors_of(connection, account_id)
    retained_before = retention_mark(connection).retained_before
    views = []
    accepted = problems.accepted_amounts(connection, account_id)
    for period in recent:
        lines = sync_repository.lines_of(connection, account_id, [period.start])
        rows = []
        in_stripe = 0  # what Stripe's draft holds, as far as billsync knows
        for line in lines:
            problem = by_line.get(line.id)
            sync = line_sync(
                line.amount, line.version, line.synced_version, line.synced_amount,
                accepted=accepted.get(line.id), drift=problem is not None,
            )  # fmt: skip
            state = line_state(sync)
            rows.append(LineRow(line, STATE_LABELS[state], problem))
            in_stripe += charged(sync) if state is LineState.ACCEPTED else line.synced_amount or 0
        mirror = next(
            (m for m in mirrors if m["stripe_invoice_id"] == period.stripe_invoice_id), None
        )
        views.append(
            PeriodView(
                period,
                rows,
                sum(line.amount for line in lines),
                in_stripe,
                mirror,
                events_retained(period.status, period.finalized_at, retained_before),
            )
        )
    return AccountView(
        account=account,
        sync=sync_repository.sync_row(connection, account_id) or {},
        periods=views,
        problems=open_problems,
        audit=console.trail(connection, account_id, limit=50),
        mirrors=mirrors,
        intents=console.recent_intents(connection, account_id),
        events=console.events_of_invoices(connection, [m["stripe_invoice_id"] for m in mirrors]),
    )
