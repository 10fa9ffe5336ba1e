"""Stripe's side of the story: the webhook inbox, its processor, the invoice mirror and the
backstop sweep.

Receiving is cheap and safe: verify the signature on the raw body, store the event once under
its id, answer. Processing happens later (the scheduler's tick), oldest first, with retries:
events arrive in any order and more than once, so the mirror only moves forward (an event
older than the newest one applied is skipped; two events of the same second are settled by
re-reading the invoice from Stripe — with no transaction open: the read comes first, then a
short write transaction checks again that nothing newer was applied meanwhile and applies).
Anything missed — a delivery lost for good — is found by
the sweep, which lists ``GET /v1/events`` since the newest event seen and feeds the same inbox.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection

from billsync.clock import Clock
from billsync.core.display import format_money
from billsync.core.webhook_signature import SignatureError, verify
from billsync.db.database import Database
from billsync.errors import BillsyncError
from billsync.repositories import credit_notes as credit_note_repository
from billsync.repositories import problems, webhooks
from billsync.repositories import sync as sync_repository
from billsync.repositories.problems import NewProblem
from billsync.services.changes import Changes
from billsync.services.invoice_support import credit_note_values
from billsync.sync.port import RemoteCreditNote, RemoteCreditNoteLine, StripeFailure, StripePort

log = logging.getLogger("billsync.webhooks")

SWEEP_CURSOR = "stripe_events_created"
SWEEP_OVERLAP = 60  # seconds listed again each sweep: events of the same second arrive late
FIRST_SWEEP = timedelta(days=1)
MAX_BACKOFF = timedelta(hours=1)
# Stripe's copy of an invoice is read at most this many times for one event (again only when
# another event of the same second was applied between the read and the write).
MAX_STRIPE_READS = 3
# What the inbox can store on either database: the columns' widths, JSON the serializer can
# write (it refuses nesting deeper than 254) and text PostgreSQL takes (no NUL). Stripe's
# events are far inside all of it; anything else is not Stripe's.
EVENT_ID = re.compile(r"evt_[\x21-\x7e]{1,251}")  # printable ASCII, as Stripe's ids
EVENT_TYPE = re.compile(r"[\x21-\x7e]{1,100}")
MAX_CREATED = 253402300799  # 9999-12-31T23:59:59Z: the last second a datetime can hold
MAX_NESTING = 64  # Stripe's objects nest a handful of levels deep


class BadWebhook(BillsyncError):
    status_code = 400
    code = "invalid_webhook"


@dataclass(frozen=True, slots=True)
class Receipt:
    event_id: str
    duplicate: bool


class WebhookInbox:
    def __init__(
        self, database: Database, clock: Clock, secrets: Sequence[str], tolerance: int = 300
    ) -> None:
        self.database = database
        self.clock = clock
        self.secrets = list(secrets)
        self.tolerance = tolerance

    def receive(self, body: bytes, signature: str | None) -> Receipt:
        """Verify and store one delivery. Raises :class:`BadWebhook` (a 400) when it is not
        provably Stripe's, too old, or not an event."""
        try:
            verify(
                body,
                signature,
                self.secrets,
                now=int(self.clock.now().timestamp()),
                tolerance=self.tolerance,
            )
        except SignatureError as error:
            raise BadWebhook(str(error), code="invalid_signature") from None
        try:
            event = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadWebhook("the payload is not JSON", code="invalid_payload") from None
        event_id, event_type, created = _event_fields(event)
        with self.database.transaction() as connection:
            stored = webhooks.store_event(
                connection,
                event_id=event_id,
                event_type=event_type,
                created=created,
                livemode=event.get("livemode") is True,
                payload=event,
                source="webhook",
                now=self.clock.now(),
            )
        return Receipt(event_id, duplicate=not stored)


