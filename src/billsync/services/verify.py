"""``billsync verify``: the invariants, checked end to end against the ledger and Stripe.

Read-only. What is checked:

In the ledger (no Stripe call):

- **every accepted event is counted in exactly one line**: each stored event points at a line
  of its own account; each line's quantity is the exact sum of its events' quantities and its
  event count is their number (support's adjustments, which have no events, excepted — and
  lines of periods whose raw events retention removed: their totals are all that is left, and
  they are counted as ``retained_lines``);
- **late usage landed where the rule says**: an event lands on a line of its own metric, on its
  own period while that period accepts usage, otherwise on the next period that does, as a line
  labelled ``late_from`` its original period. Statuses only move forward, so an event found on a
  later period whose original (or any period between) still accepts usage was misplaced, and so
  is an event on its own period's line labelled late;
- **every usage line's amount is its quantity rated once** (with the catalog billsync runs
  with, when given): a late line at the marginal rates of its original period, after what that
  period already billed — its own line and its late usage on earlier invoices — so graduated
  tiers are never granted twice (``line_amount_differs``).

Against Stripe, for every account with a Stripe customer:

- **each period's invoice (draft or final) equals the ledger to the cent**: every ledger line
  billsync has confirmed is on the invoice with the ledger's amount; no line of billsync's is on
  it that the period does not have; no line is there that billsync did not put there; once
  every line is in step, the invoice's total is the ledger's total for the period;
- **no billsync line exists twice in Stripe**: on one invoice or across the customer's
  invoices;
- **no invoice of billsync's is unknown to the ledger** (a second invoice for a period is a
  second charge);
- **a period and its invoice agree on being final**: finalized in the ledger ⇔ no longer a
  draft in Stripe.

Not violations: lines whose latest amount has not been pushed yet in a period still being
synced (``pending_lines``, ``core.line_state``: the next sync brings them in step), and
differences a person accepted in the console ("accepted Stripe's version"), which are listed as
``accepted`` — with the invoice's total when those differences add up to it exactly. What
Stripe's own rules do to an invoice beyond its lines is listed as ``explained``: a customer's
coupon, and credit notes (``credit_noted``: issued after finalization, they lower what is owed
or give it back, and leave the invoice's total and lines as the ledger made them).
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from functools import partial
from typing import Any, TypeVar

from billsync.core import drift
from billsync.core.aggregation import Observation, period_quantities
from billsync.core.catalog import Aggregation, Catalog, Metric
from billsync.core.commitment import commitment_on, top_up
from billsync.core.event_storage import events_retained
from billsync.core.folding import BOOKED_METRICS, COMMITMENT_METRIC, CREDIT_METRIC, line_key
from billsync.core.installation import is_ours
from billsync.core.money import format_minor
from billsync.core.periods import PeriodStatus
from billsync.core.pricing import RateCard, applied_price
from billsync.core.rating import late_line_amount
from billsync.db.database import Database
from billsync.repositories import credits as credit_repository
from billsync.repositories import installation as installation_repository
from billsync.repositories import verify as repository
from billsync.repositories.event_storage import retention_mark
from billsync.repositories.sync import PeriodRow
from billsync.repositories.verify import EventRow, LedgerLine
from billsync.sync.budget import Lane
from billsync.sync.guard import CallGuard
from billsync.sync.port import RemoteInvoice, StripeFailure, StripePort, endpoint_of

log = logging.getLogger(__name__)
T = TypeVar("T")

# Ledger
EVENT_WITHOUT_LINE = "event_without_line"
EVENT_ON_WRONG_LINE = "event_on_wrong_line"
LINE_QUANTITY_DIFFERS = "line_quantity_differs"
COMMITMENT_DIFFERS = "commitment_differs"
CREDIT_DIFFERS = "credit_differs"
LINE_EVENT_COUNT_DIFFERS = "line_event_count_differs"
LINE_AMOUNT_DIFFERS = "line_amount_differs"
LATE_USAGE_MISPLACED = "late_usage_misplaced"
# Stripe
MISSING_IN_STRIPE = drift.MISSING_IN_STRIPE
REMOVED_IN_STRIPE = drift.REMOVED_IN_STRIPE
AMOUNT_DIFFERS = drift.AMOUNT_DIFFERS
DUPLICATE_IN_STRIPE = drift.DUPLICATE_IN_STRIPE
LINE_TWICE_IN_STRIPE = "line_twice_in_stripe"  # one line on two of the customer's invoices
FOREIGN_LINE = drift.LINE_OF_ANOTHER_PERIOD
EXTRA_IN_STRIPE = drift.EXTRA_IN_STRIPE
TOTAL_DIFFERS = "total_differs"
INVOICE_MISSING = "invoice_missing"
UNKNOWN_INVOICE = "unknown_invoice"
NOT_FINAL_IN_STRIPE = "finalized_in_ledger_only"
FINAL_IN_STRIPE_ONLY = "finalized_in_stripe_only"
INVOICE_VOIDED = "invoice_voided"
NO_INVOICE = "finalized_without_invoice"
# Explained, not violations: what Stripe's own rules did to an invoice after the ledger's lines.
CREDIT_NOTED = "credit_noted"

DRAFT_STATUSES = (PeriodStatus.OPEN, PeriodStatus.CLOSING, PeriodStatus.REVIEW, PeriodStatus.HELD)


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str
    account: str
    detail: str
    period_start: date | None = None
    line_id: int | None = None
    event_id: str | None = None
    stripe_invoice_id: str | None = None
    stripe_line_item_id: str | None = None
    ledger_amount: int | None = None
    stripe_amount: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["period_start"] = None if self.period_start is None else self.period_start.isoformat()
        return {key: value for key, value in data.items() if value is not None}


@dataclass
class VerifyReport:
    accounts: int = 0
    periods: int = 0
    invoices: int = 0
    lines: int = 0
    events: int = 0
    pending_lines: int = 0
    retained_lines: int = 0  # raw events removed by retention: totals not checked against them
    violations: list[Violation] = field(default_factory=list)
    accepted: list[Violation] = field(default_factory=list)
    # Differences Stripe's own rules account for (a customer's coupon): not violations.
    explained: list[Violation] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations and not self.errors

    def by_kind(self) -> dict[str, int]:
        return dict(sorted(Counter(v.kind for v in self.violations).items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": {
                "accounts": self.accounts,
                "periods": self.periods,
                "invoices": self.invoices,
                "lines": self.lines,
                "events": self.events,
            },
            "pending_lines": self.pending_lines,
            "retained_lines": self.retained_lines,
            "violations": [v.to_dict() for v in self.violations],
            "violations_by_kind": self.by_kind(),
            "accepted": [v.to_dict() for v in self.accepted],
            "explained": [v.to_dict() for v in self.explained],
            "errors": self.errors,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


@dataclass(frozen=True, slots=True)
class _Accepted:
    """Differences a person decided to keep: by line, and by Stripe object."""

    lines: frozenset[tuple[date | None, int]]
    objects: frozenset[str]

    def covers(self, violation: Violation) -> bool:
        if violation.line_id is not None and (violation.period_start, violation.line_id) in (
            self.lines
        ):
            return True
        return any(
            oid is not None and oid in self.objects
            for oid in (violation.stripe_line_item_id, violation.stripe_invoice_id)
        )


class Verifier:
    def __init__(
        self,
        database: Database,
        gateway: StripePort | None,
        guard: CallGuard | None = None,
        *,
        lane: Lane = Lane.INTERVAL,
        namespace: str | None = None,
        catalog: Catalog | None = None,
    ) -> None:
        self.database = database
        self.gateway = gateway
        self.guard = guard
        self.lane = lane
        # Whose objects are ours (core.installation): given, or the database's own.
        self.namespace = namespace
        # The prices lines are re-rated with (their amounts checked when given).
        self.catalog = catalog

    def verify(self, account_id: str | None = None) -> VerifyReport:
        report = VerifyReport()
        with self.database.read() as connection:
            accounts = repository.accounts(connection, account_id)
            periods = repository.periods(connection, account_id)
            lines = repository.ledger_lines(connection, account_id)
            accepted = repository.accepted_differences(connection, account_id)
            if self.namespace is None:
                self.namespace = installation_repository.get(connection).namespace
        report.accounts = len(accounts)
        report.periods = sum(len(p) for p in periods.values())
        report.lines = len(lines)
        aggregated = {
            metric.id: metric
            for metric in (self.catalog.metrics.values() if self.catalog is not None else ())
            if metric.aggregation is not Aggregation.SUM
        }
        with self.database.read() as connection:
            expected, linked = (
                _aggregated_quantities(
                    repository.observed_events(connection, account_id, list(aggregated)),
                    lines,
                    aggregated,
                )
                if aggregated
                else ({}, {})
            )
            self._check_events(
                repository.events(connection, account_id),
                lines,
                periods,
                # Read once the events are: a retention run records its cutoff before it
                # removes anything, so every removal seen here is covered by what is read.
                lambda: retention_mark(connection).retained_before,
                report,
                expected=expected,
                linked=linked,
            )
        _check_commitments(accounts, periods, lines, report)
        with self.database.read() as connection:
            grants = credit_repository.grants_by_account(connection, account_id)
        _check_credits(grants, lines, report)
        if self.catalog is not None:
            cards = {account.id: account.rate_cards for account in accounts}
            self._check_amounts(self.catalog, lines, cards, report)
        if self.gateway is not None:
            by_account: dict[str, list[LedgerLine]] = defaultdict(list)
            for line in lines.values():
                by_account[line.account_id].append(line)
            for account in accounts:
                if account.stripe_customer_id is None:
                    report.pending_lines += len(by_account[account.id])
                    continue
                try:
                    self._check_stripe(
                        account,
                        periods.get(account.id, {}),
                        by_account[account.id],
                        report,
                        _Accepted(
                            frozenset(accepted.lines.get(account.id, set())),
                            frozenset(accepted.objects.get(account.id, set())),
                        ),
                    )
                except StripeFailure as failure:
                    report.errors.append(f"{account.id}: {type(failure).__name__}: {failure}")
        log.info(
            "verify.done",
            extra={
                "accounts": report.accounts,
                "violations": len(report.violations),
                "errors": len(report.errors),
            },
        )
        return report

    # --- the ledger ---------------------------------------------------------------------

    def _check_amounts(
        self,
        catalog: Catalog,
        lines: dict[int, LedgerLine],
        cards: dict[str, tuple[RateCard, ...]],
        report: VerifyReport,
    ) -> None:
        """Every usage line's amount is its quantity rated, once rounded, with the price in
        effect at the start of the period its usage happened in (the account's negotiated rate
        or the catalog's version: core.pricing); a late line at the marginal rates of its
        original period, after what that period billed before it (its own line, and its late
        usage on earlier invoices)."""
        by_key: dict[tuple[str, str], list[LedgerLine]] = defaultdict(list)
        for line in lines.values():
            by_key[line.account_id, line.key].append(line)
        own = {(line.account_id, line.period_start, line.key): line for line in lines.values()}
        for line in lines.values():
            metric = catalog.metrics.get(line.metric)
            applied = (
                None
                if metric is None
                else applied_price(
                    metric,
                    cards.get(line.account_id, ()),
                    line.currency,
                    line.late_from or line.period_start,
                )
            )
            if applied is None:
                continue  # an adjustment, or a metric the catalog no longer has
            price = applied.price
            before = Decimal(0)
            if line.late_from is not None:
                base = own.get(
                    (line.account_id, line.late_from, line_key(line.metric, line.grouping))
                )
                before = Decimal(0) if base is None else base.quantity
                before += sum(
                    (other.quantity for other in by_key[line.account_id, line.key]
                     if other.period_start < line.period_start),
                    Decimal(0),
                )  # fmt: skip
            expected = late_line_amount(line.quantity, before, price, line.currency)
            if expected != line.amount:
                report.violations.append(
                    Violation(
                        LINE_AMOUNT_DIFFERS,
                        line.account_id,
                        f"line {line.id} ({line.key}) amounts to "
                        f"{format_minor(line.amount, line.currency)}; {line.quantity} rates to "
                        f"{format_minor(expected, line.currency)}"
                        + (f" after {before} already billed for its period" if before else ""),
                        line.period_start,
                        line_id=line.id,
                        ledger_amount=line.amount,
                    )
                )

    def _check_events(
        self,
        events: Iterable[EventRow],
        lines: dict[int, LedgerLine],
        periods: dict[str, dict[date, PeriodRow]],
        retained_before_now: Callable[[], datetime | None],
        report: VerifyReport,
        *,
        expected: dict[int, Decimal],
        linked: dict[int, list[int]],
    ) -> None:
        """Every event on a line of its account and metric, in the right period; every line's
        quantity what its events make (their sum, or what the metric's aggregation gives:
        ``expected``) and its event count theirs. A line whose period's events retention
        removed — or, for an aggregation, one of whose ``linked`` lines' (the same period's
        usage on other invoices) — cannot be recomputed: counted as retained."""
        quantity: dict[int, Decimal] = defaultdict(Decimal)
        count: Counter[int] = Counter()
        for event in events:
            report.events += 1
            line = lines.get(event.line_id)
            if line is None or line.account_id != event.account_id:
                report.violations.append(
                    Violation(
                        EVENT_WITHOUT_LINE,
                        event.account_id,
                        f"event {event.id} points at line {event.line_id}, which is not a line "
                        "of its account",
                        event.period_start,
                        event_id=event.id,
                        line_id=event.line_id,
                    )
                )
                continue
            quantity[line.id] += event.quantity
            count[line.id] += 1
            if line.metric != event.metric:
                report.violations.append(
                    Violation(
                        EVENT_ON_WRONG_LINE,
                        event.account_id,
                        f"event {event.id} ({event.metric}) is counted on line {line.id} "
                        f"({line.key})",
                        line.period_start,
                        line_id=line.id,
                        event_id=event.id,
                    )
                )
            misplaced = _misplaced(event, line, periods.get(event.account_id, {}))
            if misplaced:
                report.violations.append(
                    Violation(
                        LATE_USAGE_MISPLACED,
                        event.account_id,
                        f"event {event.id} (usage of {event.period_start}): {misplaced}",
                        line.period_start,
                        line_id=line.id,
                        event_id=event.id,
                    )
                )
        retained_before = retained_before_now()
        retained: set[int] = set()
        for line in lines.values():
            period = periods.get(line.account_id, {}).get(line.period_start)
            if period is not None and events_retained(
                period.status, period.finalized_at, retained_before
            ):
                retained.add(line.id)
        for line in lines.values():
            if line.metric in BOOKED_METRICS and count[line.id] == 0:
                continue
            if line.id in retained or not retained.isdisjoint(linked.get(line.id, ())):
                report.retained_lines += 1
                continue
            if line.id in expected:
                quantity[line.id] = expected[line.id]
            if quantity[line.id] != line.quantity:
                report.violations.append(
                    Violation(
                        LINE_QUANTITY_DIFFERS,
                        line.account_id,
                        f"line {line.id} ({line.key}) holds {line.quantity}, its events "
                        + ("make" if line.id in expected else "add up to")
                        + f" {quantity[line.id]}",
                        line.period_start,
                        line_id=line.id,
                    )
                )
            if count[line.id] != line.event_count:
                report.violations.append(
                    Violation(
                        LINE_EVENT_COUNT_DIFFERS,
                        line.account_id,
                        f"line {line.id} ({line.key}) counts {line.event_count} events, "
                        f"{count[line.id]} point at it",
                        line.period_start,
                        line_id=line.id,
                    )
                )

    # --- Stripe -------------------------------------------------------------------------

    def _call(self, call: Callable[[], T]) -> T:
        if self.guard is None:
            return call()
        with self.guard.call(self.lane, endpoint_of(call)):
            return call()

    def _check_stripe(
        self,
        account: repository.AccountRow,
        periods: dict[date, PeriodRow],
        lines: list[LedgerLine],
        report: VerifyReport,
        accepted: _Accepted,
    ) -> None:
        assert self.gateway is not None
        assert account.stripe_customer_id is not None
        found: list[Violation] = []
        listed = self._call(
            partial(self.gateway.list_invoices, customer=account.stripe_customer_id)
        )
        known = {p.stripe_invoice_id for p in periods.values() if p.stripe_invoice_id}
        for invoice in listed:
            ours = invoice.metadata.get("billsync_account") == account.id and is_ours(
                invoice.metadata, self.namespace or ""
            )
            if invoice.id in known or not ours or invoice.status == "void":
                continue
            if invoice.status == "draft" and invoice.total == 0:
                continue  # an empty draft no period points at charges nothing
            found.append(
                Violation(
                    UNKNOWN_INVOICE,
                    account.id,
                    f"invoice {invoice.id} ({invoice.status}, "
                    f"{format_minor(invoice.total, invoice.currency)}) carries billsync's "
                    "metadata but no period points at it",
                    stripe_invoice_id=invoice.id,
                    stripe_amount=invoice.total,
                )
            )
        seen_lines: dict[int, str] = {}
        for start, period in sorted(periods.items()):
            mine = [line for line in lines if line.period_start == start]
            if period.stripe_invoice_id is None:
                if period.status is PeriodStatus.FINALIZED and any(line.amount for line in mine):
                    total = sum(line.amount for line in mine)
                    found.append(
                        Violation(
                            NO_INVOICE,
                            account.id,
                            f"the period is finalized with {format_minor(total, account.currency)}"
                            " in the ledger and no invoice in Stripe",
                            start,
                            ledger_amount=total,
                        )
                    )
                elif period.status is not PeriodStatus.FINALIZED:
                    report.pending_lines += len(mine)
                continue
            current = self._read(period.stripe_invoice_id)
            report.invoices += 1
            if current is None:
                found.append(
                    Violation(
                        INVOICE_MISSING,
                        account.id,
                        f"invoice {period.stripe_invoice_id} no longer exists in Stripe",
                        start,
                        stripe_invoice_id=period.stripe_invoice_id,
                    )
                )
                continue
            found += self._compare(
                account.id, period, current, mine, seen_lines=seen_lines, report=report,
                accepted=accepted,
            )  # fmt: skip
        for violation in found:
            (report.accepted if accepted.covers(violation) else report.violations).append(violation)

    def _read(self, invoice_id: str) -> RemoteInvoice | None:
        assert self.gateway is not None
        try:
            return self._call(partial(self.gateway.get_invoice, invoice_id, with_lines=True))
        except StripeFailure as failure:
            if failure.missing:
                return None
            raise

    def _compare(
        self,
        account_id: str,
        period: PeriodRow,
        invoice: RemoteInvoice,
        mine: list[LedgerLine],
        *,
        seen_lines: dict[int, str],
        report: VerifyReport,
        accepted: _Accepted,
    ) -> list[Violation]:
        start = period.start
        final = period.status is PeriodStatus.FINALIZED
        found: list[Violation] = []

        def violation(kind: str, detail: str, **more: Any) -> None:
            found.append(
                Violation(kind, account_id, detail, start, stripe_invoice_id=invoice.id, **more)
            )

        if invoice.status == "void":
            violation(INVOICE_VOIDED, f"invoice {invoice.id} was voided in Stripe")
            return found
        if final and invoice.status == "draft":
            violation(NOT_FINAL_IN_STRIPE, f"invoice {invoice.id} is still a draft in Stripe")
        if not final and invoice.status != "draft":
            violation(
                FINAL_IN_STRIPE_ONLY,
                f"invoice {invoice.id} is {invoice.status} in Stripe while the period is "
                f"{period.status.value}",
            )
        namespace = self.namespace or ""
        theirs = [
            drift.their_line(r.line_item_id, r.amount, r.metadata, r.description or "", namespace)
            for r in invoice.lines
        ]
        for remote in theirs:  # across the customer's invoices: one line, one invoice
            if remote.line_id is None:
                continue
            elsewhere = seen_lines.get(remote.line_id)
            if elsewhere is not None and elsewhere != invoice.id:
                violation(
                    LINE_TWICE_IN_STRIPE,
                    f"line {remote.line_id} is on invoice {elsewhere} and on {invoice.id}",
                    line_id=remote.line_id,
                    stripe_line_item_id=remote.line_item_id,
                )
            seen_lines[remote.line_id] = invoice.id
        compared = drift.compare_lines(
            [
                drift.OurLine(line.id, line.amount, line.version, line.synced_version,
                              line.synced_amount, line.stripe_line_item_id, line.rollup_key)
                for line in mine
            ],
            theirs,
            complete=period.status in (PeriodStatus.REVIEW, PeriodStatus.HELD), final=final,
        )  # fmt: skip
        pending = compared.pending
        ledger = {line.id: line for line in mine}
        for difference in compared.differences:
            violation(*_described(difference, ledger, invoice.currency), **_subjects(difference))
        report.pending_lines += pending
        ledger_total = sum(line.amount for line in mine)
        pre, post = (
            invoice.pre_payment_credit_notes_amount,
            invoice.post_payment_credit_notes_amount,
        )
        credited = pre + post
        if credited and not found:
            # A credit note lowers what the customer owes (or gives it back) after
            # finalization; the invoice and its lines stay as the ledger made them.
            report.explained.append(
                Violation(
                    CREDIT_NOTED, account_id,
                    f"invoice {invoice.id} totals {format_minor(invoice.total, invoice.currency)}"
                    f" as the ledger's lines do; credit notes of "
                    f"{format_minor(credited, invoice.currency)} lowered it after finalization "
                    f"({format_minor(pre, invoice.currency)} off what was due, "
                    f"{format_minor(post, invoice.currency)} refunded or credited to the "
                    "customer's balance)",
                    start, stripe_invoice_id=invoice.id, ledger_amount=ledger_total,
                    stripe_amount=invoice.total - credited,
                )
            )  # fmt: skip
        if pending == 0 and invoice.discount and invoice.total + invoice.discount == ledger_total:
            # Stripe's coupon, not a difference: the lines add up, the discount is Stripe's.
            report.explained.append(
                Violation(
                    TOTAL_DIFFERS, account_id,
                    f"invoice {invoice.id} totals {format_minor(invoice.total, invoice.currency)}:"
                    f" the ledger's {format_minor(ledger_total, invoice.currency)} less a "
                    f"discount of {format_minor(invoice.discount, invoice.currency)} (the "
                    "customer's coupon)",
                    start, stripe_invoice_id=invoice.id, ledger_amount=ledger_total,
                    stripe_amount=invoice.total,
                )
            )  # fmt: skip
        elif pending == 0 and invoice.total != ledger_total:
            # The differences a person accepted (Stripe's amount for a line, a line added or
            # removed in Stripe) explain the total when they add up to it exactly.
            explained = ledger_total + sum(
                (v.stripe_amount or 0) - (v.ledger_amount or 0)
                for v in found
                if v.kind
                in (
                    AMOUNT_DIFFERS,
                    EXTRA_IN_STRIPE,
                    FOREIGN_LINE,
                    MISSING_IN_STRIPE,
                    REMOVED_IN_STRIPE,
                )
                and accepted.covers(v)
            )
            violation(
                TOTAL_DIFFERS,
                f"invoice {invoice.id} totals {format_minor(invoice.total, invoice.currency)}, "
                f"the ledger {format_minor(ledger_total, invoice.currency)}"
                + (", the difference accepted in Stripe" if invoice.total == explained else ""),
                ledger_amount=ledger_total,
                stripe_amount=invoice.total,
            )
            if invoice.total == explained:
                report.accepted.append(found.pop())
        return found


def _misplaced(event: EventRow, line: LedgerLine, periods: dict[date, PeriodRow]) -> str:
    """Why the event's line breaks the late-usage rule, or "" when it does not."""
    if line.period_start == event.period_start:
        if line.late_from is not None:
            return f"on its own period's line {line.id}, labelled late from {line.late_from}"
        return ""
    if line.period_start < event.period_start:
        return f"on line {line.id} of an earlier period ({line.period_start})"
    if line.late_from != event.period_start:
        return (
            f"on line {line.id} of {line.period_start}, labelled late from {line.late_from} "
            f"instead of {event.period_start}"
        )
    for start, period in periods.items():
        if event.period_start <= start < line.period_start and period.status.accepts_usage:
            return (
                f"on line {line.id} of {line.period_start} while the period of {start} still "
                "accepts usage"
            )
    return ""


