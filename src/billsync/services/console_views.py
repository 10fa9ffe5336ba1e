"""What the console shows: search, and everything about one account in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from billsync.core.catalog import Catalog
from billsync.core.display import format_money, shown_quantity
from billsync.core.event_storage import events_retained
from billsync.core.folding import (
    ADJUSTMENT_METRIC,
    BOOKED_METRICS,
    COMMITMENT_METRIC,
    CREDIT_METRIC,
)
from billsync.core.line_state import LineState, charged, line_state, line_sync
from billsync.core.periods import PeriodStatus
from billsync.core.pricing import applied_price
from billsync.repositories import console, problems, webhooks
from billsync.repositories import credit_notes as credit_note_repository
from billsync.repositories import credits as credit_repository
from billsync.repositories import sync as sync_repository
from billsync.repositories.accounts import AccountRecord, get_account
from billsync.repositories.alerts import Crossing, alerts_of, crossings_of
from billsync.repositories.credit_notes import CreditNoteRecord
from billsync.repositories.credits import GrantRecord
from billsync.repositories.event_storage import retention_mark
from billsync.repositories.problems import ProblemRecord
from billsync.repositories.sync import PeriodRow, SyncLine
from billsync.services.adjustments import ADJUSTABLE
from billsync.services.billing_view import balance_effects


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
    name: str = ""  # what the line is, for a person: the metric's name and its grouping
    quantity: str = ""  # in the catalog's display unit ("29.90 hours")
    # "credit" or "charge" for support's adjustments, None for usage
    kind: str | None = None
    # Which price rates it ("catalog price", "negotiated rate from 2026-12-01"; core.pricing)
    price: str = ""


@dataclass(frozen=True, slots=True)
class PeriodView:
    period: PeriodRow
    lines: list[LineRow]
    ledger_total: int
    stripe_total: int
    mirror: dict[str, Any] | None
    # Retention removed the raw events of this finalized period: the lines are all there is.
    events_retained: bool = False
    credit_notes: list[CreditNoteRecord] = field(default_factory=list)

    @property
    def stripe_adds(self) -> list[tuple[str, int]]:
        """What Stripe adds to the invoice besides the lines, each as its own row for support:
        a coupon's discount, the customer's balance applied, an amount carried under Stripe's
        minimum charge, and what is due (the customer's page shows the same)."""
        if self.mirror is None:
            return []
        discount = int(self.mirror.get("discount") or 0)
        lowered = sum(note.pre_payment_amount for note in self.credit_notes)
        effects = balance_effects(self.mirror, lowered)
        rows = []
        if discount:
            rows.append(("Discount (coupon)", -discount))
        if effects["balance_applied"]:
            rows.append(("Customer balance applied", effects["balance_applied"]))
        if effects["carried"]:
            rows.append(("Under Stripe's minimum charge: carried to the next invoice",
                         -effects["carried"]))  # fmt: skip
        if rows and self.mirror.get("status") != "draft":
            rows.append(("Amount due", effects["amount_due"]))
        return rows

    @property
    def adjustable(self) -> bool:
        """Support can still add a credit or a charge to this period's invoice."""
        return self.period.status in ADJUSTABLE and self.period.finalize_requested_at is None

    @property
    def creditable_lines(self) -> list[LineRow]:
        """The lines of a finalized invoice a credit note can lower, one by one."""
        return [
            row
            for row in self.lines
            if row.line.stripe_line_item_id is not None and row.line.amount > 0
        ]


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
    # Every period whose invoice can still take a credit or a charge, oldest first (not only
    # the few shown above).
    adjustable: list[PeriodRow] = field(default_factory=list)
    credit_notes: list[CreditNoteRecord] = field(default_factory=list)
    # Per open problem, the latest audit entry that noted the customer was contacted.
    contacted: dict[int, dict[str, Any]] = field(default_factory=dict)
    # The spend alerts (what each is) and every threshold crossed, with its webhook's state.
    alerts: dict[int, str] = field(default_factory=dict)
    crossings: list[Crossing] = field(default_factory=list)
    # Prepaid credit: every grant (oldest first) and what is left to draw on.
    grants: list[GrantRecord] = field(default_factory=list)
    credit_left: int = 0


STATE_LABELS = {
    LineState.IN_STRIPE: "in step",
    LineState.PENDING: "pending",
    LineState.ACCEPTED: "accepted",  # Stripe's amount, as support accepted it
    LineState.DRIFT: "drift",
}


# What support's console calls the lines billsync books itself.
BOOKED_KINDS = {COMMITMENT_METRIC: "commitment", CREDIT_METRIC: "prepaid"}


def line_name(line: SyncLine, catalog: Catalog | None) -> str:
    """A line as a person names it: a credit or charge by its description, usage by its
    metric's name and the values it is grouped by (a region …), late usage with its period."""
    if line.metric in BOOKED_METRICS:
        return str(line.grouping.get("description", "Adjustment"))
    metric = None if catalog is None else catalog.metrics.get(line.metric)
    name = line.metric if metric is None else metric.description
    grouping = ", ".join(f"{key} {value}" for key, value in sorted(line.grouping.items()))
    text = f"{name} ({grouping})" if grouping else name
    if line.late_from is not None:
        text += f" — late usage of the period starting {line.late_from.isoformat()}"
    return text


def account_view(
    connection: Connection,
    account_id: str,
    catalog: Catalog | None = None,
    now: datetime | None = None,
) -> AccountView | None:
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
    notes = credit_note_repository.of_account(connection, account_id)
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
            metric = None if catalog is None else catalog.metrics.get(line.metric)
            adjustment = line.metric == ADJUSTMENT_METRIC
            booked = line.metric in BOOKED_METRICS
            applied = (
                None
                if metric is None
                else applied_price(
                    metric, account.rate_cards, account.currency, line.late_from or period.start
                )
            )
            rows.append(
                LineRow(
                    line,
                    STATE_LABELS[state],
                    problem,
                    line_name(line, catalog),
                    "" if booked else shown_quantity(line.quantity, metric).label,
                    ("credit" if line.amount < 0 else "charge")
                    if adjustment
                    else BOOKED_KINDS.get(line.metric),
                    "" if applied is None else applied.label,
                )
            )
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
                [n for n in notes if n.stripe_invoice_id == period.stripe_invoice_id],
            )
        )
    audit = console.trail(connection, account_id, limit=50)
    grants = credit_repository.grants_of(connection, account_id)
    contacted: dict[int, dict[str, Any]] = {}
    for entry in reversed(audit):  # oldest first: the latest one stays
        if entry["action"] == "problem.contacted":
            contacted[int(entry["detail"].get("problem", 0))] = entry
    return AccountView(
        account=account,
        sync=sync_repository.sync_row(connection, account_id) or {},
        periods=views,
        problems=open_problems,
        audit=audit,
        mirrors=mirrors,
        intents=console.recent_intents(connection, account_id),
        events=console.events_of_invoices(connection, [m["stripe_invoice_id"] for m in mirrors]),
        adjustable=[
            period
            for period in sorted(all_periods, key=lambda p: p.start)
            if period.status in ADJUSTABLE and period.finalize_requested_at is None
        ],
        credit_notes=notes,
        contacted=contacted,
        alerts={a.id: a.describe(account.currency) for a in alerts_of(connection, account_id)},
        crossings=crossings_of(connection, account_id),
        grants=grants,
        credit_left=0 if now is None else credit_repository.balance(grants, now),
    )


