"""The Stripe port: what the sync engine needs from Stripe, in billsync's own types.

:mod:`billsync.stripe_gateway` implements it with the real stripe SDK (pointed at Stripe or at
the emulator). Nothing else in billsync knows the SDK.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class StripeFailure(Exception):
    """A Stripe call failed. Subclasses say whether the write may have happened."""

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status

    @property
    def missing(self) -> bool:
        """Stripe has no such object: 404 for the URL's object, 400 for an id in the body —
        ``code`` says it either way (docs.stripe.com/error-codes/resource-missing)."""
        return self.code == "resource_missing"


class StripeRateLimited(StripeFailure):
    """429 ``rate_limit`` or ``lock_timeout``: nothing was written; back off and retry."""


class StripeUnavailable(StripeFailure):
    """A read answered 5xx after the SDK's own retries (or calls paused by the breaker)."""


class StripeAmbiguous(StripeFailure):
    """Timeout, lost connection, or a write answered 5xx: the write may or may not have
    happened. Read before writing again. ``answered``: Stripe did answer (a 5xx, stored under
    the key): that attempt is over, the next one takes a key of its own."""

    @property
    def answered(self) -> bool:
        return self.status is not None and self.status >= 500


class StripeRejected(StripeFailure):
    """4xx: Stripe refused the request as sent (a bug or drift); retrying will not help."""


class StripeCardDeclined(StripeFailure):
    """402: the payment was declined."""


@dataclass(frozen=True, slots=True)
class NewLine:
    """A line to put on a draft invoice."""

    line_id: int
    amount: int  # minor units
    description: str
    period_start: int  # unix seconds
    period_end: int
    metadata: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class LineChange:
    """New absolute values for a line already on the draft (by its ``il_`` id)."""

    line_item_id: str
    amount: int
    description: str
    metadata: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class RemoteLine:
    """A line of a Stripe invoice as Stripe shows it."""

    line_item_id: str  # il_…
    invoice_item_id: str | None  # ii_…
    amount: int
    currency: str
    description: str | None
    metadata: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class RemoteInvoice:
    id: str
    customer: str
    status: str  # draft | open | paid | void | uncollectible
    currency: str
    total: int
    amount_due: int
    amount_paid: int
    amount_remaining: int
    number: str | None
    hosted_invoice_url: str | None
    invoice_pdf: str | None
    metadata: Mapping[str, str]
    lines: Sequence[RemoteLine] = field(default_factory=tuple)
    # Whether ``lines`` is every line of the invoice (a write's response embeds only the first
    # page; ``get_invoice(with_lines=True)`` always reads them all).
    lines_complete: bool = False
    # What Stripe adds besides the lines (docs.stripe.com/api/invoices/object): ``subtotal`` is
    # the lines' sum, ``total`` = subtotal − ``discount`` (the coupons applied, Σ
    # total_discount_amounts); at finalization the customer's balance is applied
    # (``starting_balance``: negative is a credit) to give ``amount_due``.
    subtotal: int | None = None
    discount: int = 0
    starting_balance: int = 0
    # Credit notes lower a finalized invoice without changing its total: first what is still to
    # pay (``pre_payment``: amount_due and amount_remaining go down), the rest after payment
    # (``post_payment``: refunded or credited to the customer's balance)
    # (docs.stripe.com/api/credit_notes/create).
    pre_payment_credit_notes_amount: int = 0
    post_payment_credit_notes_amount: int = 0
    attempt_count: int = 0  # payment attempts so far (the first one is attempt 1)
    # When the invoice became open, paid, void (unix seconds; ``status_transitions``).
    finalized_at: int | None = None
    paid_at: int | None = None
    voided_at: int | None = None


@dataclass(frozen=True, slots=True)
class CreditNoteLine:
    """Part of an invoice line to credit (a line of ``POST /v1/credit_notes``)."""

    line_item_id: str  # il_…
    amount: int


@dataclass(frozen=True, slots=True)
class RemoteCreditNoteLine:
    line_item_id: str | None  # None: a custom line of the credit note
    amount: int
    description: str | None


@dataclass(frozen=True, slots=True)
class RemoteCreditNote:
    """A credit note as Stripe shows it (docs.stripe.com/api/credit_notes/object)."""

    id: str  # cn_…
    invoice: str
    number: str
    status: str  # issued | void
    currency: str
    total: int
    pre_payment_amount: int  # what it took off the amount still to pay
    post_payment_amount: int  # the rest: refunded, credited to the balance, or out of band
    refund_amount: int
    credit_amount: int
    out_of_band_amount: int
    reason: str | None
    memo: str | None
    pdf: str | None
    created: int  # unix seconds
    metadata: Mapping[str, str]
    lines: Sequence[RemoteCreditNoteLine] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class RemoteEvent:
    """An event from ``GET /v1/events`` (the webhook backstop)."""

    id: str
    type: str
    created: int
    livemode: bool
    payload: Mapping[str, Any]  # the whole event, as a webhook would carry it


@dataclass(frozen=True, slots=True)
class EventPage:
    """One page of ``GET /v1/events``: newest first, as Stripe lists them."""

    events: tuple[RemoteEvent, ...]
    has_more: bool