def _subjects(difference: drift.LineDifference) -> dict[str, Any]:
    line, stripe = difference.line, difference.stripe
    subjects: dict[str, Any] = {}
    if line is not None:
        subjects.update(line_id=line.id, ledger_amount=line.amount)
    elif stripe is not None and stripe.line_id is not None:
        subjects["line_id"] = stripe.line_id
    if stripe is not None:
        subjects.update(stripe_line_item_id=stripe.line_item_id, stripe_amount=stripe.amount)
    return subjects


def _described(
    difference: drift.LineDifference, ledger: dict[int, LedgerLine], currency: str
) -> tuple[str, str]:
    """The kind and a sentence for a person, for one line-level difference."""
    kind, stripe = difference.kind, difference.stripe
    line = None if difference.line is None else drift.as_item(ledger, difference.line)
    if kind == drift.EXTRA_IN_STRIPE:
        assert stripe is not None
        whose = (
            f"written by the billsync installation {stripe.namespace!r}"
            if stripe.namespace
            else "not put there by billsync"
        )
        return kind, (
            f"{stripe.line_item_id} ({format_minor(stripe.amount, currency)}, "
            f"{stripe.description!r}) was {whose}"
        )
    if kind == drift.LINE_OF_ANOTHER_PERIOD:
        assert stripe is not None
        return kind, (
            f"{stripe.line_item_id} says it is line {stripe.line_id}, which is not a line of "
            "this period"
        )
    assert line is not None
    amount = format_minor(line.amount, line.currency)
    if kind == drift.DUPLICATE_IN_STRIPE:
        return kind, f"line {line.id} ({line.key}) is on the invoice {difference.copies} times"
    if kind == drift.REMOVED_IN_STRIPE:
        return kind, f"line {line.id} ({line.key}, {amount}) was on the invoice and is gone"
    if kind == drift.MISSING_IN_STRIPE:
        return kind, f"line {line.id} ({line.key}, {amount}) is not on the invoice"
    assert stripe is not None
    return kind, (
        f"line {line.id} ({line.key}): the ledger says {amount}, Stripe "
        f"{format_minor(stripe.amount, line.currency)}"
    )