def _event_fields(event: Any) -> tuple[str, str, int]:
    if not isinstance(event, dict) or event.get("object") != "event":
        raise BadWebhook("the payload is not a Stripe event", code="invalid_payload")
    event_id, event_type, created = event.get("id"), event.get("type"), event.get("created")
    data = event.get("data")
    if not isinstance(event_id, str) or EVENT_ID.fullmatch(event_id) is None:
        raise BadWebhook("the event has no valid id", code="invalid_payload")
    if not isinstance(event_type, str) or EVENT_TYPE.fullmatch(event_type) is None:
        raise BadWebhook("the event has no valid type", code="invalid_payload")
    # bool is an int to Python, not to JSON; a time past year 9999 overflows the column.
    if isinstance(created, bool) or not isinstance(created, int) or not 0 <= created <= MAX_CREATED:
        raise BadWebhook(
            "the event's creation time is not a time in unix seconds", code="invalid_payload"
        )
    if not isinstance(event.get("livemode", False), bool):
        raise BadWebhook("the event's livemode is not true or false", code="invalid_payload")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise BadWebhook("the event has no data.object", code="invalid_payload")
    problem = unstorable(event)
    if problem is not None:
        raise BadWebhook(f"the event {problem}", code="invalid_payload")
    return event_id, event_type, created


