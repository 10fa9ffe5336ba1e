"""Support's actions on finalized invoices, through Stripe: lower one with a credit note, retry a
failed payment now. Called by :mod:`billsync.services.support` (the one door for console, CLI and
API), which checks who acts and why first.

Each action follows the support service's rule: the decision commits with its audit entry, Stripe
is called with no transaction open, and what Stripe answered is settled onto the entry
(``detail.outcome``). Every write carries an idempotency key of this installation built from the
audit entry's id: the same decision sent twice (a retry of the SDK) is one credit note, one
payment attempt. A credit note whose creation did not come back is looked for by the entry's id in
its metadata (``GET /v1/credit_notes?invoice=``) before anyone issues another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import partial
from typing import Any, TypeVar

from billsync.clock import Clock
from billsync.core.credit_notes import (
    CREDITABLE_STATUSES,
    DESTINATIONS,
    REASONS,
    CreditSplit,
    creditable,
    split_credit,
)
from billsync.core.display import format_money
from billsync.core.money import AmountError, parse_amount
from billsync.core.periods import PeriodStatus
from billsync.db.database import Database
from billsync.errors import BillsyncError, Conflict, InvalidRequest, NotFound
from billsync.repositories import console as console_repository
from billsync.repositories import credit_notes as credit_note_repository
from billsync.repositories import problems as problem_repository
from billsync.repositories import sync as sync_repository
from billsync.repositories.accounts import get_account
from billsync.repositories.problems import ProblemRecord
from billsync.services.support_checks import Who, checked_text
from billsync.services.sync import SyncService, record_totals
from billsync.sync.budget import Lane
from billsync.sync.port import (
    ENDPOINTS,
    CreditNoteLine,
    InvoiceActions,
    RemoteCreditNote,
    RemoteInvoice,
    StripeAmbiguous,
    StripeCardDeclined,
    StripeFailure,
)

T = TypeVar("T")
MEMO_LIMIT = 500  # Stripe takes 5,000; a memo is a sentence or two on the credit note's PDF
AUDIT_ENTRY_KEY = "billsync_audit_entry"  # metadata: the decision a credit note carries out


class StripeRefused(BillsyncError):
    """Stripe refused the action as sent, or could not be reached: nothing was done (or, when
    it did not answer, nothing is known yet)."""

    status_code = 502
    code = "stripe_refused"


@dataclass(frozen=True, slots=True)
class IssuedCreditNote:
    account_id: str
    period_start: date
    invoice_id: str
    invoice_number: str | None
    credit_note_id: str
    number: str
    currency: str
    split: CreditSplit
    line_id: int | None

    def summary(self) -> str:
        """What was done, for the person who did it."""
        money = partial(format_money, currency=self.currency)
        parts = []
        if self.split.pre:
            parts.append(f"{money(self.split.pre)} off what was still due")
        if self.split.refund:
            parts.append(f"{money(self.split.refund)} refunded")
        if self.split.credit:
            parts.append(f"{money(self.split.credit)} credited to the customer's balance")
        return (
            f"Credit note {self.number} of {money(self.split.total)} issued on invoice "
            f"{self.invoice_number or self.invoice_id}: {', '.join(parts)}."
        )


@dataclass(frozen=True, slots=True)
class _Target:
    invoice_id: str
    currency: str
    line_id: int | None
    line_item_id: str | None  # il_… of the line, when one line is credited
    line_amount: int


@dataclass(frozen=True, slots=True)
class PaymentRetried:
    account_id: str
    period_start: date | None
    invoice_id: str
    paid: bool
    message: str


class InvoiceSupport:
    def __init__(self, database: Database, clock: Clock, sync: SyncService) -> None:
        self.database = database
        self.clock = clock
        self.sync = sync

    # --- credit notes ---------------------------------------------------------------------

    def issue_credit_note(
        self,
        account_id: str,
        start: date,
        *,
        who: Who,
        amount: str | None,
        line_id: int | None,
        reason_code: str | None,
        destination: str,
        memo: str | None,
    ) -> IssuedCreditNote:
        """A credit note on the finalized invoice of the period starting ``start``: of the whole
        invoice, or of its line ``line_id`` (a ledger line); ``amount`` typed in the account's
        currency, or empty for all that can still be credited there."""
        actions = self._actions()
        if reason_code is not None and reason_code not in REASONS:
            raise InvalidRequest(
                f"the reason is one of {', '.join(REASONS)}", code="invalid_credit_note_reason"
            )
        if destination not in DESTINATIONS:
            raise InvalidRequest(
                "choose where the part already paid goes: credit (the customer's balance) or "
                "refund",
                code="invalid_destination",
            )
        memo = checked_text("memo", memo, MEMO_LIMIT) if memo and memo.strip() else None
        target = self._target(account_id, start, line_id)
        invoice, room, where = self._room(actions, target)
        total = room if not amount or not amount.strip() else self._amount(amount, target.currency)
        if total > room:
            raise InvalidRequest(
                f"at most {format_money(room, target.currency)} can still be credited on {where} "
                f"(credit notes never take more than the invoice's "
                f"{format_money(invoice.total, target.currency)})",
                code="credit_exceeds_invoice",
            )
        split = split_credit(
            total,
            amount_remaining=invoice.amount_remaining,
            paid=invoice.status == "paid",
            destination=destination,
        )
        with self.database.transaction() as connection:
            entry = console_repository.record(
                connection, actor=who.actor, action="credit_note.issue", now=self.clock.now(),
                account_id=account_id, period_start=start, reason=who.reason,
                detail={
                    "invoice": invoice.id, "amount": total, "line_id": line_id,
                    "reason_code": reason_code, "destination": destination, "memo": memo,
                    "pre_payment": split.pre, "refund": split.refund, "credit": split.credit,
                },
                request=who.request,
            )  # fmt: skip
        line_item = target.line_item_id
        create = partial(
            actions.create_credit_note,
            invoice.id,
            amount=None if line_item is not None else total,
            lines=[] if line_item is None else [CreditNoteLine(line_item, total)],
            reason=reason_code,
            memo=memo,
            refund_amount=split.refund,
            credit_amount=split.credit,
            metadata=self.sync.metadata(
                billsync_account=account_id, **{AUDIT_ENTRY_KEY: str(entry)}
            ),
            idempotency_key=self.sync.key("credit_note", f"{invoice.id}:{entry}"),
        )
        try:
            note = self._call("create_credit_note", create)
        except StripeAmbiguous as unknown:
            found = self._issued_for(actions, invoice.id, entry)
            if found is None:
                self._settle(entry, {"error": f"no answer from Stripe: {unknown.message}"})
                raise StripeRefused(
                    "Stripe did not answer, and shows no credit note of this decision yet: look "
                    f"at invoice {invoice.number or invoice.id} in the Dashboard before issuing "
                    "one again",
                    code="stripe_unavailable",
                ) from None
            note = found
        except StripeFailure as failure:
            self._settle(entry, {"error": failure.message})
            raise _refused(failure, "Stripe refused the credit note") from None
        self._record(account_id, start, note)
        self._settle(entry, {"credit_note": note.id, "number": note.number, "total": note.total})
        return IssuedCreditNote(
            account_id, start, invoice.id, invoice.number, note.id, note.number,
            target.currency, split, line_id,
        )  # fmt: skip

    def _target(self, account_id: str, start: date, line_id: int | None) -> _Target:
        """The finalized invoice (and line) a credit note is for, as the ledger knows it."""
        with self.database.read() as connection:
            account = get_account(connection, account_id)
            if account is None:
                raise NotFound(f"account '{account_id}' does not exist", code="account_not_found")
            period = sync_repository.get_period(connection, account_id, start)
            lines = sync_repository.lines_of(connection, account_id, [start])
        if period is None:
            raise NotFound(
                f"account '{account_id}' has no billing period starting {start}",
                code="period_not_found",
            )
        if period.status is not PeriodStatus.FINALIZED or period.stripe_invoice_id is None:
            raise Conflict(
                f"the period starting {start} is {period.status.value}: its invoice is not "
                "finalized yet — add a credit to it instead (a credit note is for a finalized "
                "invoice)",
                code="invoice_not_finalized",
            )
        if line_id is None:
            return _Target(period.stripe_invoice_id, account.currency, None, None, 0)
        line = next((candidate for candidate in lines if candidate.id == line_id), None)
        if line is None or line.stripe_line_item_id is None or line.amount <= 0:
            raise InvalidRequest(
                f"line {line_id} is not a charged line of the invoice of {start}: choose one of "
                "its lines, or the whole invoice",
                code="invalid_line",
            )
        return _Target(
            period.stripe_invoice_id, account.currency, line.id, line.stripe_line_item_id,
            line.amount,
        )  # fmt: skip

    def _room(self, actions: InvoiceActions, target: _Target) -> tuple[RemoteInvoice, int, str]:
        """Stripe's invoice, what credit notes can still take off it (or off the line), and
        how to name that for a person."""
        invoice = self._read(
            "get_invoice",
            partial(self.sync.gateway.get_invoice, target.invoice_id, with_lines=False),
            f"invoice {target.invoice_id}",
        )
        where = f"invoice {invoice.number or invoice.id}"
        if invoice.status not in CREDITABLE_STATUSES:
            raise Conflict(
                f"{where} is {invoice.status} in Stripe: only an open, paid or uncollectible "
                "invoice takes a credit note",
                code="invoice_not_creditable",
            )
        room = creditable(
            invoice.total,
            invoice.pre_payment_credit_notes_amount + invoice.post_payment_credit_notes_amount,
        )
        if target.line_item_id is not None:
            notes = self._read(
                "list_credit_notes",
                partial(actions.list_credit_notes, invoice_id=invoice.id),
                "the invoice's credit notes",
            )
            on_line = sum(
                part.amount
                for note in notes
                if note.status == "issued"
                for part in note.lines
                if part.line_item_id == target.line_item_id
            )
            room = min(room, max(target.line_amount - on_line, 0))
            where = f"line {target.line_id} of {where}"
        if room == 0:
            raise Conflict(f"{where} is credited in full already", code="nothing_to_credit")
        return invoice, room, where

    @staticmethod
    def _amount(text: str, currency: str) -> int:
        try:
            minor = parse_amount(text, currency)
        except AmountError as error:
            raise InvalidRequest(str(error), code="invalid_amount") from None
        if minor <= 0:
            raise InvalidRequest(
                f"a credit note credits a positive amount, not {text.strip()!r}",
                code="invalid_amount",
            )
        return minor

    def _issued_for(
        self, actions: InvoiceActions, invoice_id: str, entry: int
    ) -> RemoteCreditNote | None:
        """The credit note this decision created, if Stripe holds one (read back after a call
        whose answer was lost)."""
        try:
            notes = self._call(
                "list_credit_notes", partial(actions.list_credit_notes, invoice_id=invoice_id)
            )
        except StripeFailure:
            return None
        return next((n for n in notes if n.metadata.get(AUDIT_ENTRY_KEY) == str(entry)), None)

    def _record(self, account_id: str, start: date, note: RemoteCreditNote) -> None:
        """The credit note in billsync's record, and the invoice's new amounts in the mirror,
        without waiting for the webhooks (which bring the same, and win when newer)."""
        try:
            invoice: RemoteInvoice | None = self._call(
                "get_invoice",
                partial(self.sync.gateway.get_invoice, note.invoice, with_lines=False),
            )
        except StripeFailure:
            invoice = None  # the invoice.updated event brings it
        now = self.clock.now()
        with self.database.transaction() as connection:
            credit_note_repository.put_credit_note(
                connection, credit_note_values(note, account_id, start, now)
            )
            if invoice is not None:
                record_totals(connection, account_id, start, invoice, now)
        if self.sync.changes is not None:  # the customer's page shows it at once
            self.sync.changes.accounts_changed([account_id])

    # --- payments -------------------------------------------------------------------------

    def retry_payment(self, problem: ProblemRecord, who: Who) -> PaymentRetried:
        """Attempt the failed payment of the problem's invoice now (``POST
        /v1/invoices/{id}/pay``, the customer's default payment method). Paid: the problem is
        resolved. Declined: Stripe's decline, and the problem stays open (its next event
        refreshes it)."""
        actions = self._actions()
        invoice_id = problem.stripe_object_id
        assert problem.account_id is not None
        if invoice_id is None:
            raise Conflict(f"problem {problem.id} names no invoice", code="no_invoice")
        now = self.clock.now()
        with self.database.transaction() as connection:
            entry = console_repository.record(
                connection, actor=who.actor, action="payment.retry", now=now,
                account_id=problem.account_id, period_start=problem.period_start,
                reason=who.reason, detail={"problem": problem.id, "invoice": invoice_id},
                request=who.request,
            )  # fmt: skip
        key = self.sync.key("pay", f"{invoice_id}:{entry}")
        done = partial(PaymentRetried, problem.account_id, problem.period_start, invoice_id)
        try:
            invoice = self._call("pay_invoice", partial(
                actions.pay_invoice, invoice_id, idempotency_key=key))  # fmt: skip
        except StripeCardDeclined as declined:
            self._settle(entry, {"paid": False, "error": declined.message})
            return done(False, f"Declined: {declined.message}")
        except StripeAmbiguous as unknown:
            self._settle(entry, {"paid": None, "error": f"no answer: {unknown.message}"})
            raise StripeRefused(
                "Stripe did not answer: the payment may have gone through — look at the invoice "
                "in the Dashboard before retrying",
                code="stripe_unavailable",
            ) from None
        except StripeFailure as failure:
            self._settle(entry, {"paid": False, "error": failure.message})
            raise _refused(failure, "Stripe refused the payment") from None
        paid = invoice.status == "paid"
        with self.database.transaction() as connection:
            if problem.period_start is not None:
                record_totals(connection, problem.account_id, problem.period_start, invoice, now)
            if paid:
                problem_repository.resolve(
                    connection, problem.id, f"paid after a retry by {who.actor}", self.clock.now()
                )
            console_repository.settle(connection, entry, {"paid": paid, "status": invoice.status})
        if paid:
            return done(True, f"Paid: {format_money(invoice.amount_paid, invoice.currency)}.")
        return done(False, f"Not paid yet: the invoice is {invoice.status} in Stripe.")

    # --- Stripe ---------------------------------------------------------------------------

    def _actions(self) -> InvoiceActions:
        gateway = self.sync.gateway
        if not isinstance(gateway, InvoiceActions):
            raise StripeRefused(
                "this Stripe gateway cannot issue credit notes or retry payments",
                code="not_supported",
            )
        return gateway

    def _call(self, name: str, call: Callable[[], T]) -> T:
        """One Stripe call on the on-demand lane (a person is waiting), within the budget."""
        with self.sync.guard.call(Lane.ON_DEMAND, ENDPOINTS.get(name)):
            return call()

    def _read(self, name: str, call: Callable[[], T], what: str) -> T:
        """A read the action needs first: when Stripe cannot answer it, nothing is done."""
        try:
            return self._call(name, call)
        except StripeFailure as failure:
            raise _refused(failure, f"Stripe cannot show {what}") from None

    def _settle(self, entry: int, outcome: dict[str, Any]) -> None:
        with self.database.transaction() as connection:
            console_repository.settle(connection, entry, outcome)


def _refused(failure: StripeFailure, what: str) -> StripeRefused:
    """A Stripe failure as a refusal a person can act on: Stripe said no (its message), or
    Stripe could not be reached (nothing was done: try again)."""
    if failure.status is not None and 400 <= failure.status < 500 and failure.status != 429:
        return StripeRefused(f"{what}: {failure.message}")
    return StripeRefused(
        f"{what}: Stripe cannot be reached right now ({failure.message}); nothing was done, try "
        "again in a moment",
        code="stripe_unavailable",
    )


def credit_note_values(
    note: RemoteCreditNote,
    account_id: str | None,
    start: date | None,
    now: datetime,
    *,
    event_created: int = 0,
) -> dict[str, Any]:
    """A credit note as billsync's record keeps it."""
    return {
        "stripe_credit_note_id": note.id,
        "stripe_invoice_id": note.invoice,
        "account_id": account_id,
        "period_start": start,
        "number": note.number,
        "status": note.status,
        "currency": note.currency,
        "total": note.total,
        "pre_payment_amount": note.pre_payment_amount,
        "post_payment_amount": note.post_payment_amount,
        "refund_amount": note.refund_amount,
        "credit_amount": note.credit_amount,
        "reason": note.reason,
        "memo": None if note.memo is None else note.memo[:2000],
        "pdf": note.pdf,
        "lines": [
            {
                "line_item_id": line.line_item_id,
                "amount": line.amount,
                "description": line.description,
            }
            for line in note.lines
        ],
        "created_at": datetime.fromtimestamp(note.created, UTC),
        "last_event_created": event_created,
        "updated_at": now,
    }