def _aggregated_quantities(
    events: Iterable[repository.ObservedEvent],
    lines: dict[int, LedgerLine],
    aggregated: dict[str, Metric],
) -> tuple[dict[int, Decimal], dict[int, list[int]]]:
    """What each line of a metric that is not a sum should hold, recomputed from its events
    and those of the lines carrying the same period's usage (its own line, late lines on other
    invoices: core.aggregation.period_quantities); and, per line, the ids of those lines."""
    observed: dict[int, list[Observation]] = defaultdict(list)
    for event in events:
        line = lines.get(event.line_id)
        if line is None or line.metric not in aggregated:
            continue  # reported by the event checks
        unique_by = aggregated[line.metric].unique_by
        observed[line.id].append(
            Observation(
                event.quantity,
                event.occurred_at,
                event.id,
                None if unique_by is None else event.dimensions.get(unique_by),
            )
        )
    groups: dict[tuple[str, date, str], list[LedgerLine]] = defaultdict(list)
    for line in lines.values():
        if line.metric in aggregated:
            usage_period = line.late_from or line.period_start
            groups[line.account_id, usage_period, line_key(line.metric, line.grouping)].append(line)
    expected: dict[int, Decimal] = {}
    linked: dict[int, list[int]] = {}
    for group in groups.values():
        group.sort(key=lambda line: line.period_start)
        aggregation = aggregated[group[0].metric].aggregation
        quantities = period_quantities(aggregation, [observed[line.id] for line in group])
        for line, quantity in zip(group, quantities, strict=True):
            expected[line.id] = quantity
            linked[line.id] = [other.id for other in group if other.id != line.id]
    return expected, linked


