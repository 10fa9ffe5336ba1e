"""The Stripe gateway: :class:`~billsync.sync.port.StripePort` over the real stripe SDK.

This is the only module of billsync that imports ``stripe``. Every request's parameters are
built as the SDK's own TypedDicts (so mypy checks field names against the pinned API version),
every write carries the caller's idempotency key, and every SDK error leaves as a
:class:`~billsync.sync.port.StripeFailure` that says whether the write may have happened.

Lines: :meth:`StripeGateway.get_invoice` with ``with_lines=True`` returns all of the invoice's
lines (Stripe embeds only the first 10 in an invoice). Every other method returns the invoice
with ``lines=()``: an embedded first page is never passed off as the whole invoice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import stripe
from stripe.params import (
    CreditNoteCreateParams,
    CreditNoteCreateParamsLine,
    CreditNoteListParams,
    CustomerCreateParams,
    EventListParams,
    InvoiceAddLinesParams,
    InvoiceAddLinesParamsLine,
    InvoiceCreateParams,
    InvoiceFinalizeInvoiceParams,
    InvoiceLineItemListParams,
    InvoiceListParams,
    InvoicePayParams,
    InvoiceRemoveLinesParams,
    InvoiceRemoveLinesParamsLine,
    InvoiceUpdateLinesParams,
    InvoiceUpdateLinesParamsLine,
)
from stripe.params.billing_portal import SessionCreateParams

from billsync.observability.instruments import observe_stripe
from billsync.sync.port import (
    CreditNoteLine,
    EventPage,
    LineChange,
    NewLine,
    RemoteCreditNote,
    RemoteCreditNoteLine,
    RemoteEvent,
    RemoteInvoice,
    RemoteLine,
    StripeAmbiguous,
    StripeCardDeclined,
    StripeFailure,
    StripeRateLimited,
    StripeRejected,
    StripeUnavailable,
)

# Pinned explicitly: the SDK's types, the emulator and billsync's expectations all follow it.
STRIPE_API_VERSION = "2026-10-28.endive"
# The invoice's link to billsync's detailed statement of the period (core.rollup).
STATEMENT_FIELD = "Detailed statement"
STATEMENT_FIELD_MAX = 140

# Stripe's largest page; one invoice holds at most 250 items, so at most 3 pages of lines.
PAGE_LIMIT = 100
# Path segments of Stripe's API that are names, not ids: any other segment is an object's id.
_ROUTE_WORDS = frozenset({
    "v1", "customers", "invoices", "invoiceitems", "lines", "add_lines", "update_lines",
    "remove_lines", "finalize", "pay", "send", "void", "mark_uncollectible", "billing_portal",
    "sessions", "events", "search", "credit_notes",
})  # fmt: skip
_MAX_ROUTE_SEGMENTS = 6

log = logging.getLogger("billsync.stripe")


def stripe_endpoint(method: str, url: str) -> str:
    """``POST /v1/invoices/{id}/add_lines``: a request's method and route with every id
    replaced, so that a metric labelled with it has a bounded set of values."""
    segments = [part for part in urlsplit(url).path.split("/") if part][:_MAX_ROUTE_SEGMENTS]
    route = "/".join(part if part in _ROUTE_WORDS else "{id}" for part in segments)
    return f"{method.upper()} /{route}"


class _RequestsClient(stripe.RequestsClient):
    """The SDK's requests client, but a connection broken while the response body is read
    (``ChunkedEncodingError``: the status line came, the body did not) counts as a network
    error worth retrying, like a timeout or a refused connection already does. The SDK replays
    a write with the same idempotency key, so Stripe answers with the stored result instead of
    writing twice.

    Every HTTP request passes here, each retry of the SDK's included: it is counted and timed
    (``billsync_stripe_requests_total``, ``billsync_stripe_request_duration_seconds``) and
    logged as ``stripe.request``, a line that carries the sync run's id (``sync_id``) and
    Stripe's own request id, which Stripe's support asks for."""

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data: Any = None,
        *,
        _usage: list[str] | None = None,
    ) -> tuple[Any, int, Mapping[str, str]]:
        endpoint = stripe_endpoint(method, url)
        status: int | None = None
        stripe_request_id: str | None = None
        started = time.perf_counter()
        try:
            response = super().request(method, url, headers, post_data)
            status, stripe_request_id = response[1], response[2].get("Request-Id")
            return response
        except stripe.APIConnectionError as error:
            if isinstance(error.__cause__, self.requests.exceptions.ChunkedEncodingError):
                error.should_retry = True
            raise
        finally:
            seconds = time.perf_counter() - started
            observe_stripe(endpoint, status, seconds)
            # Answers that are routine under load (a 429, a 409 while a key is in use) are
            # counted, and logged at DEBUG with the successes; the rest want a look.
            routine = status is not None and (status < 400 or status in (409, 429))
            log.log(
                logging.DEBUG if routine else logging.INFO,
                "stripe.request",
                extra={"endpoint": endpoint, "status": status or "network_error",
                       "duration_ms": round(seconds * 1000, 1),
                       "stripe_request_id": stripe_request_id},
            )  # fmt: skip


class StripeGateway:
    """:class:`~billsync.sync.port.StripePort` with ``stripe.StripeClient``.

    ``max_network_retries`` is the SDK's own retry budget: timeouts, lost connections, 409
    (idempotency key in use), 429 ``lock_timeout`` (``Stripe-Should-Retry``) and 5xx are
    retried with the same idempotency key and exponential backoff; 429 ``rate_limit`` is not.
    """

    def __init__(
        self,
        api_key: str,
        *,
        api_base: str | None = None,
        timeout: float = 10.0,
        max_network_retries: int = 2,
    ) -> None:
        self._client = stripe.StripeClient(
            api_key,
            stripe_version=STRIPE_API_VERSION,
            base_addresses={"api": api_base} if api_base is not None else None,
            http_client=_RequestsClient(timeout=timeout),
            max_network_retries=max_network_retries,
        )

    # --- writes ------------------------------------------------------------------------

    def create_customer(
        self, *, name: str, email: str | None, metadata: Mapping[str, str], idempotency_key: str
    ) -> str:
        params: CustomerCreateParams = {"name": name, "metadata": dict(metadata)}
        if email is not None:
            params["email"] = email
        with _translated(write=True):
            customer = self._client.v1.customers.create(params, _write(idempotency_key))
        return customer.id

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
        params: InvoiceCreateParams = {
            "customer": customer,
            "currency": currency,
            "description": description,
            "metadata": dict(metadata),
            "auto_advance": False,
            "collection_method": "charge_automatically",
            "pending_invoice_items_behavior": "exclude",
        }
        if statement_url is not None:
            # A custom field shows under the invoice's header, on the PDF and the hosted page;
            # its value may be up to 140 characters (docs.stripe.com/api/invoices/create
            # #create_invoice-custom_fields) — a longer link goes in the footer.
            if len(statement_url) <= STATEMENT_FIELD_MAX:
                params["custom_fields"] = [{"name": STATEMENT_FIELD, "value": statement_url}]
            else:
                params["footer"] = f"{STATEMENT_FIELD}: {statement_url}"
        if not inherit_discounts:
            # "If not specified, inherits the discount from the invoice's customer. Pass an
            # empty string to avoid inheriting any discounts." (docs.stripe.com/api/invoices/
            # create, discounts)
            params["discounts"] = ""
        with _translated(write=True):
            invoice = self._client.v1.invoices.create(params, _write(idempotency_key))
        return _remote_invoice(invoice)

    def add_lines(
        self, invoice_id: str, lines: Sequence[NewLine], *, idempotency_key: str
    ) -> RemoteInvoice:
        if not lines:
            return self.get_invoice(invoice_id, with_lines=False)
        params: InvoiceAddLinesParams = {"lines": [_new_line(line) for line in lines]}
        with _translated(write=True):
            invoice = self._client.v1.invoices.add_lines(
                invoice_id, params, _write(idempotency_key)
            )
        return _with_embedded_lines(invoice)

    def update_lines(
        self, invoice_id: str, changes: Sequence[LineChange], *, idempotency_key: str
    ) -> RemoteInvoice:
        if not changes:
            return self.get_invoice(invoice_id, with_lines=False)
        params: InvoiceUpdateLinesParams = {"lines": [_line_change(change) for change in changes]}
        with _translated(write=True):
            invoice = self._client.v1.invoices.update_lines(
                invoice_id, params, _write(idempotency_key)
            )
        return _with_embedded_lines(invoice)

    def remove_lines(
        self, invoice_id: str, line_item_ids: Sequence[str], *, idempotency_key: str
    ) -> RemoteInvoice:
        if not line_item_ids:
            return self.get_invoice(invoice_id, with_lines=False)
        removals: list[InvoiceRemoveLinesParamsLine] = [
            {"id": line_item_id, "behavior": "delete"} for line_item_id in line_item_ids
        ]
        params: InvoiceRemoveLinesParams = {"lines": removals}
        with _translated(write=True):
            invoice = self._client.v1.invoices.remove_lines(
                invoice_id, params, _write(idempotency_key)
            )
        return _with_embedded_lines(invoice)

    def finalize(
        self, invoice_id: str, *, auto_advance: bool, idempotency_key: str
    ) -> RemoteInvoice:
        params: InvoiceFinalizeInvoiceParams = {"auto_advance": auto_advance}
        with _translated(write=True):
            invoice = self._client.v1.invoices.finalize_invoice(
                invoice_id, params, _write(idempotency_key)
            )
        return _with_embedded_lines(invoice)

    def delete_draft(self, invoice_id: str, *, idempotency_key: str) -> None:
        with _translated(write=True):
            self._client.v1.invoices.delete(invoice_id, None, _write(idempotency_key))

    def pay_invoice(self, invoice_id: str, *, idempotency_key: str) -> RemoteInvoice:
        """``POST /v1/invoices/{id}/pay``: one payment attempt now, out of Stripe's retry
        schedule (docs.stripe.com/api/invoices/pay)."""
        params: InvoicePayParams = {}
        with _translated(write=True):
            invoice = self._client.v1.invoices.pay(invoice_id, params, _write(idempotency_key))
        return _remote_invoice(invoice)

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
        """``POST /v1/credit_notes`` (docs.stripe.com/api/credit_notes/create): ``amount`` for
        the invoice as a whole, else ``lines`` of type ``invoice_line_item``; what the invoice
        still has to be paid is lowered first, the rest is ``refund_amount`` or
        ``credit_amount`` (the customer's balance)."""
        params: CreditNoteCreateParams = {"invoice": invoice_id, "metadata": dict(metadata)}
        if lines:
            params["lines"] = [_credit_note_line(line) for line in lines]
        elif amount is not None:
            params["amount"] = amount
        if reason is not None:
            params["reason"] = reason
        if memo:
            params["memo"] = memo
        if refund_amount:
            params["refund_amount"] = refund_amount
        if credit_amount:
            params["credit_amount"] = credit_amount
        with _translated(write=True):
            note = self._client.v1.credit_notes.create(params, _write(idempotency_key))
        return _remote_credit_note(note)

    def list_credit_notes(self, *, invoice_id: str) -> list[RemoteCreditNote]:
        params: CreditNoteListParams = {"invoice": invoice_id, "limit": PAGE_LIMIT}
        found: list[RemoteCreditNote] = []
        with _translated():
            while True:
                page = self._client.v1.credit_notes.list(params)
                found.extend(_remote_credit_note(note) for note in page.data)
                if not page.has_more or not page.data:
                    return found
                params["starting_after"] = page.data[-1].id

    # --- reads -------------------------------------------------------------------------

    def get_invoice(self, invoice_id: str, *, with_lines: bool) -> RemoteInvoice:
        with _translated():
            invoice = self._client.v1.invoices.retrieve(invoice_id)
            if not with_lines:
                return _remote_invoice(invoice)
            embedded = invoice.lines
            lines = list(self._all_lines(invoice_id)) if embedded.has_more else embedded.data
        return _remote_invoice(invoice, tuple(_remote_line(line) for line in lines), True)

    def find_draft_invoices(
        self, *, customer: str, metadata_key: str, value: str
    ) -> list[RemoteInvoice]:
        params: InvoiceListParams = {"customer": customer, "status": "draft", "limit": PAGE_LIMIT}
        return [
            invoice
            for invoice in self._list_invoices(params)
            if invoice.metadata.get(metadata_key) == value
        ]

    def list_invoices(self, *, customer: str) -> list[RemoteInvoice]:
        return self._list_invoices({"customer": customer, "limit": PAGE_LIMIT})

    def _list_invoices(self, params: InvoiceListParams) -> list[RemoteInvoice]:
        found: list[RemoteInvoice] = []
        with _translated():
            while True:
                page = self._client.v1.invoices.list(params)
                found.extend(_remote_invoice(invoice) for invoice in page.data)
                if not page.has_more or not page.data:
                    return found
                params["starting_after"] = page.data[-1].id

    def create_portal_session(self, *, customer: str, return_url: str | None) -> str:
        params: SessionCreateParams = {"customer": customer}
        if return_url:
            params["return_url"] = return_url
        with _translated():
            session = self._client.v1.billing_portal.sessions.create(params)
        return session.url

    def list_events(self, *, created_gte: int, starting_after: str | None = None) -> EventPage:
        params: EventListParams = {"created": {"gte": created_gte}, "limit": PAGE_LIMIT}
        if starting_after is not None:
            params["starting_after"] = starting_after
        with _translated():
            page = self._client.v1.events.list(params)
        events = tuple(
            RemoteEvent(
                id=event.id,
                type=event.type,
                created=event.created,
                livemode=event.livemode,
                payload=_wire(event.to_dict()),
            )
            for event in page.data
        )
        return EventPage(events, bool(page.has_more))

    # --- the account's set-up (``billsync doctor``) ----------------------------------------

    def ping(self) -> None:
        """One cheap authenticated read: the key works."""
        with _translated():
            self._client.v1.customers.list({"limit": 1})

    def list_portal_configurations(self) -> list[dict[str, Any]]:
        with _translated():
            page = self._client.v1.billing_portal.configurations.list({"limit": PAGE_LIMIT})
        return [configuration.to_dict() for configuration in page.data]

    def list_webhook_endpoints(self) -> list[dict[str, Any]]:
        with _translated():
            page = self._client.v1.webhook_endpoints.list({"limit": PAGE_LIMIT})
        return [endpoint.to_dict() for endpoint in page.data]

    def _all_lines(self, invoice_id: str) -> Iterator[stripe.InvoiceLineItem]:
        """Every line of the invoice, in order, a page of up to ``PAGE_LIMIT`` at a time."""
        params: InvoiceLineItemListParams = {"limit": PAGE_LIMIT}
        while True:
            page = self._client.v1.invoices.line_items.list(invoice_id, params)
            yield from page.data
            if not page.has_more or not page.data:
                return
            params["starting_after"] = page.data[-1].id


# --- requests ------------------------------------------------------------------------------


def _write(idempotency_key: str) -> stripe.RequestOptions:
    return {"idempotency_key": idempotency_key}


def _new_line(line: NewLine) -> InvoiceAddLinesParamsLine:
    return {
        "amount": line.amount,
        "description": line.description,
        "period": {"start": line.period_start, "end": line.period_end},
        "metadata": dict(line.metadata),
    }


def _credit_note_line(line: CreditNoteLine) -> CreditNoteCreateParamsLine:
    return {"type": "invoice_line_item", "invoice_line_item": line.line_item_id,
            "amount": line.amount}  # fmt: skip


def _line_change(change: LineChange) -> InvoiceUpdateLinesParamsLine:
    return {
        "id": change.line_item_id,
        "amount": change.amount,
        "description": change.description,
        "metadata": dict(change.metadata),
    }


# --- results -------------------------------------------------------------------------------


def _wire(value: Any) -> Any:
    """An SDK dict as Stripe sent it: the SDK parses decimal strings into Decimals."""
    if isinstance(value, dict):
        return {key: _wire(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_wire(item) for item in value]
    if isinstance(value, Decimal):
        return format(value, "f")
    return value


def _with_embedded_lines(invoice: stripe.Invoice) -> RemoteInvoice:
    """A write's response: its embedded lines count only when they are all of them."""
    embedded = invoice.lines
    if embedded is None or embedded.has_more:
        return _remote_invoice(invoice)
    return _remote_invoice(invoice, tuple(_remote_line(line) for line in embedded.data), True)


def _remote_invoice(
    invoice: stripe.Invoice, lines: tuple[RemoteLine, ...] = (), complete: bool = False
) -> RemoteInvoice:
    customer = invoice.customer
    return RemoteInvoice(
        id=invoice.id,
        customer=customer if isinstance(customer, str) else (customer.id if customer else ""),
        status=invoice.status or "",
        currency=invoice.currency,
        total=invoice.total,
        amount_due=invoice.amount_due,
        amount_paid=invoice.amount_paid,
        amount_remaining=invoice.amount_remaining,
        number=invoice.number,
        hosted_invoice_url=invoice.hosted_invoice_url,
        invoice_pdf=invoice.invoice_pdf,
        metadata=_metadata(invoice.metadata),
        lines=lines,
        lines_complete=complete,
        subtotal=invoice.subtotal,
        discount=sum(d.amount for d in invoice.total_discount_amounts or ()),
        starting_balance=invoice.starting_balance or 0,
        pre_payment_credit_notes_amount=invoice.pre_payment_credit_notes_amount or 0,
        post_payment_credit_notes_amount=invoice.post_payment_credit_notes_amount or 0,
        attempt_count=invoice.attempt_count or 0,
        **_transitions(invoice),
    )


def _transitions(invoice: stripe.Invoice) -> dict[str, int | None]:
    """When the invoice was finalized, paid, voided (``status_transitions``)."""
    moments = getattr(invoice, "status_transitions", None)
    if moments is None:
        return {}
    return {
        "finalized_at": moments.finalized_at,
        "paid_at": moments.paid_at,
        "voided_at": moments.voided_at,
    }


def _remote_credit_note(note: stripe.CreditNote) -> RemoteCreditNote:
    invoice = note.invoice
    return RemoteCreditNote(
        id=note.id,
        invoice=invoice if isinstance(invoice, str) else invoice.id,
        number=note.number,
        status=note.status,
        currency=note.currency,
        total=note.total,
        pre_payment_amount=note.pre_payment_amount,
        post_payment_amount=note.post_payment_amount,
        refund_amount=sum(refund.amount_refunded for refund in note.refunds or ()),
        credit_amount=note.post_payment_amount
        - sum(refund.amount_refunded for refund in note.refunds or ())
        - (note.out_of_band_amount or 0),
        out_of_band_amount=note.out_of_band_amount or 0,
        reason=note.reason,
        memo=note.memo,
        pdf=note.pdf,
        created=note.created,
        metadata=_metadata(note.metadata),
        lines=tuple(
            RemoteCreditNoteLine(line.invoice_line_item, line.amount, line.description)
            for line in note.lines.data
        ),
    )


def _remote_line(line: stripe.InvoiceLineItem) -> RemoteLine:
    details = line.parent.invoice_item_details if line.parent is not None else None
    return RemoteLine(
        line_item_id=line.id,
        invoice_item_id=details.invoice_item if details is not None else None,
        amount=line.amount,
        currency=line.currency,
        description=line.description,
        metadata=_metadata(line.metadata),
    )


def _metadata(metadata: stripe.StripeObject | None) -> dict[str, str]:
    """Stripe's metadata object as a plain dict (a StripeObject is not a mapping)."""
    if metadata is None:
        return {}
    return {str(key): str(value) for key, value in metadata.to_dict().items()}


# --- errors --------------------------------------------------------------------------------


@contextmanager
def _translated(*, write: bool = False) -> Iterator[None]:
    """Turns every SDK error into the port's :class:`StripeFailure` family."""
    try:
        yield
    except stripe.StripeError as error:
        raise _failure(error, write=write) from error


def _failure(error: stripe.StripeError, *, write: bool = False) -> StripeFailure:
    message = error.user_message or type(error).__name__
    status = error.http_status
    code = _error_code(error)
    if isinstance(error, stripe.RateLimitError):
        return StripeRateLimited(message, code=code or "rate_limit", status=status)
    if isinstance(error, stripe.APIConnectionError):
        return StripeAmbiguous(message, code=code, status=status)
    if isinstance(error, stripe.CardError):
        return StripeCardDeclined(message, code=code, status=status)
    if status == 409:
        # Another request with this idempotency key is still running: it may yet write.
        return StripeAmbiguous(message, code=code, status=status)
    if status is not None and status >= 500:
        if write:
            # A 500 can come after the endpoint started: Stripe stores it under the key and
            # replays it (docs.stripe.com/api/idempotent_requests). Whether it wrote is
            # unknown: read back before writing again (then with a key of its own).
            return StripeAmbiguous(message, code=code or "api_error", status=status)
        return StripeUnavailable(message, code=code, status=status)
    if status is not None and status >= 400:
        # InvalidRequestError, IdempotencyError, AuthenticationError, PermissionError, ...
        return StripeRejected(message, code=code, status=status)
    # No usable answer (e.g. an unreadable 200 body): the write may have happened.
    return StripeAmbiguous(message, code=code, status=status)


def _error_code(error: stripe.StripeError) -> str | None:
    """Stripe's ``error.code``, else its ``error.type`` (``idempotency_error`` has no code)."""
    if error.code:
        return error.code
    body = error.json_body
    if isinstance(body, dict):
        details = body.get("error")
        if isinstance(details, dict):
            for field in ("code", "type"):
                value = details.get(field)
                if isinstance(value, str) and value:
                    return value
    return None
