"""The customer's view of their bill: served from the ledger and the invoice mirror only —
no Stripe call on the read path — so it is fast, and shows usage not yet on the invoice,
labelled as such."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import Connection

from billsync.clock import Clock
from billsync.core import invoice_text
from billsync.core.commitment import commitment_on, top_up
from billsync.core.folding import (
    ADJUSTMENT_METRIC,
    BOOKED_METRICS,
    COMMITMENT_METRIC,
    CREDIT_METRIC,
)
from billsync.core.line_state import LineState, behind, charged, line_state, line_sync
from billsync.core.periods import Period, PeriodStatus
from billsync.core.rollup import DETAIL, RollupError
from billsync.repositories import credit_notes as credit_note_repository
from billsync.repositories import credits as credit_repository
from billsync.repositories import problems as problem_repository
from billsync.repositories import sync as sync_repository
from billsync.repositories import webhooks
from billsync.repositories.accounts import AccountRecord
from billsync.repositories.alerts import alerts_of, crossings_of
from billsync.repositories.credit_notes import CreditNoteRecord
from billsync.repositories.sync import SyncLine
from billsync.services.lines import LineService, LineView
from billsync.services.usage_export import UsageExports


@dataclass(frozen=True, slots=True)
class BillLine:
    line: LineView
    state: LineState  # core.line_state: in Stripe, pending, or Stripe's amount accepted
    charged: int  # what Stripe charges for the line (its own amount, when support accepted it)
    pending_amount: int  # what the invoice does not show yet

    @property
    def in_stripe(self) -> bool:
        """The invoice shows this line, at :attr:`charged`."""
        return self.state in (LineState.IN_STRIPE, LineState.ACCEPTED)

    @property
    def kind(self) -> str:
        """``usage``, ``late`` (a past period's usage), ``credit`` or ``charge`` (support's),
        ``commitment`` (the top-up to the account's minimum commitment)."""
        if self.line.metric == ADJUSTMENT_METRIC:
            return "credit" if self.line.amount < 0 else "charge"
        if self.line.metric == COMMITMENT_METRIC:
            return "commitment"
        if self.line.metric == CREDIT_METRIC:
            return "prepaid"
        return "late" if self.line.late_from is not None else "usage"


@dataclass(frozen=True, slots=True)
class StatementItem:
    """One item of the period's Stripe invoice: a line, or a roll-up of lines (core.rollup)."""

    number: int  # 1, 2, … in the invoice's order
    description: str  # the item's text on the invoice
    lines: tuple[str, ...]  # the keys of the ledger lines it carries
    amount: int  # their amounts summed


@dataclass(frozen=True, slots=True)
class PastInvoice:
    invoice_id: str
    number: str | None
    period_start: date | None
    status: str
    total: int
    amount_remaining: int
    paid_at: datetime | None
    hosted_invoice_url: str | None
    invoice_pdf: str | None
    last_payment_error: str | None
    discount: int = 0  # the coupons Stripe applied
    balance_applied: int = 0  # the customer's credit (negative) or debit Stripe applied
    carried: int = 0  # under Stripe's minimum charge: not charged, carried to the next invoice
    amount_due: int = 0  # what Stripe charged: total + balance applied, never below 0
    amount_paid: int = 0
    attempt_count: int = 0  # payment attempts Stripe made (counted from 1)
    finalized_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PeriodChoice:
    """A period the customer can look at: each one with usage, and the current one."""

    start: date
    end: date
    status: PeriodStatus | None  # None: the current period, no usage yet
    current: bool
    invoice_number: str | None
    invoice_status: str | None


@dataclass(frozen=True, slots=True)
class Bill:
    account: AccountRecord
    period: Period
    currency: str
    lines: list[BillLine]
    total: int
    pending_total: int
    projected_total: int
    invoices: list[PastInvoice]
    amount_due: int
    failed_payment: str | None
    # Per metric, the period's usage per UTC day (asked for with ``daily``).
    daily: dict[str, dict[str, Decimal]]
    synced_at: datetime | None  # when the invoice was last brought in step
    # The coupon Stripe applies to the period's draft, as of its last sync: the bill's total
    # is what Stripe charges (lines − discount).
    discount: int = 0
    subtotal: int = 0
    current: bool = True  # the period is the current one (else a past or future one)
    status: PeriodStatus | None = None  # its lifecycle state (None: no usage yet)
    invoice: PastInvoice | None = None  # its own invoice in Stripe, draft included
    periods: tuple[PeriodChoice, ...] = ()  # newest first
    usage_removed: bool = False  # retention removed the period's raw events (lines are kept)
    # The account's credit notes (support lowers a finalized invoice with one), newest first.
    credit_notes: tuple[CreditNoteRecord, ...] = ()
    # The account's minimum commitment for the period (minor units; None: none), and what its
    # usage lines add up to so far (core.commitment).
    commitment: int | None = None
    used: int = 0
    # What the account's prepaid credit grants have left (not expired); None: it has none.
    credit_balance: int | None = None
    # The account's spend alerts: (what it is, the thresholds crossed in this period).
    alerts: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # The items of the period's Stripe invoice (core.rollup): each line its own (``detail``)
    # or, past Stripe's 250 items, the roll-up level named.
    rollup_level: str = DETAIL
    items: tuple[StatementItem, ...] = ()

    @property
    def rolled_up(self) -> bool:
        return self.rollup_level != DETAIL

    def item_of(self) -> dict[str, StatementItem]:
        """Each line's (by key) item on the invoice."""
        return {key: item for item in self.items for key in item.lines}

    @property
    def shortfall(self) -> int:
        """What the period would be topped up by if it closed now."""
        return 0 if self.commitment is None else top_up(self.commitment, self.used)

    @property
    def pending_lines(self) -> int:
        return sum(1 for line in self.lines if not line.in_stripe)


class BillingView:
    def __init__(self, lines: LineService, clock: Clock) -> None:
        self.lines = lines
        self.clock = clock
        self.exports = UsageExports(lines)

    def bill(
        self,
        connection: Connection,
        account: AccountRecord,
        which: str | date = "current",
        *,
        daily: bool = False,
    ) -> Bill:
        """The bill of the period ``which`` (``current`` or a date inside it): its lines, each
        with its sync state, its invoice and payments; the account's past invoices, amount
        due and failed payment whichever period is shown."""
        current = self.lines.period_of(account, "current")
        view = self.lines.period_lines(connection, account, which)
        period = view.period
        synced = {
            line.key: line
            for line in sync_repository.lines_of(connection, account.id, [period.start])
        }
        level, items = self._items(connection, account, list(synced.values()))
        accepted = problem_repository.accepted_amounts(connection, account.id)
        bill_lines = []
        for line in view.lines:
            row = synced.get(line.key)
            sync = line_sync(
                line.amount, line.version,
                0 if row is None else row.synced_version,
                None if row is None else row.synced_amount,
                accepted=None if row is None else accepted.get(row.id),
            )  # fmt: skip
            bill_lines.append(BillLine(line, line_state(sync), charged(sync), behind(sync)))
        periods = sync_repository.periods_with_status(
            connection, list(PeriodStatus), account_id=account.id
        )
        shown = next((p for p in periods if p.start == period.start), None)
        mirrors = webhooks.mirrors_of(connection, account.id)
        own = [m for m in mirrors if m["period_start"] == period.start]
        # The period's invoice: the one billsync made for it (a voided one may have been
        # replaced), else the newest Stripe reported for the period.
        mirror = next(
            (
                m
                for m in own
                if shown is not None and m["stripe_invoice_id"] == shown.stripe_invoice_id
            ),
            own[0] if own else None,
        )
        # What Stripe charges: the ledger's amounts, with the ones support accepted as Stripe
        # has them, less the coupon Stripe applies to the draft — the bill and the invoice
        # agree to the cent (once the draft holds every line).
        subtotal = sum(item.charged for item in bill_lines)
        discount = 0 if mirror is None else min(int(mirror["discount"] or 0), max(subtotal, 0))
        total = subtotal - discount
        notes = credit_note_repository.of_account(connection, account.id)
        lowered: dict[str, int] = {}  # per invoice: what credit notes took off the amount due
        for note in notes:
            if note.status == "issued":
                lowered[note.stripe_invoice_id] = (
                    lowered.get(note.stripe_invoice_id, 0) + note.pre_payment_amount
                )
        invoices = [
            _invoice(row, lowered)
            for row in mirrors
            if row["status"] != "draft" and row["period_start"] != current.start
        ]
        due = [i for i in invoices if i.status in ("open", "uncollectible")]
        failed = next((i.last_payment_error for i in due if i.last_payment_error), None)
        grants = credit_repository.grants_of(connection, account.id)
        crossings = crossings_of(connection, account.id)
        chart: dict[str, dict[str, Decimal]] = {}
        if daily:
            chart, removed = self.exports.daily(connection, account, period)
        else:
            removed = self.exports.removed(connection, account, period)
        return Bill(
            account=account,
            period=period,
            currency=view.currency,
            lines=bill_lines,
            total=total,
            pending_total=sum(line.pending_amount for line in bill_lines),
            projected_total=self._projection(
                period, total, sum(i.charged for i in bill_lines if i.line.is_period_usage)
            ),
            invoices=invoices,
            amount_due=sum(i.amount_remaining for i in due),
            failed_payment=failed,
            daily=chart,
            synced_at=(sync_repository.sync_row(connection, account.id) or {}).get(
                "last_synced_at"
            ),
            discount=discount,
            subtotal=subtotal,
            current=period == current,
            status=None if shown is None else shown.status,
            invoice=None if mirror is None else _invoice(mirror, lowered),
            periods=_choices(periods, mirrors, current),
            usage_removed=removed,
            credit_notes=tuple(notes),
            commitment=commitment_on(account.commitments, period.start),
            credit_balance=credit_repository.balance(grants, self.clock.now()) if grants else None,
            alerts=tuple(
                (
                    alert.describe(account.currency),
                    tuple(
                        c.threshold_label
                        for c in crossings
                        if c.alert_id == alert.id and c.period_start == period.start
                    ),
                )
                for alert in alerts_of(connection, account.id)
            ),
            used=sum(line.amount for line in view.lines if line.metric not in BOOKED_METRICS),
            rollup_level=level,
            items=items,
        )

    def _items(
        self, connection: Connection, account: AccountRecord, lines: list[SyncLine]
    ) -> tuple[str, tuple[StatementItem, ...]]:
        """The period's invoice items as the sync engine makes them (the lines left out of
        the draft are not on it)."""
        left_out = problem_repository.lines_left_out(connection, account.id)
        carried = [line for line in lines if line.id not in left_out]
        catalog = self.lines.catalog
        try:
            rollup = invoice_text.invoice_items(catalog, carried)
        except RollupError:
            return DETAIL, ()
        by_id = {line.id: line for line in carried}
        return rollup.level, tuple(
            StatementItem(
                number,
                invoice_text.item_text(catalog, item, [by_id[i] for i in item.line_ids]),
                tuple(by_id[i].key for i in item.line_ids),
                item.amount,
            )
            for number, item in enumerate(rollup.items, start=1)
        )

    def _projection(self, period: Period, total: int, usage: int) -> int:
        """The period's total if its usage goes on at the pace so far (linear). Only usage
        grows: a credit or charge added by support, or a past period's late usage, counts
        once, as it is. Never less than what is already owed."""
        now = self.clock.now()
        elapsed = (now - period.start_at).total_seconds()
        length = (period.end_at - period.start_at).total_seconds()
        if elapsed <= 0 or now >= period.end_at:
            return total
        projected = Decimal(usage) * Decimal(length) / Decimal(elapsed) + (total - usage)
        return max(total, int(projected.to_integral_value(rounding=ROUND_HALF_UP)))


def _invoice(row: dict[str, Any], lowered: dict[str, int]) -> PastInvoice:
    return PastInvoice(
        invoice_id=row["stripe_invoice_id"], number=row["number"],
        period_start=row["period_start"], status=row["status"], total=row["total"],
        amount_remaining=row["amount_remaining"], paid_at=row["paid_at"],
        hosted_invoice_url=row["hosted_invoice_url"], invoice_pdf=row["invoice_pdf"],
        last_payment_error=row["last_payment_error"],
        discount=int(row["discount"] or 0),
        amount_paid=int(row["amount_paid"] or 0),
        attempt_count=int(row["attempt_count"] or 0),
        finalized_at=row["finalized_at"],
        **balance_effects(row, lowered.get(row["stripe_invoice_id"], 0)),
    )  # fmt: skip


def _choices(
    periods: list[sync_repository.PeriodRow], mirrors: list[dict[str, Any]], current: Period
) -> tuple[PeriodChoice, ...]:
    """Every period with usage, and the current one, newest first, with its invoice."""
    by_start: dict[date, PeriodChoice] = {}
    for period in periods:
        mirror = next(
            (m for m in mirrors if m["stripe_invoice_id"] == period.stripe_invoice_id),
            next((m for m in mirrors if m["period_start"] == period.start), None),
        )
        by_start[period.start] = PeriodChoice(
            period.start, period.end, period.status, period.start == current.start,
            None if mirror is None else mirror["number"],
            None if mirror is None else mirror["status"],
        )  # fmt: skip
    if current.start not in by_start:
        by_start[current.start] = PeriodChoice(current.start, current.end, None, True, None, None)
    return tuple(sorted(by_start.values(), key=lambda choice: choice.start, reverse=True))


def balance_effects(row: Mapping[str, object], lowered: int = 0) -> dict[str, int]:
    """What the customer's balance did to a finalized invoice (docs.stripe.com/billing/
    customer/balance): a credit lowers the amount due down to 0 (the rest stays on the
    balance), a debit is added in full; an amount due under Stripe's minimum charge is not
    charged but carried to the next invoice (docs.stripe.com/api/invoices/object). ``lowered``:
    what credit notes took off the amount due since (their ``pre_payment_amount``)."""
    total = int(str(row["total"] or 0))
    starting = int(str(row["starting_balance"] or 0))
    applied = max(starting, -total) if starting < 0 else starting
    due = int(str(row["amount_due"] or 0))
    owed = max(total + applied, 0) - lowered
    return {
        "balance_applied": applied,
        "amount_due": due,
        "carried": owed - due if owed > due else 0,
    }


# Past the number of bills kept, the stale ones are dropped (each is at most a second fresh).
MAX_CACHED_BILLS = 4096


class BillCache:
    """Rendered bills by account and period, dropped when the account changes in this process
    (ingest, sync, webhooks) and after ``ttl`` seconds in any case (changes made by other
    processes, and the projection moving with time). One computation per bill at a time:
    requests arriving meanwhile wait for it instead of all computing the same bill."""

    def __init__(self, ttl: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._entries: dict[tuple[str, str], tuple[float, int, bytes]] = {}
        self._computing: dict[tuple[str, str], threading.Event] = {}
        self._generation: dict[str, int] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def peek(self, account_id: str, period: str = "current") -> bytes | None:
        """The cached bill if it is fresh, without waiting or computing (the event loop's
        fast path). ``period``: ``current`` or the start of the period asked for."""
        with self._lock:
            entry = self._entries.get((account_id, period))
            if (
                entry is not None
                and entry[1] == self._generation.get(account_id, 0)
                and self._clock() - entry[0] < self.ttl
            ):
                self.hits += 1
                return entry[2]
        return None

    def get(self, account_id: str, load: Callable[[], bytes], period: str = "current") -> bytes:
        key = (account_id, period)
        while True:
            now = self._clock()
            with self._lock:
                generation = self._generation.get(account_id, 0)
                entry = self._entries.get(key)
                if entry is not None and entry[1] == generation and now - entry[0] < self.ttl:
                    self.hits += 1
                    return entry[2]
                running = self._computing.get(key)
                if running is None:
                    running = self._computing[key] = threading.Event()
                    break
            running.wait(5.0)  # someone is computing this very bill: take theirs
        self.misses += 1
        try:
            body = load()
            with self._lock:
                self._entries[key] = (now, generation, body)
                if len(self._entries) > MAX_CACHED_BILLS:  # drop the stale ones
                    for stale in [k for k, e in self._entries.items() if now - e[0] >= self.ttl]:
                        del self._entries[stale]
            return body
        finally:
            with self._lock:
                self._computing.pop(key, None)
            running.set()

    def forget(self, account_ids: frozenset[str] | None) -> None:
        with self._lock:
            if account_ids is None:
                self._entries.clear()
                return
            for account_id in account_ids:
                self._generation[account_id] = self._generation.get(account_id, 0) + 1