def describe_entry(entry: dict[str, Any], currency: str) -> str:
    """An audit entry's action as a sentence: what was done, to what, for how much."""
    action: str = entry["action"]
    detail: dict[str, Any] = entry.get("detail") or {}
    outcome = detail.get("outcome") or {}
    if action.startswith("adjustment."):
        amount = abs(int(detail.get("amount", 0)))
        text = f"{action.removeprefix('adjustment.').title()} of {format_money(amount, currency)}"
        text += f" ({detail.get('description', '')})"
        if "pushed" in outcome:
            text += "; in the Stripe draft" if outcome["pushed"] else "; not pushed yet"
        return text
    if action == "credit_note.issue":
        text = f"Credit note of {format_money(int(detail.get('amount', 0)), currency)}"
        if outcome.get("number"):
            text += f" ({outcome['number']})"
        elif outcome.get("error"):
            text += f" — not issued: {outcome['error']}"
        return text
    if action == "credit_grant.created":
        return f"Prepaid credit of {detail.get('amount', '?')} {currency.upper()} granted, " + (
            f"expiring {str(detail.get('expires_at', '?'))[:10]}"
        )
    if action == "account.update" and "minimum_amount_from" in detail:
        minimum = detail.get("minimum_amount")
        return (
            f"Minimum commitment {'none' if minimum is None else f'{minimum} {currency.upper()}'}"
            f" from the period starting {detail['minimum_amount_from']}"
        )
    if action == "payment.retry":
        if outcome.get("paid"):
            return "Payment retried: paid"
        return "Payment retried" + (f": {outcome['error']}" if outcome.get("error") else "")
    labels: dict[str, str] = {
        "period.hold": "Period held",
        "period.release": "Period released",
        "period.approve": "Period approved and finalized",
        "account.sync": "Synced now",
        "account.sync_policy": "Sync policy set",
        "drift.accept": "Drift: Stripe's version accepted",
        "drift.repush": "Drift: the ledger re-pushed",
        "problem.contacted": f"Customer contacted (problem {detail.get('problem')})",
        "problem.resolve": f"Problem {detail.get('problem')} resolved",
    }
    return labels.get(action, action)