def _check_commitments(
    accounts: list[repository.AccountRow],
    periods: dict[str, dict[date, PeriodRow]],
    lines: dict[int, LedgerLine],
    report: VerifyReport,
) -> None:
    """Each period whose usage is final (in review or finalized) of an account with a minimum
    commitment carries the top-up the rule gives — max(0, minimum − its usage lines) — and no
    other period carries one (core.commitment)."""
    committed = {account.id: account for account in accounts if account.commitments}
    used: dict[tuple[str, date], int] = defaultdict(int)
    booked: dict[tuple[str, date], int] = defaultdict(int)
    for line in lines.values():
        if line.account_id not in committed:
            continue
        if line.metric == COMMITMENT_METRIC:
            booked[line.account_id, line.period_start] += line.amount
        elif line.metric not in BOOKED_METRICS:
            used[line.account_id, line.period_start] += line.amount
    for account_id, account in committed.items():
        for start, period in periods.get(account_id, {}).items():
            minimum = commitment_on(account.commitments, start)
            final = period.status in (PeriodStatus.REVIEW, PeriodStatus.FINALIZED)
            expected = top_up(minimum, used[account_id, start]) if minimum and final else 0
            if booked[account_id, start] != expected:
                report.violations.append(
                    Violation(
                        COMMITMENT_DIFFERS,
                        account_id,
                        f"the period starting {start} ({period.status.value}) tops up "
                        f"{format_minor(booked[account_id, start], account.currency)} to its "
                        f"minimum commitment; the rule gives "
                        f"{format_minor(expected, account.currency)}"
                        + (
                            f" (minimum {format_minor(minimum, account.currency)}, used "
                            f"{format_minor(used[account_id, start], account.currency)})"
                            if minimum
                            else ""
                        ),
                        start,
                    )
                )