class StripePort(Protocol):
    """Every write takes an idempotency key built by the caller from its own ids."""

    def create_customer(
        self, *, name: str, email: str | None, metadata: Mapping[str, str], idempotency_key: str
    ) -> str:
        """Returns the customer id (cus_…)."""
        ...

    def create_draft_invoice(
        self,
        *,
        customer: str,
        currency: str,
        description: str,
        metadata: Mapping[str, str],
        idempotency_key: str,
        inherit_discounts: bool = True,
        statement_url: str | None = None,
    ) -> RemoteInvoice:
        """A draft with ``auto_advance=false``, ``collection_method=charge_automatically``,
        ``pending_invoice_items_behavior=exclude``; the customer's discount applies to it
        unless ``inherit_discounts`` is false; ``statement_url``: the link to the period's
        detailed statement, shown on the invoice."""
        ...

    def find_draft_invoices(
        self, *, customer: str, metadata_key: str, value: str
    ) -> list[RemoteInvoice]:
        """Drafts of the customer whose metadata[metadata_key] == value (recovery)."""
        ...

    def list_invoices(self, *, customer: str) -> list[RemoteInvoice]:
        """Every invoice of the customer, any status, without lines (``billsync verify``)."""
        ...

    def get_invoice(self, invoice_id: str, *, with_lines: bool) -> RemoteInvoice: ...

    def add_lines(
        self, invoice_id: str, lines: Sequence[NewLine], *, idempotency_key: str
    ) -> RemoteInvoice: ...

    def update_lines(
        self, invoice_id: str, changes: Sequence[LineChange], *, idempotency_key: str
    ) -> RemoteInvoice: ...

    def remove_lines(
        self, invoice_id: str, line_item_ids: Sequence[str], *, idempotency_key: str
    ) -> RemoteInvoice: ...

    def finalize(
        self, invoice_id: str, *, auto_advance: bool, idempotency_key: str
    ) -> RemoteInvoice: ...

    def delete_draft(self, invoice_id: str, *, idempotency_key: str) -> None: ...

    def create_portal_session(self, *, customer: str, return_url: str | None) -> str:
        """A Customer Portal session; returns its (short-lived) URL."""
        ...

    def list_events(self, *, created_gte: int, starting_after: str | None = None) -> EventPage:
        """One page of the events created at or after ``created_gte``, newest first, after the
        event ``starting_after`` (one request: the caller pages, each page within the budget)."""
        ...


@runtime_checkable
class InvoiceActions(Protocol):
    """What support does to a finalized invoice through Stripe: retry its payment, lower it with
    a credit note. Apart from :class:`StripePort` (the sync engine's), so that a gateway built
    for syncing alone (a repair's, a test's) need not offer them; the Stripe gateway does."""

    def pay_invoice(self, invoice_id: str, *, idempotency_key: str) -> RemoteInvoice:
        """Attempt payment of an open invoice now, with the customer's default payment method
        (raises :class:`StripeCardDeclined` when it is declined)."""
        ...

    def create_credit_note(
        self,
        invoice_id: str,
        *,
        amount: int | None,
        lines: Sequence[CreditNoteLine],
        reason: str | None,
        memo: str | None,
        refund_amount: int,
        credit_amount: int,
        metadata: Mapping[str, str],
        idempotency_key: str,
    ) -> RemoteCreditNote:
        """Lower a finalized invoice: by ``amount`` as a whole, or by ``lines``."""
        ...

    def list_credit_notes(self, *, invoice_id: str) -> list[RemoteCreditNote]:
        """Every credit note of the invoice, newest first."""
        ...


# The Stripe endpoint each port method calls (its first request; a listing's further pages go to
# the same endpoint). Stripe limits every endpoint on its own — 25 requests/s by default, GET
# and POST of one path apart (https://docs.stripe.com/rate-limits) — so the rate budget paces
# each of them besides the global limit.
ENDPOINTS: dict[str, str] = {
    "create_customer": "POST /v1/customers",
    "create_draft_invoice": "POST /v1/invoices",
    "find_draft_invoices": "GET /v1/invoices",
    "list_invoices": "GET /v1/invoices",
    "get_invoice": "GET /v1/invoices/{id}",
    "add_lines": "POST /v1/invoices/{id}/add_lines",
    "update_lines": "POST /v1/invoices/{id}/update_lines",
    "remove_lines": "POST /v1/invoices/{id}/remove_lines",
    "finalize": "POST /v1/invoices/{id}/finalize",
    "delete_draft": "DELETE /v1/invoices/{id}",
    "pay_invoice": "POST /v1/invoices/{id}/pay",
    "create_credit_note": "POST /v1/credit_notes",
    "list_credit_notes": "GET /v1/credit_notes",
    "create_portal_session": "POST /v1/billing_portal/sessions",
    "list_events": "GET /v1/events",
}


def endpoint_of(call: object) -> str | None:
    """The endpoint a call to the port goes to: ``call`` is a bound port method, or a
    ``functools.partial`` of one; None for anything else."""
    function = getattr(call, "func", call)
    return ENDPOINTS.get(getattr(function, "__name__", ""))
