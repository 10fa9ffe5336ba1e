"""The emulator's in-memory state: objects, the clock, ids, events, idempotency, statistics.

Limits: everything lives in one process's memory and is lost on restart; one emulator serves
one Stripe "account" (test and live data are kept apart by each object's ``livemode``).
"""

from __future__ import annotations

import copy
import random
import secrets
import string
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from billsync.emulator.errors import StripeError, not_found

API_VERSION = "2026-10-28.endive"
_ALPHABET = string.ascii_letters + string.digits


# Ids only need to be unique and look like Stripe's, not to be secret: a fast generator seeded
# from the OS once.
_ids = random.Random(secrets.randbits(128))


def new_id(prefix: str) -> str:
    return f"{prefix}_{''.join(_ids.choices(_ALPHABET, k=24))}"


class EmulatorClock:
    """Unix seconds: real time plus an offset, or frozen. Moved by the control plane."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._frozen: float | None = None
        self._lock = threading.Lock()

    def now(self) -> int:
        with self._lock:
            if self._frozen is not None:
                return int(self._frozen)
            return int(time.time() + self._offset)

    def advance(self, seconds: float) -> int:
        with self._lock:
            if self._frozen is not None:
                self._frozen += seconds
            else:
                self._offset += seconds
        return self.now()

    def set(self, unix: float, *, freeze: bool = False) -> int:
        with self._lock:
            if freeze:
                self._frozen = unix
            else:
                self._frozen = None
                self._offset = unix - time.time()
        return self.now()

    def unfreeze(self) -> None:
        with self._lock:
            if self._frozen is not None:
                self._offset = self._frozen - time.time()
                self._frozen = None

    def describe(self) -> dict[str, Any]:
        with self._lock:
            frozen = self._frozen is not None
        return {"now": self.now(), "frozen": frozen}


@dataclass
class EmulatorConfig:
    """Behaviour knobs (all settable through ``POST /_emulator/config``)."""

    rate_limit_test: float = 25.0  # requests/s per mode, as Stripe's sandbox
    rate_limit_live: float = 100.0
    # Every endpoint (a method and a path template: "POST /v1/invoices/{id}/update_lines";
    # GET and POST of one path apart) also has a limit of its own, per mode, as Stripe's
    # "API endpoints have a default limit of 25 requests per second"
    # (https://docs.stripe.com/rate-limits); endpoint_rates raises or lowers one of them.
    rate_limit_endpoint: float = 25.0
    endpoint_rates: dict[str, float] = field(default_factory=dict)
    auto_advance_delay: int = 3600  # s on the emulator clock before an auto_advance draft finalizes
    # s on the emulator clock from finalization to the first automatic payment attempt
    collection_delay: int = 0
    idempotency_ttl: int = 24 * 3600
    hang_seconds: float = 30.0
    webhook_retry_base_seconds: float = 1.0  # real seconds; doubles each attempt
    webhook_max_attempts: int = 6
    webhook_timeout_seconds: float = 5.0
    public_url: str = "http://127.0.0.1:12111"


@dataclass
class IdempotentResult:
    fingerprint: tuple[str, str, str]
    created: int
    status: int = 0
    body: dict[str, Any] | None = None
    in_flight: bool = True


@dataclass
class Stats:
    total: int = 0
    by_endpoint: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    rate_limited: int = 0
    lock_timeouts: int = 0
    idempotent_replays: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    webhook_attempts: int = 0
    webhook_deliveries: int = 0
    webhook_failures: int = 0
    webhook_chaos: Counter[str] = field(default_factory=Counter)  # dropped, duplicated, reordered
    per_second: Counter[int] = field(default_factory=Counter)  # wall-clock second → requests

    def as_dict(self, *, per_second: bool = False) -> dict[str, Any]:
        timeline = {"per_second": {str(k): v for k, v in sorted(self.per_second.items())}}
        return {
            **(timeline if per_second else {}),
            "total": self.total,
            "by_endpoint": dict(self.by_endpoint),
            "by_status": {str(k): v for k, v in self.by_status.items()},
            "rate_limited": self.rate_limited,
            "lock_timeouts": self.lock_timeouts,
            "idempotent_replays": self.idempotent_replays,
            "faults": dict(self.faults),
            "webhooks": {
                "attempts": self.webhook_attempts,
                "delivered": self.webhook_deliveries,
                "failed_attempts": self.webhook_failures,
                "chaos": dict(self.webhook_chaos),
            },
        }


class State:
    """All objects of the emulated account. Mutated only on the event loop's thread."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self._started_with = copy.deepcopy(self.config)  # what a reset goes back to
        self.clock = EmulatorClock()
        self.reset()

    def reset_config(self) -> None:
        """The behaviour knobs as the emulator started (its command line), not as tests left
        them."""
        self.config = copy.deepcopy(self._started_with)

    def reset(self) -> None:
        self.customers: dict[str, dict[str, Any]] = {}
        self.invoice_items: dict[str, dict[str, Any]] = {}
        self.invoices: dict[str, dict[str, Any]] = {}
        # invoice id → its line items in order; line item id → (invoice id, invoice item id)
        self.invoice_lines: dict[str, list[str]] = {}
        self.line_items: dict[str, tuple[str, str]] = {}
        # Coupons by id (deleted ones kept: discounts made from them still apply), discounts by
        # id, customer balance transactions by id.
        self.coupons: dict[str, dict[str, Any]] = {}
        self.discounts: dict[str, dict[str, Any]] = {}
        self.balance_transactions: dict[str, dict[str, Any]] = {}
        # Credit notes by id (``credit_notes``): each lowers a finalized invoice.
        self.credit_notes: dict[str, dict[str, Any]] = {}
        self.events: dict[str, dict[str, Any]] = {}
        self.event_order: list[str] = []
        self.webhook_endpoints: dict[str, dict[str, Any]] = {}
        self.portal_sessions: dict[str, dict[str, Any]] = {}
        # Customer Portal configurations (saved portal settings), per mode: without a default
        # one, Stripe refuses portal sessions.
        self.portal_configurations: dict[str, dict[str, Any]] = {}
        self.idempotency: dict[tuple[str, str], IdempotentResult] = {}
        self.stats = Stats()
        self.outbox: list[tuple[str, str]] = []  # (endpoint id, event id) awaiting delivery
        self._sequence = 0

    def sequence(self) -> int:
        """A strictly increasing number: orders objects created in the same second."""
        self._sequence += 1
        return self._sequence

    # --- events ------------------------------------------------------------------------

    def emit(
        self,
        event_type: str,
        obj: dict[str, Any],
        *,
        livemode: bool,
        request: dict[str, Any] | None = None,
        previous: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        # A snapshot: later changes to the object must not show through the event.
        data: dict[str, Any] = {"object": orjson.loads(orjson.dumps(obj))}
        if previous:
            data["previous_attributes"] = previous
        endpoints = [
            endpoint
            for endpoint in self.webhook_endpoints.values()
            if endpoint["livemode"] == livemode
            and endpoint["status"] == "enabled"
            and ("*" in endpoint["enabled_events"] or event_type in endpoint["enabled_events"])
        ]
        event_id = new_id("evt")
        # No "account" or "context": Stripe sets them (never to null) only on Connect events.
        event: dict[str, Any] = {
            "id": event_id,
            "object": "event",
            "api_version": API_VERSION,
            "created": self.clock.now(),
            "data": data,
            "livemode": livemode,
            "pending_webhooks": len(endpoints),
            "request": request or {"id": None, "idempotency_key": None},
            "type": event_type,
            "_sequence": self.sequence(),
        }
        self.events[event_id] = event
        self.event_order.append(event_id)
        for endpoint in endpoints:
            self.outbox.append((endpoint["id"], event_id))
        return event

    # --- look-ups ----------------------------------------------------------------------

    def customer(self, customer_id: str, livemode: bool, param: str = "customer") -> dict[str, Any]:
        """A customer by id: ``param`` "id" when it is the URL's object, else the parameter
        that named it (then a missing one is a 400, as in Stripe)."""
        customer = self.customers.get(customer_id)
        if customer is None or customer["livemode"] != livemode:
            raise not_found("customer", customer_id, param, in_body=param != "id")
        if customer.get("deleted"):
            raise StripeError(
                400 if param != "id" else 404,
                f"No such customer: '{customer_id}' (it was deleted)",
                code="resource_missing",
                param=param,
            )
        return customer

    def invoice(
        self, invoice_id: str, livemode: bool, param: str = "invoice", *, in_body: bool = False
    ) -> dict[str, Any]:
        """An invoice by id; ``in_body``: named by a request parameter, not the URL's path."""
        invoice = self.invoices.get(invoice_id)
        if invoice is None or invoice["livemode"] != livemode or invoice.get("deleted"):
            raise not_found("invoice", invoice_id, param, in_body=in_body)
        return invoice

    def invoice_item(
        self, item_id: str, livemode: bool, param: str = "id", *, in_body: bool = False
    ) -> dict[str, Any]:
        item = self.invoice_items.get(item_id)
        if item is None or item["livemode"] != livemode or item.get("deleted"):
            raise not_found("invoiceitem", item_id, param, in_body=in_body)
        return item

    def coupon(
        self, coupon_id: str, livemode: bool, param: str = "id", *, in_body: bool = False
    ) -> dict[str, Any]:
        """A coupon that is not deleted (a deleted one can no longer be redeemed)."""
        coupon = self.coupons.get(coupon_id)
        if coupon is None or coupon["livemode"] != livemode or coupon.get("deleted"):
            raise not_found("coupon", coupon_id, param, in_body=in_body)
        return coupon


def paginate(
    objects: list[dict[str, Any]],
    params: dict[str, Any],
    url: str,
    render: Any,
) -> dict[str, Any]:
    """A Stripe list: newest first, ``limit`` (1–100, default 10), cursors by id."""
    limit = params.get("limit", 10)
    if not 1 <= limit <= 100:
        raise StripeError(
            400,
            "Invalid limit: must be between 1 and 100",
            code="parameter_invalid_integer",
            param="limit",
        )
    # Newest first; invoice items carry `date` where other objects carry `created`.
    ordered = sorted(
        objects, key=lambda o: (o.get("created", o.get("date", 0)), o["_sequence"]), reverse=True
    )
    ids = [o["id"] for o in ordered]
    if "starting_after" in params:
        cursor = params["starting_after"]
        if cursor not in ids:
            raise not_found("object", cursor, "starting_after", in_body=True)
        ordered = ordered[ids.index(cursor) + 1 :]
    elif "ending_before" in params:
        cursor = params["ending_before"]
        if cursor not in ids:
            raise not_found("object", cursor, "ending_before", in_body=True)
        before = ordered[: ids.index(cursor)]
        # The page just before the cursor; has_more: still more beyond it (newer ones).
        return {
            "object": "list",
            "data": [render(o) for o in before[-limit:]],
            "has_more": len(before) > limit,
            "url": url,
        }
    page = ordered[:limit]
    return {
        "object": "list",
        "data": [render(o) for o in page],
        "has_more": len(ordered) > limit,
        "url": url,
    }


def created_filter(params: dict[str, Any], key: str = "created") -> Any:
    """The ``created`` filter of list endpoints: an int or {gt, gte, lt, lte}."""
    bound = params.get(key)
    if bound is None:
        return lambda _value: True
    if isinstance(bound, int):
        return lambda value: value == bound
    return lambda value: (
        ("gt" not in bound or value > bound["gt"])
        and ("gte" not in bound or value >= bound["gte"])
        and ("lt" not in bound or value < bound["lt"])
        and ("lte" not in bound or value <= bound["lte"])
    )


def public(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without the emulator's private bookkeeping keys (``_…``)."""
    return {key: value for key, value in obj.items() if not key.startswith("_")}