def _check_credits(
    grants: dict[str, list[credit_repository.GrantRecord]],
    lines: dict[int, LedgerLine],
    report: VerifyReport,
) -> None:
    """Prepaid credit (core.credits): what a grant has left is what it was granted less what
    periods drew; each period's credit line is what it drew, from grants whose expiry came
    after the period began, and never more than the period's other lines."""
    drawn: dict[tuple[str, date], int] = defaultdict(int)
    for account_id, records in grants.items():
        for grant in records:
            taken = sum(amount for _, amount in grant.uses)
            if grant.amount - taken != grant.remaining or grant.remaining < 0:
                report.violations.append(
                    Violation(
                        CREDIT_DIFFERS,
                        account_id,
                        f"credit grant {grant.id} of {format_minor(grant.amount, grant.currency)}"
                        f" has {format_minor(grant.remaining, grant.currency)} left; its uses "
                        f"leave {format_minor(grant.amount - taken, grant.currency)}",
                    )
                )
            for start, amount in grant.uses:
                drawn[account_id, start] += amount
                if datetime.combine(start, time(), tzinfo=UTC) >= grant.expires_at:
                    report.violations.append(
                        Violation(
                            CREDIT_DIFFERS,
                            account_id,
                            f"the period starting {start} drew on credit grant {grant.id}, "
                            f"which expired at {grant.expires_at.isoformat()}, before it began",
                            start,
                        )
                    )
    booked: dict[tuple[str, date], int] = defaultdict(int)
    others: dict[tuple[str, date], int] = defaultdict(int)
    currency: dict[str, str] = {}
    for line in lines.values():
        currency[line.account_id] = line.currency
        if line.metric == CREDIT_METRIC:
            booked[line.account_id, line.period_start] -= line.amount
        else:
            others[line.account_id, line.period_start] += line.amount
    for key in sorted(set(drawn) | set(booked)):
        account_id, start = key
        code = currency.get(account_id, "usd")
        if booked[key] != drawn[key]:
            report.violations.append(
                Violation(
                    CREDIT_DIFFERS,
                    account_id,
                    f"the period starting {start} credits {format_minor(booked[key], code)} of "
                    f"prepaid credit; its grants say it drew {format_minor(drawn[key], code)}",
                    start,
                )
            )
        elif booked[key] > max(others[key], 0):
            report.violations.append(
                Violation(
                    CREDIT_DIFFERS,
                    account_id,
                    f"the period starting {start} credits {format_minor(booked[key], code)} of "
                    "prepaid credit, more than its other lines "
                    f"({format_minor(others[key], code)})",
                    start,
                )
            )