def unstorable(payload: Any) -> str | None:
    """Why the inbox cannot keep this JSON alike on SQLite and PostgreSQL, or None: a NUL
    character in any key or string (PostgreSQL's text and jsonb refuse it; SQLite would keep
    it), or nesting deeper than :data:`MAX_NESTING`. NUL only: the inbox keeps Stripe's events
    as sent, and Stripe's text (a description, an address) may hold line breaks or any other
    character. Walked without recursion: the parser accepts nesting deeper than Python's
    recursion limit."""
    pending: list[tuple[Any, int]] = [(payload, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return "contains a NUL character (\\u0000), which Stripe never sends"
        elif isinstance(value, dict | list):
            if depth > MAX_NESTING:
                return f"nests deeper than {MAX_NESTING} levels"
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                pending.append((key, depth))
                pending.append((item, depth + 1))
    return None


@dataclass
class ProcessReport:
    handled: int = 0
    failed: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)


def _when(unix: Any) -> datetime | None:
    if isinstance(unix, bool) or not isinstance(unix, int) or not 0 <= unix <= MAX_CREATED:
        return None
    return datetime.fromtimestamp(unix, UTC)


@dataclass(frozen=True, slots=True)
class StripeCopy:
    """An invoice as Stripe had it, read before the write transaction opened, when the mirror's
    newest applied event was ``after_event``; ``invoice`` is None when Stripe could not be read
    (the event's own copy then stands)."""

    invoice_id: str
    after_event: str | None
    invoice: Mapping[str, Any] | None


class StripeReadNeeded(Exception):
    """Applying the event needs a copy of the invoice read from Stripe after the mirror's
    newest event, with no transaction open: the transaction is rolled back (it wrote nothing)
    and tried again once the copy is read."""


def _needs_stripe(mirror: Mapping[str, Any] | None, event: webhooks.InboxEvent) -> bool:
    """Two events of the same second for one invoice: their order is unknown, so Stripe's
    current copy of the invoice decides."""
    return (
        mirror is not None
        and event.created == int(mirror["last_event_created"])
        and mirror["last_event_id"] != event.id
    )


class WebhookProcessor:
    def __init__(
        self,
        database: Database,
        clock: Clock,
        gateway: StripePort | None,
        changes: Changes | None = None,
    ) -> None:
        self.changes = changes
        self.database = database
        self.clock = clock
        self.gateway = gateway
        self.handlers: dict[str, Callable[[Connection, webhooks.InboxEvent], str]] = {
            "customer.deleted": self._customer_deleted,
            "invoiceitem.deleted": self._invoice_item_deleted,
            "credit_note.created": self._credit_note,
            "credit_note.updated": self._credit_note,
            "credit_note.voided": self._credit_note,
        }

    def process(self, limit: int = 500) -> ProcessReport:
        """Handle the inbox's pending events, oldest first; a failure is retried later."""
        report = ProcessReport()
        now = self.clock.now()
        with self.database.read() as connection:
            pending = webhooks.pending_events(connection, now, limit)
        if pending and self.changes is not None:
            self.changes.accounts_changed(None)
        for event in pending:
            try:
                outcome = self._apply(event, now)
                report.handled += 1
                report.outcomes[outcome] = report.outcomes.get(outcome, 0) + 1
            except Exception as error:  # one bad event must not block the inbox
                log.warning("webhooks.event.failed", extra={"event": event.id, "error": str(error)})
                delay = min(MAX_BACKOFF, timedelta(seconds=5 * 2**event.attempts))
                with self.database.transaction() as connection:
                    webhooks.mark_failed(
                        connection, event.id, f"{type(error).__name__}: {error}", now + delay
                    )
                report.failed += 1
        return report

    def _apply(self, event: webhooks.InboxEvent, now: datetime) -> str:
        """Handle one event and mark it handled, in one write transaction that never waits on
        Stripe: what Stripe must say is read before it opens (on SQLite an open write
        transaction holds the only writer lock, and ingest would wait for the round trip)."""
        for _ in range(MAX_STRIPE_READS):
            stripe_copy = self._read_ahead(event)
            try:
                with self.database.transaction() as connection:
                    outcome = self.handle(connection, event, stripe_copy)
                    webhooks.mark_handled(connection, event.id, outcome, now)
                return outcome
            except StripeReadNeeded:  # another event was applied meanwhile: read again
                continue
        raise RuntimeError(
            f"invoice events kept arriving while Stripe was read {MAX_STRIPE_READS} times"
        )

    def _read_ahead(self, event: webhooks.InboxEvent) -> StripeCopy | None:
        """Stripe's copy of the event's invoice when applying it will need one, read now (no
        transaction open); the write transaction checks again."""
        if not event.type.startswith("invoice.") or self.gateway is None:
            return None
        invoice_id = _invoice_id(event)
        with self.database.read() as connection:
            mirror = webhooks.get_mirror(connection, invoice_id)
        if mirror is None or not _needs_stripe(mirror, event):
            return None
        return StripeCopy(invoice_id, mirror["last_event_id"], self._read_stripe(invoice_id))

    def handle(
        self,
        connection: Connection,
        event: webhooks.InboxEvent,
        stripe_copy: StripeCopy | None = None,
    ) -> str:
        """Apply one event inside the caller's transaction. Raises :class:`StripeReadNeeded`
        (having written nothing) when it needs Stripe's copy of the invoice and was not given
        one: the caller reads it with the transaction closed and calls again."""
        if event.type.startswith("invoice."):
            return self._invoice_event(connection, event, stripe_copy)
        handler = self.handlers.get(event.type)
        return (
            "ignored: not a type billsync follows"
            if handler is None
            else handler(connection, event)
        )

    # --- invoices --------------------------------------------------------------------------

    def _invoice_event(
        self,
        connection: Connection,
        event: webhooks.InboxEvent,
        stripe_copy: StripeCopy | None,
    ) -> str:
        invoice: Mapping[str, Any] = event.payload["data"]["object"]
        invoice_id = _invoice_id(event)
        owner = webhooks.invoice_owner(connection, invoice_id)
        mirror = webhooks.get_mirror(connection, invoice_id)
        if owner is None and mirror is None:
            return "ignored: not a billsync invoice"
        if owner is not None:
            account_id, period_start = owner
        else:
            assert mirror is not None
            account_id, period_start = mirror["account_id"], mirror["period_start"]
        now = self.clock.now()
        last = 0 if mirror is None else int(mirror["last_event_created"])
        if event.created < last:
            return "stale: a newer event was applied"
        if _needs_stripe(mirror, event) and self.gateway is not None:  # same second: ask Stripe
            assert mirror is not None
            if (
                stripe_copy is None
                or stripe_copy.invoice_id != invoice_id
                or stripe_copy.after_event != mirror["last_event_id"]
            ):
                raise StripeReadNeeded  # nothing written yet
            invoice = stripe_copy.invoice or invoice
        status = "deleted" if event.type == "invoice.deleted" else str(invoice.get("status"))
        transitions = invoice.get("status_transitions") or {}
        values: dict[str, Any] = {
            "account_id": account_id,
            "period_start": period_start,
            "number": invoice.get("number"),
            "status": status,
            "currency": invoice.get("currency", ""),
            "total": int(invoice.get("total") or 0),
            "subtotal": None if invoice.get("subtotal") is None else int(invoice["subtotal"]),
            "discount": sum(
                int(d.get("amount") or 0) for d in invoice.get("total_discount_amounts") or ()
            ),
            "starting_balance": int(invoice.get("starting_balance") or 0),
            "amount_due": int(invoice.get("amount_due") or 0),
            "amount_paid": int(invoice.get("amount_paid") or 0),
            "amount_remaining": int(invoice.get("amount_remaining") or 0),
            "hosted_invoice_url": invoice.get("hosted_invoice_url"),
            "invoice_pdf": invoice.get("invoice_pdf"),
            "attempt_count": int(invoice.get("attempt_count") or 0),
            "finalized_at": _when(transitions.get("finalized_at")),
            "paid_at": _when(transitions.get("paid_at")),
            "voided_at": _when(transitions.get("voided_at")),
            "last_event_created": event.created,
            "last_event_id": event.id,
            "updated_at": now,
        }
        if event.type == "invoice.payment_failed":
            values["last_payment_error"] = payment_failure(values["attempt_count"])
        elif status == "paid":
            values["last_payment_error"] = None
        if not webhooks.put_mirror_if_newer(connection, invoice_id, values):
            return "stale: a newer event was applied"
        where = {
            "account_id": account_id,
            "period_start": period_start,
            "stripe_object_id": invoice_id,
        }
        self._problems(connection, event, where, values)
        return f"mirrored: {event.type}"

    def _read_stripe(self, invoice_id: str) -> Mapping[str, Any] | None:
        """Stripe's copy of the invoice (None if Stripe cannot be read); called with no
        transaction open."""
        if self.gateway is None:
            return None
        try:
            remote = self.gateway.get_invoice(invoice_id, with_lines=False)
        except StripeFailure:
            return None
        return {
            "id": remote.id,
            "status": remote.status,
            "currency": remote.currency,
            "total": remote.total,
            "subtotal": remote.subtotal,
            "total_discount_amounts": [{"amount": remote.discount}],
            "starting_balance": remote.starting_balance,
            "amount_due": remote.amount_due,
            "amount_paid": remote.amount_paid,
            "amount_remaining": remote.amount_remaining,
            "number": remote.number,
            "hosted_invoice_url": remote.hosted_invoice_url,
            "invoice_pdf": remote.invoice_pdf,
            "attempt_count": remote.attempt_count,
            "status_transitions": {
                "finalized_at": remote.finalized_at,
                "paid_at": remote.paid_at,
                "voided_at": remote.voided_at,
            },
        }

    def _problems(
        self,
        connection: Connection,
        event: webhooks.InboxEvent,
        base: dict[str, Any],
        values: dict[str, Any],
    ) -> None:
        """Failed payments and finalizations, voided or deleted invoices: for a person."""
        now = self.clock.now()
        invoice_id = base["stripe_object_id"]
        if event.type == "invoice.payment_failed":
            problems.report(
                connection,
                NewProblem(
                    kind="payment_failed",
                    fingerprint=f"payment_failed:{invoice_id}",
                    detail=f"invoice {values['number'] or invoice_id}: "
                    f"{values['last_payment_error']}, "
                    f"{format_money(values['amount_remaining'], values['currency'])} still due "
                    "(Stripe retries and dunning apply)",
                    stripe_amount=values["amount_remaining"],
                    **base,
                ),
                now,
            )
        elif event.type == "invoice.finalization_failed":
            problems.report(
                connection,
                NewProblem(
                    kind="finalization_failed",
                    fingerprint=problems.finalization_failed(invoice_id),
                    detail=f"Stripe could not finalize invoice {invoice_id}",
                    **base,
                ),
                now,
            )
        elif event.type == "invoice.voided":
            problems.report(
                connection,
                NewProblem(
                    kind="invoice_voided",
                    fingerprint=f"invoice_voided:{invoice_id}",
                    detail=f"invoice {values['number'] or invoice_id} was voided in Stripe "
                    "(billsync never voids): decide whether to re-bill",
                    **base,
                ),
                now,
            )
        elif event.type == "invoice.deleted" and webhooks.invoice_owner(connection, invoice_id):
            problems.report(
                connection,
                NewProblem(
                    kind="invoice_deleted",
                    fingerprint=f"invoice_deleted:{invoice_id}",
                    detail=f"the draft {invoice_id} was deleted in Stripe while billsync "
                    "still uses it",
                    **base,
                ),
                now,
            )
        if values["status"] == "paid":
            self._resolve(connection, f"payment_failed:{invoice_id}", "paid", now)

    @staticmethod
    def _resolve(connection: Connection, fingerprint: str, why: str, now: datetime) -> None:
        for problem in problems.open_problems(connection):
            if problem.fingerprint == fingerprint:
                problems.resolve(connection, problem.id, why, now)

    # --- credit notes -----------------------------------------------------------------------

    def _credit_note(self, connection: Connection, event: webhooks.InboxEvent) -> str:
        """A credit note of one of billsync's invoices (issued from the console or in the
        Dashboard), into billsync's record of them; an older event never rolls it back."""
        note = _remote_credit_note(event.payload["data"]["object"])
        owner = webhooks.invoice_owner(connection, note.invoice)
        if owner is None:
            mirror = webhooks.get_mirror(connection, note.invoice)
            if mirror is None:
                return "ignored: not a billsync invoice"
            owner = (mirror["account_id"], mirror["period_start"])
        values = credit_note_values(
            note, owner[0], owner[1], self.clock.now(), event_created=event.created
        )
        if not credit_note_repository.put_credit_note(connection, values):
            return "stale: a newer event was applied"
        return f"recorded: {event.type}"

    # --- customers and invoice items -------------------------------------------------------

    def _customer_deleted(self, connection: Connection, event: webhooks.InboxEvent) -> str:
        customer_id = str(event.payload["data"]["object"].get("id", ""))
        account_id = sync_repository.account_of_customer(connection, customer_id)
        if account_id is None:  # one indexed read, however many accounts there are
            return "ignored: not a billsync customer"
        problems.report(
            connection,
            NewProblem(
                kind="customer_deleted",
                fingerprint=f"customer_deleted:{customer_id}",
                account_id=account_id,
                stripe_object_id=customer_id,
                detail=f"the Stripe customer {customer_id} of account {account_id} was deleted",
            ),
            self.clock.now(),
        )
        return "drift: customer deleted"

    def _invoice_item_deleted(self, connection: Connection, event: webhooks.InboxEvent) -> str:
        item_id = str(event.payload["data"]["object"].get("id", ""))
        found = webhooks.line_of_invoice_item(connection, item_id)
        if found is None:
            return "ignored: not a billsync line (or removed by billsync)"
        line_id, account_id, period_start = found
        problems.report(
            connection,
            NewProblem(
                kind="removed_in_stripe",
                fingerprint=f"drift:removed_in_stripe:{account_id}:"
                f"{period_start.isoformat()}:{line_id}",
                account_id=account_id,
                period_start=period_start,
                line_id=line_id,
                stripe_object_id=item_id,
                detail=f"line {line_id}'s invoice item {item_id} was deleted in Stripe",
            ),
            self.clock.now(),
        )
        return "drift: invoice item deleted"


def _remote_credit_note(obj: Mapping[str, Any]) -> RemoteCreditNote:
    """A credit note as an event carries it (docs.stripe.com/api/credit_notes/object)."""
    invoice = obj.get("invoice")
    refunds = obj.get("refunds") or ()
    refunded = sum(int(refund.get("amount_refunded") or 0) for refund in refunds)
    post = int(obj.get("post_payment_amount") or 0)
    out_of_band = int(obj.get("out_of_band_amount") or 0)
    lines = (obj.get("lines") or {}).get("data") or ()
    return RemoteCreditNote(
        id=str(obj.get("id", "")),
        invoice=str(invoice.get("id", "") if isinstance(invoice, dict) else invoice or ""),
        number=str(obj.get("number") or ""),
        status=str(obj.get("status") or "issued"),
        currency=str(obj.get("currency") or ""),
        total=int(obj.get("total") or 0),
        pre_payment_amount=int(obj.get("pre_payment_amount") or 0),
        post_payment_amount=post,
        refund_amount=refunded,
        credit_amount=max(post - refunded - out_of_band, 0),
        out_of_band_amount=out_of_band,
        reason=obj.get("reason"),
        memo=obj.get("memo"),
        pdf=obj.get("pdf"),
        created=int(obj.get("created") or 0),
        metadata={str(k): str(v) for k, v in (obj.get("metadata") or {}).items()},
        lines=tuple(
            RemoteCreditNoteLine(
                line.get("invoice_line_item"), int(line.get("amount") or 0), line.get("description")
            )
            for line in lines
        ),
    )


def payment_failure(attempt_count: int) -> str:
    """What failed, for a person: Stripe counts an invoice's payment attempts from 1
    (``attempt_count``); 0 means the count was not known when the failure was mirrored."""
    if attempt_count < 1:
        return "a payment attempt failed"
    return f"payment attempt {attempt_count} failed"


def _invoice_id(event: webhooks.InboxEvent) -> str:
    return str(event.payload["data"]["object"].get("id", ""))


class Sweep:
    """The backstop: list Stripe's events since the newest seen and feed the same inbox."""

    def __init__(self, database: Database, clock: Clock, gateway: StripePort) -> None:
        self.database = database
        self.clock = clock
        self.gateway = gateway

    def run(self) -> int:
        """Every event since the cursor, page after page until the cursor is reached (Stripe
        lists newest first): each page goes to the inbox as it is read, and the cursor moves
        only once all of them are in — a sweep cut short (Stripe down, a restart) leaves it
        where it was, and the next one reads the same span again (the inbox keeps each event
        once). After a webhook outage, however many events arrived, none is skipped."""
        now = self.clock.now()
        with self.database.read() as connection:
            cursor = webhooks.get_cursor(connection, SWEEP_CURSOR)
        since = (
            int((now - FIRST_SWEEP).timestamp()) if cursor is None else int(cursor) - SWEEP_OVERLAP
        )
        added, newest, after = 0, since + SWEEP_OVERLAP, None
        while True:
            page = self.gateway.list_events(created_gte=since, starting_after=after)
            with self.database.transaction() as connection:
                for event in page.events:
                    problem = unstorable(event.payload)
                    if problem is not None:  # refused, as its delivery would be
                        log.warning(
                            "webhooks.sweep.unstorable", extra={"event": event.id, "error": problem}
                        )
                        continue
                    added += webhooks.store_event(
                        connection,
                        event_id=event.id,
                        event_type=event.type,
                        created=event.created,
                        livemode=event.livemode,
                        payload=dict(event.payload),
                        source="sweep",
                        now=now,
                    )
            newest = max([newest, *(event.created for event in page.events)])
            if not page.has_more or not page.events:
                break
            after = page.events[-1].id
        with self.database.transaction() as connection:
            webhooks.set_cursor(connection, SWEEP_CURSOR, str(max(newest, since)), now)
        return added
