"""The Stripe emulator's answers against Stripe's published OpenAPI description.

The description (``openapi/spec3.json`` of github.com/stripe/openapi) is vendored in part, with
its provenance and the script that cuts it: ``tests/fixtures/stripe/openapi-subset.json`` and
the README beside it. For every route the emulator serves, realistic requests go over real HTTP
and each answer is checked against the response the operation documents: required fields
present, types, nullability and enum values right, no field the schema does not declare,
recursively through every referenced schema. Error answers are checked against the ``error``
schema, with the status, ``type`` and ``code`` Stripe gives each failure mode.

The description describes API version 2026-07-29.dahlia, the newest published; the emulator
pins 2026-10-28.endive. ``EXTRA_FIELDS`` lists what the emulator sends beyond the description,
each with the reason it is right for the pinned version, and is itself checked.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe

from billsync.emulator.routes import ROUTES, Route
from billsync.emulator.state import API_VERSION
from tests.emulator_wire import Wire
from tests.fixtures.stripe import make_openapi_subset
from tests.stripe_peer import RunningEmulator

Json = dict[str, Any]
REF = "#/components/schemas/"

SUBSET = Path(__file__).resolve().parent / "fixtures" / "stripe" / "openapi-subset.json"
SUBSET_SHA256 = "8c7a118393df3aae05f630a7262f97ef036ee2ca334ee0af321db3556350f12e"
DESCRIBED_VERSION = "2026-07-29.dahlia"

# Fields the emulator sends that the vendored description does not declare, by where they
# appear (a schema name, or schema.property for an inline object). Each is checked below.
EXTRA_FIELDS: Mapping[str, frozenset[str]] = {
    # stripe-python 16.1.0, typed for the pinned 2026-10-28.endive, declares
    # Configuration.Features.subscription_pause as required; 2026-07-29.dahlia has no such
    # feature: it came with the later version.
    "portal_features": frozenset({"subscription_pause"}),
    # An invoice's embedded lines carry their total count on Stripe ("When retrieving an
    # invoice, you'll get a lines property containing the total count of line items", the
    # description of GET /v1/invoices/{invoice}/lines), though InvoiceLinesList omits it.
    "invoice.lines": frozenset({"total_count"}),
}

# An event's data.object is typed as a free-form object; it is the resource named by its
# ``object`` field, and must match that resource's schema too.
EVENT_OBJECTS = {
    "coupon": "coupon",
    "credit_note": "credit_note",
    "customer": "customer",
    "discount": "discount",
    "invoice": "invoice",
    "invoiceitem": "invoiceitem",
}


# --- the validator ------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


def _is_decimal(value: str) -> bool:
    try:
        return Decimal(value).is_finite()
    except InvalidOperation:
        return False


@dataclass
class Validator:
    """Checks decoded JSON against the OpenAPI 3.0 subset Stripe's description uses: ``$ref``,
    ``type`` (string, integer, number, boolean, array, object), ``nullable``, ``required``,
    ``properties``, ``additionalProperties`` (a schema, or ``true``; absent means no other
    field is allowed), ``enum``, ``anyOf``/``oneOf``, ``items``, ``pattern``, ``format:
    decimal``. An empty schema accepts anything (the subset cuts unexpanded resources to one).

    Expandable fields: the description types a field that Stripe can expand as ``anyOf`` an id
    string or the object(s), and lists it in the owner's ``x-expandableFields``. Either is
    accepted, unless the request asked to expand it (``expanded``, Stripe's dotted expand
    paths such as ``customer`` or ``data.customer``): then only the object is."""

    schemas: Mapping[str, Json]
    expanded: frozenset[str] = frozenset()
    extra_fields: Mapping[str, frozenset[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def check(self, value: Any, schema: Json, path: str = "$") -> list[str]:
        self.errors = []
        self._check(value, schema, path, "", "")
        return self.errors

    def _fork(self) -> Validator:
        return Validator(self.schemas, self.expanded, self.extra_fields)

    def _check(self, value: Any, schema: Json, path: str, where: str, expand: str) -> None:
        if "$ref" in schema:
            name = schema["$ref"].removeprefix(REF)
            if name not in self.schemas:
                self.errors.append(f"{path}: $ref to {name}, which the description lacks")
                return
            self._check(value, self.schemas[name], path, name, expand)
            return
        if not schema:
            return
        if value is None:
            if not schema.get("nullable"):
                self.errors.append(f"{path}: null, but {where or 'the schema'} is not nullable")
            return
        if "anyOf" in schema or "oneOf" in schema:
            self._alternatives(value, schema, path, where, expand)
            return
        if "enum" in schema and not any(
            value == option and type(value) is type(option) for option in schema["enum"]
        ):
            self.errors.append(f"{path}: {value!r:.60} is not one of {schema['enum']!r:.120}")
            return
        declared = schema.get("type")
        kind = _kind(value)
        if declared is not None and kind != declared and (declared, kind) != ("number", "integer"):
            self.errors.append(f"{path}: {kind} {value!r:.60}, declared {declared}")
            return
        if kind == "string":
            if schema.get("format") == "decimal" and not _is_decimal(value):
                self.errors.append(f"{path}: {value!r:.60} is not a decimal string")
            if "pattern" in schema and not re.search(schema["pattern"], value):
                self.errors.append(f"{path}: {value!r:.60} does not match {schema['pattern']}")
        elif kind == "array" and "items" in schema:
            for index, item in enumerate(value):
                self._check(item, schema["items"], f"{path}[{index}]", where, expand)
        elif kind == "object":
            self._object(value, schema, path, where, expand)

    def _alternatives(self, value: Any, schema: Json, path: str, where: str, expand: str) -> None:
        alternatives: list[Json] = schema.get("anyOf") or schema["oneOf"]
        if expand in self.expanded:  # asked for: the object, not its id
            alternatives = [alt for alt in alternatives if alt.get("type") != "string"]
        outcomes = []
        for alternative in alternatives:
            fork = self._fork()
            fork._check(value, alternative, path, where, expand)
            outcomes.append(fork.errors)
        matched = sum(not errors for errors in outcomes)
        if "oneOf" in schema and matched > 1:
            self.errors.append(f"{path}: matches {matched} alternatives of a oneOf")
        if matched:
            return
        closest = min(outcomes, key=len, default=[f"{path}: no alternative left"])
        if len(alternatives) > 1:
            self.errors.append(f"{path}: {_kind(value)} matches none of {len(alternatives)} "
                               f"alternatives; the closest says:")  # fmt: skip
        self.errors.extend(closest)

    def _object(self, value: Json, schema: Json, path: str, where: str, expand: str) -> None:
        properties: Json = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                self.errors.append(f"{path}.{name}: missing, required by {where or 'the schema'}")
        extra = schema.get("additionalProperties")
        allowed = self.extra_fields.get(where, frozenset())
        for name, item in value.items():
            inner = f"{expand}.{name}" if expand else name
            if name in properties:
                inner_where = where if "$ref" in properties[name] else f"{where}.{name}"
                self._check(item, properties[name], f"{path}.{name}", inner_where, inner)
            elif isinstance(extra, dict):
                self._check(item, extra, f"{path}.{name}", where, inner)
            elif extra is not True and name not in allowed:
                self.errors.append(f"{path}.{name}: not declared by {where or 'the schema'}")


# --- the vendored description -------------------------------------------------------------------


def _template(path: str) -> str:
    return re.sub(r"\{\w+\}", "{}", path)


@dataclass(frozen=True)
class Description:
    """The vendored subset: its schemas, and the operation each emulator route serves."""

    document: Json

    @property
    def schemas(self) -> Json:
        schemas: Json = self.document["components"]["schemas"]
        return schemas

    def operation(self, route: Route) -> Json:
        """The described operation a route serves (path parameters may be named apart)."""
        found = [
            methods[route.method.lower()]
            for path, methods in self.document["paths"].items()
            if _template(path) == _template(route.path) and route.method.lower() in methods
        ]
        assert len(found) == 1, f"{route.endpoint}: {len(found)} described operations"
        operation: Json = found[0]
        return operation

    def response(self, route: Route, status: str = "200") -> Json:
        content: Json = self.operation(route)["responses"][status]["content"]
        schema: Json = content["application/json"]["schema"]
        return schema

    def validator(self, expanded: frozenset[str] = frozenset()) -> Validator:
        return Validator(self.schemas, expanded, EXTRA_FIELDS)


@pytest.fixture(scope="module")
def description() -> Description:
    """A missing or altered copy fails: the checks must never pass by having nothing to check."""
    assert SUBSET.is_file(), f"the vendored description is missing: {SUBSET}"
    content = SUBSET.read_bytes()
    digest = hashlib.sha256(content).hexdigest()
    assert digest == SUBSET_SHA256, f"{SUBSET} is not the vendored copy (sha256 {digest})"
    return Description(json.loads(content))


@pytest.mark.unit
def test_the_subset_is_what_the_script_makes_of_it(description: Description) -> None:
    """Cutting the vendored subset again changes nothing: every reference resolves, every cut
    is one the script's rules make, and each served operation is there."""
    assert description.document["info"]["version"] == DESCRIBED_VERSION
    again = make_openapi_subset.render(make_openapi_subset.subset(description.document))
    assert again == SUBSET.read_text(encoding="utf-8")


@pytest.mark.unit
def test_every_route_is_a_described_operation(description: Description) -> None:
    served = {(route.method.lower(), _template(route.path)) for route in ROUTES}
    described = {
        (method, _template(path))
        for path, methods in description.document["paths"].items()
        for method in methods
    }
    assert served == described
    for route in ROUTES:
        responses = description.operation(route)["responses"]
        assert responses["default"]["content"]["application/json"]["schema"] == {
            "$ref": REF + "error"
        }, route.endpoint


@pytest.mark.unit
def test_expandable_fields_are_declared(description: Description) -> None:
    """``x-expandableFields`` names declared properties only: a transcription slip would show."""
    for name, schema in description.schemas.items():
        undeclared = set(schema.get("x-expandableFields", [])) - set(schema.get("properties", {}))
        assert not undeclared, f"{name}: {sorted(undeclared)}"


@pytest.mark.unit
def test_extra_fields_are_needed_and_justified(description: Description) -> None:
    """Each allowance names a field the description really lacks, and the SDK of the pinned
    version declares the version-added one: the list cannot silently go stale."""
    schemas = description.schemas
    features = schemas["portal_features"]["properties"]
    assert "subscription_pause" not in features
    assert "subscription_pause" in stripe.billing_portal.Configuration.Features.__annotations__
    lines = schemas["invoice"]["properties"]["lines"]["properties"]
    assert "total_count" not in lines
    assert set(EXTRA_FIELDS) == {"portal_features", "invoice.lines"}


CUSTOMER: Json = {"id": "cus_1", "object": "customer", "created": 1, "livemode": False}


@pytest.mark.unit
def test_the_validator_rejects_what_the_description_forbids(description: Description) -> None:
    """The validator itself, on made-up objects broken on purpose: it names each break, and
    nothing in the unbroken ones."""
    customer = {"$ref": REF + "customer"}
    assert description.validator().check(CUSTOMER, customer) == []
    broken = {
        **{key: value for key, value in CUSTOMER.items() if key != "created"},  # required
        "tax_exempt": "sometimes",  # not in the enum
        "balance": "0",  # an integer
        "business_name": None,  # not nullable
        "nickname": "acme",  # not declared
        "invoice_settings": {"footer": 1, "rendering_options": {"template": None, "x": 1}},
        "metadata": {"tier": 1},  # additionalProperties: string
        "test_clock": {"id": "clock_1"},  # an id or the object: the object is cut to {}
        "preferred_locales": ["en", None],
    }
    assert sorted(description.validator().check(broken, customer, "customer")) == sorted([
        "customer.created: missing, required by customer",
        "customer.tax_exempt: 'sometimes' is not one of ['exempt', 'none', 'reverse']",
        "customer.balance: string '0', declared integer",
        "customer.business_name: null, but customer.business_name is not nullable",
        "customer.nickname: not declared by customer",
        "customer.invoice_settings.footer: integer 1, declared string",
        "customer.invoice_settings.rendering_options.x: not declared by "
        "invoice_setting_customer_rendering_options",
        "customer.metadata.tier: integer 1, declared string",
        "customer.preferred_locales[1]: null, but customer.preferred_locales is not nullable",
    ])  # fmt: skip


@pytest.mark.unit
def test_the_validator_reads_lists_expansions_and_decimals(description: Description) -> None:
    customers = {
        "object": "list",
        "url": "/v1/customers",
        "has_more": "no",
        "data": [{**CUSTOMER, "object": "customers"}],
    }
    schema = description.response(next(r for r in ROUTES if r.endpoint == "GET /v1/customers"))
    assert sorted(description.validator().check(customers, schema)) == [
        "$.data[0].object: 'customers' is not one of ['customer']",
        "$.has_more: string 'no', declared boolean",
    ]
    assert description.validator().check({**customers, "url": "/v1/invoices"}, schema)[0] == (
        "$.url: '/v1/invoices' does not match ^/v1/customers"
    )
    pricing = description.schemas["billing_bill_resource_invoicing_pricing_pricing"]
    assert description.validator().check(
        {"type": "price_details", "unit_amount_decimal": "1.2.3"}, pricing
    ) == ["$.unit_amount_decimal: '1.2.3' is not a decimal string"]
    invoice_customer = {"anyOf": [{"type": "string"}, {"$ref": REF + "customer"}]}
    assert description.validator().check("cus_1", invoice_customer) == []
    expanded = description.validator(frozenset({""}))
    assert expanded.check("cus_1", invoice_customer) == ["$: string 'cus_1', declared object"]


# --- driving the emulator -----------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    label: str
    body: Json
    expanded: frozenset[str] = frozenset()


Calls = Callable[[Wire], list[Answer]]


def _answers(label: str, *bodies: Json, expanded: frozenset[str] = frozenset()) -> list[Answer]:
    return [Answer(f"{label}[{index}]", body, expanded) for index, body in enumerate(bodies)]


def _deleted_customer(w: Wire) -> str:
    customer: str = w.customer()["id"]
    w.delete(f"/v1/customers/{customer}")
    return customer


def _draft_with_lines(w: Wire) -> Json:
    return w.draft_with_lines(w.customer()["id"])


def _events(w: Wire) -> list[Answer]:
    """Every kind of event the emulator emits, listed and retrieved."""
    customer = w.customer()["id"]
    w.post(f"/v1/customers/{customer}", {"name": "Renamed"})
    for ending in ("pay", "void", "mark_uncollectible"):
        w.post(f"/v1/invoices/{w.finalized(customer)['id']}/{ending}")
    declined = w.finalized(customer)["id"]
    failed = w.request(
        "POST", f"/v1/invoices/{declined}/pay", {"payment_method": "pm_card_chargeDeclined"}
    )
    assert failed.status_code == 402
    draft = w.draft_with_lines(customer)
    w.post(f"/v1/invoices/{draft['id']}/remove_lines", {
        "lines[0][id]": draft["lines"]["data"][0]["id"], "lines[0][behavior]": "delete",
    })  # fmt: skip
    w.delete(f"/v1/invoices/{draft['id']}")
    pending = w.pending_item(customer)["id"]
    w.delete(f"/v1/invoiceitems/{pending}")
    _deleted_customer(w)
    listed = w.get("/v1/events", {"limit": "100"})
    return _answers("events", listed, w.get("/v1/events", {"type": "invoice.*"}))


def _event(w: Wire) -> list[Answer]:
    listed = w.get("/v1/events", {"limit": "100"})["data"]
    assert listed, "no events to retrieve"
    return _answers("event", *(w.get(f"/v1/events/{event['id']}") for event in listed))


def _portal_configuration(w: Wire) -> list[Answer]:
    return _answers("configuration", w.post("/v1/billing_portal/configurations", {
        "business_profile[privacy_policy_url]": "https://billsync.test/privacy",
        "features[customer_update][enabled]": "true",
        "features[customer_update][allowed_updates][0]": "email",
        "features[invoice_history][enabled]": "true",
        "default_return_url": "https://billsync.test/account",
        "metadata[owner]": "billsync",
    }))  # fmt: skip


def _portal_session(w: Wire) -> list[Answer]:
    customer = w.customer()["id"]
    w.post("/v1/billing_portal/configurations", {"features[invoice_history][enabled]": "true"})
    return _answers(
        "session",
        w.post("/v1/billing_portal/sessions", {"customer": customer}),
        w.post("/v1/billing_portal/sessions", {
            "customer": customer, "return_url": "https://billsync.test/account", "locale": "fr",
        }),
    )  # fmt: skip


def _webhook_endpoint(w: Wire) -> Json:
    return w.post("/v1/webhook_endpoints", {
        "url": "https://billsync.test/stripe/webhooks",
        "enabled_events[0]": "invoice.paid",
        "enabled_events[1]": "invoice.finalized",
        "description": "openapi",
        "metadata[owner]": "billsync",
    })  # fmt: skip


def _priced_item(w: Wire) -> Json:
    customer = w.customer()["id"]
    return w.post("/v1/invoiceitems", {
        "customer": customer,
        "invoice": w.draft(customer)["id"],
        "price_data[currency]": "usd",
        "price_data[product]": "prod_openapi",
        "price_data[unit_amount_decimal]": "3.5",
        "quantity_decimal": "2.25",
    })  # fmt: skip


def _invoice(w: Wire, ending: str) -> Json:
    invoice = w.finalized(w.customer()["id"])["id"]
    return w.post(f"/v1/invoices/{invoice}/{ending}")


def _add_lines(w: Wire) -> list[Answer]:
    return _answers("add_lines", _draft_with_lines(w))


def _update_lines(w: Wire) -> list[Answer]:
    invoice = _draft_with_lines(w)
    first = invoice["lines"]["data"][0]["id"]
    return _answers("update_lines", w.post(f"/v1/invoices/{invoice['id']}/update_lines", {
        "lines[0][id]": first, "lines[0][amount]": "1100", "lines[0][description]": "more",
    }))  # fmt: skip


def _remove_lines(w: Wire) -> list[Answer]:
    invoice = _draft_with_lines(w)
    lines = invoice["lines"]["data"]
    return _answers("remove_lines", w.post(f"/v1/invoices/{invoice['id']}/remove_lines", {
        "lines[0][id]": lines[0]["id"], "lines[0][behavior]": "delete",
        "lines[1][id]": lines[2]["id"], "lines[1][behavior]": "unassign",
    }))  # fmt: skip


def _coupon(w: Wire, **extra: str) -> Json:
    return w.post("/v1/coupons", {
        "percent_off": "12.5", "duration": "forever", "name": "openapi",
        "metadata[owner]": "billsync", **extra,
    })  # fmt: skip


def _amount_coupon(w: Wire) -> Json:
    return w.post("/v1/coupons", {
        "amount_off": "300", "currency": "usd", "duration": "repeating",
        "duration_in_months": "3", "currency_options[eur][amount_off]": "280",
        "applies_to[products][0]": "prod_openapi", "max_redemptions": "10",
        "redeem_by": "1900000000",
    })  # fmt: skip


# The last API version whose customer endpoints take `coupon` (2025-03-31.basil removed it).
LEGACY_VERSION = "2025-02-24.acacia"


def _discounted_customer(w: Wire) -> str:
    """A customer with a discount, given as a request of an older API version gives it."""
    customer: str = w.customer()["id"]
    response = w.http.post(
        f"/v1/customers/{customer}",
        data={"coupon": _coupon(w)["id"]},
        headers={"Stripe-Version": LEGACY_VERSION},
    )
    assert response.status_code == 200, response.text
    return customer


def _discounted_invoice(w: Wire) -> Json:
    """A draft with the customer's discount and one of its own, its customer in credit."""
    customer = _discounted_customer(w)
    w.post(f"/v1/customers/{customer}/balance_transactions", {"amount": "-700", "currency": "usd"})
    invoice = w.post("/v1/invoices", {
        "customer": customer, "currency": "usd", "auto_advance": "false",
        "discounts[0][discount]": w.get(f"/v1/customers/{customer}")["discount"]["id"],
        "discounts[1][coupon]": _amount_coupon(w)["id"],
    })  # fmt: skip
    return w.post(f"/v1/invoices/{invoice['id']}/add_lines", {
        "lines[0][amount]": "1000",
        "lines[1][price_data][currency]": "usd",
        "lines[1][price_data][product]": "prod_openapi",
        "lines[1][price_data][unit_amount_decimal]": "2.5",
        "lines[1][quantity_decimal]": "1000",
        "lines[2][amount]": "-100",
    })  # fmt: skip


def _settled(w: Wire) -> list[Answer]:
    """Finalized against a credit balance, and under the minimum charge."""
    small = w.draft(w.customer()["id"])
    w.post(f"/v1/invoices/{small['id']}/add_lines", {"lines[0][amount]": "20"})
    return _answers(
        "invoice",
        w.post(f"/v1/invoices/{_discounted_invoice(w)['id']}/finalize"),
        w.post(f"/v1/invoices/{small['id']}/finalize"),
    )


def _balance_transactions(w: Wire) -> list[Answer]:
    invoice = w.post(f"/v1/invoices/{_discounted_invoice(w)['id']}/finalize")
    customer = invoice["customer"]
    w.post(f"/v1/invoices/{invoice['id']}/void")
    url = f"/v1/customers/{customer}/balance_transactions"
    return _answers("transactions", w.get(url), w.get(url, {"limit": "1"})) + _answers(
        "transactions.expanded", w.get(url, {"expand[]": ["data.invoice", "data.customer"]}),
        expanded=frozenset({"data.invoice", "data.customer"}),
    )  # fmt: skip


def _credit_notes(w: Wire) -> list[Json]:
    """On an open invoice, a whole one (then custom and per-line ones on a paid invoice): a
    refund, a credit to the customer's balance, a custom line."""
    unpaid = w.customer()
    w.post(
        f"/v1/customers/{unpaid['id']}",
        {"invoice_settings[default_payment_method]": "pm_card_chargeDeclined"},
    )
    open_invoice = w.finalized(unpaid["id"])
    paid = w.post(f"/v1/invoices/{w.finalized(w.customer()['id'])['id']}/pay")
    line = paid["lines"]["data"][0]["id"]
    return [
        w.post(
            "/v1/credit_notes",
            {
                "invoice": open_invoice["id"],
                "amount": "500",
                "reason": "order_change",
                "memo": "Goodwill",
            },
        ),
        w.post(
            "/v1/credit_notes",
            {
                "invoice": paid["id"],
                "refund_amount": "500",
                "lines[0][type]": "invoice_line_item",
                "lines[0][invoice_line_item]": line,
                "lines[0][amount]": "300",
                "lines[1][type]": "custom_line_item",
                "lines[1][unit_amount]": "200",
                "lines[1][description]": "Service credit",
            },
        ),
        w.post(
            "/v1/credit_notes",
            {
                "invoice": paid["id"],
                "amount": "100",
                "credit_amount": "100",
                "metadata[billsync]": "1",
            },
        ),
    ]


CUSTOMER_EXPANDED = frozenset({"customer"})

# Per route: requests that succeed, and the answers to check.
CALLS: dict[str, Calls] = {
    "POST /v1/customers": lambda w: _answers("customer", w.customer(), w.post(
        "/v1/customers", {"email": "bare@acme.test"})),
    "GET /v1/customers": lambda w: (w.customer(), w.customer()) and _answers(
        "customers", w.get("/v1/customers", {"limit": "1"}), w.get("/v1/customers")),
    "GET /v1/customers/{id}": lambda w: _answers(
        "customer", w.get(f"/v1/customers/{w.customer()['id']}"),
        w.get(f"/v1/customers/{_deleted_customer(w)}"),
        w.get(f"/v1/customers/{_discounted_customer(w)}")),
    "POST /v1/customers/{id}": lambda w: _answers("customer", w.post(
        f"/v1/customers/{w.customer()['id']}", {"name": "Acme", "metadata[tier]": ""})),
    "DELETE /v1/customers/{id}": lambda w: _answers(
        "deleted", w.delete(f"/v1/customers/{w.customer()['id']}")),
    "DELETE /v1/customers/{id}/discount": lambda w: _answers(
        "deleted", w.delete(f"/v1/customers/{_discounted_customer(w)}/discount")),
    "POST /v1/customers/{id}/balance_transactions": lambda w: _answers("transaction", w.post(
        f"/v1/customers/{w.customer()['id']}/balance_transactions", {
            "amount": "-500", "currency": "usd", "description": "credit",
            "metadata[reason]": "goodwill"}), w.post(
        f"/v1/customers/{w.customer()['id']}/balance_transactions", {
            "amount": "250", "currency": "eur"})),
    "GET /v1/customers/{id}/balance_transactions": _balance_transactions,
    "POST /v1/coupons": lambda w: _answers("coupon", _coupon(w), _amount_coupon(w), _coupon(
        w, id=f"OPENAPI{w.customer()['id'][-6:]}")),
    "GET /v1/coupons/{id}": lambda w: _answers(
        "coupon", w.get(f"/v1/coupons/{_coupon(w)['id']}"),
        w.get(f"/v1/coupons/{_amount_coupon(w)['id']}")),
    "DELETE /v1/coupons/{id}": lambda w: _answers(
        "deleted", w.delete(f"/v1/coupons/{_coupon(w)['id']}")),
    "POST /v1/invoiceitems": lambda w: _answers(
        "item", w.pending_item(w.customer()["id"]), _priced_item(w)),
    "GET /v1/invoiceitems": lambda w: (_draft_with_lines(w), _answers(
        "items", w.get("/v1/invoiceitems"), w.get("/v1/invoiceitems", {"pending": "true"})))[1],
    "GET /v1/invoiceitems/{id}": lambda w: _answers(
        "item", w.get(f"/v1/invoiceitems/{_priced_item(w)['id']}")) + _answers(
        "item.expanded", w.get(f"/v1/invoiceitems/{_priced_item(w)['id']}", {
            "expand[]": ["customer"]}), expanded=CUSTOMER_EXPANDED),
    "POST /v1/invoiceitems/{id}": lambda w: _answers("item", w.post(
        f"/v1/invoiceitems/{_priced_item(w)['id']}", {"description": "renamed"})),
    "DELETE /v1/invoiceitems/{id}": lambda w: _answers("deleted", w.delete(
        f"/v1/invoiceitems/{w.pending_item(w.customer()['id'])['id']}")),
    "POST /v1/invoices": lambda w: _answers(
        "invoice", w.draft(w.customer()["id"]),
        w.draft(w.customer()["id"], collection_method="send_invoice", days_until_due="30")),
    "GET /v1/invoices": lambda w: (w.finalized(w.customer()["id"]), _answers(
        "invoices", w.get("/v1/invoices")) + _answers(
        "invoices.expanded", w.get("/v1/invoices", {"expand[]": ["data.customer"]}),
        expanded=frozenset({"data.customer"})))[1],
    "POST /v1/invoices/create_preview": lambda w: _answers("preview", w.post(
        "/v1/invoices/create_preview", {
            "customer": w.pending_item(w.customer()["id"])["customer"],
            "invoice_items[0][amount]": "500", "currency": "usd"})),
    "GET /v1/invoices/{id}": lambda w: _answers(
        "invoice", w.get(f"/v1/invoices/{_draft_with_lines(w)['id']}"),
        w.get(f"/v1/invoices/{_discounted_invoice(w)['id']}")) + _answers(
        "invoice.expanded", w.get(f"/v1/invoices/{_draft_with_lines(w)['id']}", {
            "expand[]": ["customer"]}), expanded=CUSTOMER_EXPANDED) + _answers(
        "invoice.discounts", w.get(f"/v1/invoices/{_discounted_invoice(w)['id']}", {
            "expand[]": ["discounts"]}), expanded=frozenset({"discounts"})),
    "POST /v1/invoices/{id}": lambda w: _answers("invoice", w.post(
        f"/v1/invoices/{_draft_with_lines(w)['id']}", {"footer": "Net 30"})),
    "DELETE /v1/invoices/{id}": lambda w: _answers(
        "deleted", w.delete(f"/v1/invoices/{_draft_with_lines(w)['id']}")),
    "POST /v1/invoices/{id}/finalize": lambda w: _answers(
        "invoice", w.finalized(w.customer()["id"])) + _settled(w),
    "POST /v1/invoices/{id}/pay": lambda w: _answers("invoice", _invoice(w, "pay")),
    "POST /v1/invoices/{id}/void": lambda w: _answers("invoice", _invoice(w, "void")),
    "POST /v1/invoices/{id}/mark_uncollectible": lambda w: _answers(
        "invoice", _invoice(w, "mark_uncollectible")),
    "POST /v1/invoices/{id}/add_lines": _add_lines,
    "POST /v1/invoices/{id}/update_lines": _update_lines,
    "POST /v1/invoices/{id}/remove_lines": _remove_lines,
    "GET /v1/invoices/{id}/lines": lambda w: _answers(
        "lines", w.get(f"/v1/invoices/{_draft_with_lines(w)['id']}/lines", {"limit": "2"})),
    "POST /v1/credit_notes": lambda w: _answers("credit_note", *_credit_notes(w)),
    "GET /v1/credit_notes": lambda w: _answers("credit_notes", w.get("/v1/credit_notes", {
        "invoice": _credit_notes(w)[1]["invoice"]}), w.get("/v1/credit_notes", {"limit": "1"})),
    "GET /v1/credit_notes/{id}": lambda w: _answers("credit_note", *(
        w.get(f"/v1/credit_notes/{note['id']}") for note in _credit_notes(w))),
    "POST /v1/billing_portal/configurations": _portal_configuration,
    "GET /v1/billing_portal/configurations": lambda w: (_portal_configuration(w), _answers(
        "configurations", w.get("/v1/billing_portal/configurations")))[1],
    "POST /v1/billing_portal/sessions": _portal_session,
    "GET /v1/events": _events,
    "GET /v1/events/{id}": _event,
    "POST /v1/webhook_endpoints": lambda w: _answers("endpoint", _webhook_endpoint(w)),
    "GET /v1/webhook_endpoints": lambda w: (_webhook_endpoint(w), _answers(
        "endpoints", w.get("/v1/webhook_endpoints")))[1],
    "GET /v1/webhook_endpoints/{id}": lambda w: _answers(
        "endpoint", w.get(f"/v1/webhook_endpoints/{_webhook_endpoint(w)['id']}")),
    "POST /v1/webhook_endpoints/{id}": lambda w: _answers("endpoint", w.post(
        f"/v1/webhook_endpoints/{_webhook_endpoint(w)['id']}", {"disabled": "true"})),
    "DELETE /v1/webhook_endpoints/{id}": lambda w: _answers("deleted", w.delete(
        f"/v1/webhook_endpoints/{_webhook_endpoint(w)['id']}")),
}  # fmt: skip


@pytest.mark.unit
def test_every_route_is_driven() -> None:
    assert set(CALLS) == {route.endpoint for route in ROUTES}


def _event_payloads(answer: Answer) -> Iterator[tuple[str, Json]]:
    body = answer.body
    for event in body["data"] if body.get("object") == "list" else [body]:
        yield f"{answer.label}<{event['type']}>.data.object", event["data"]["object"]


@pytest.mark.parametrize("route", ROUTES, ids=lambda route: route.endpoint)
def test_answers_match_the_described_response(
    route: Route, wire: Wire, description: Description
) -> None:
    answers = CALLS[route.endpoint](wire)
    assert answers, f"{route.endpoint}: nothing to check"
    schema = description.response(route)
    errors: list[str] = []
    for answer in answers:
        errors += description.validator(answer.expanded).check(answer.body, schema, answer.label)
        if route.endpoint.startswith("GET /v1/events"):
            for label, payload in _event_payloads(answer):
                name = EVENT_OBJECTS.get(payload.get("object", ""))
                assert name is not None, f"{label}: an unexpected {payload!r:.80}"
                errors += description.validator().check(payload, {"$ref": REF + name}, label)
    assert not errors, f"{route.endpoint} contradicts Stripe's description:\n" + "\n".join(
        dict.fromkeys(errors)
    )


# --- errors -------------------------------------------------------------------------------------
#
# Stripe answers every failure with the ``error`` schema: ``{"error": {"type", "code",
# "message", "param", ...}}``. The HTTP status and the type say what kind of failure it is
# (docs.stripe.com/api/errors: 400 a bad request, 401 no valid API key, 402 the request failed,
# 404 the requested resource doesn't exist, 429 too many requests; types api_error, card_error,
# idempotency_error, invalid_request_error), and ``code`` which one
# (docs.stripe.com/error-codes: resource_missing, parameter_missing, parameter_unknown,
# parameter_invalid_integer, rate_limit, card_declined, ...).


@dataclass(frozen=True)
class Failure:
    name: str
    send: Callable[[Wire], httpx.Response]
    status: int
    type: str
    code: str | None  # None: Stripe sends no code for this one
    param: str | None = None
    check_param: bool = True  # False: only the status, type and code are Stripe's to assert


def _add_lines_without_lines(w: Wire) -> httpx.Response:
    return w.request("POST", f"/v1/invoices/{w.draft(w.customer()['id'])['id']}/add_lines", {})


def _reused_idempotency_key(w: Wire) -> httpx.Response:
    key = {"Idempotency-Key": f"openapi-{w.customer()['id']}"}
    first = w.http.post("/v1/customers", data={"name": "First"}, headers=key)
    assert first.status_code == 200, first.text
    return w.http.post("/v1/customers", data={"name": "Second"}, headers=key)


def _declined_payment(w: Wire) -> httpx.Response:
    invoice = w.finalized(w.customer()["id"])["id"]
    return w.request(
        "POST", f"/v1/invoices/{invoice}/pay", {"payment_method": "pm_card_chargeDeclined"}
    )


def _with_key(header: str | None) -> Callable[[Wire], httpx.Response]:
    def send(w: Wire) -> httpx.Response:
        headers = {} if header is None else {"Authorization": header}
        url = str(w.http.base_url).rstrip("/") + "/v1/customers"
        return httpx.get(url, headers=headers, timeout=10)

    return send


FAILURES = [
    Failure("unknown customer in the path",
            lambda w: w.request("GET", "/v1/customers/cus_missing00000000000000"),
            404, "invalid_request_error", "resource_missing", "id"),
    Failure("unknown invoice in the path",
            lambda w: w.request("POST", "/v1/invoices/in_missing000000000000000/finalize"),
            404, "invalid_request_error", "resource_missing", check_param=False),
    Failure("unknown customer in the body",
            lambda w: w.request("POST", "/v1/invoices", {"customer": "cus_missing000000000"}),
            400, "invalid_request_error", "resource_missing", "customer"),
    Failure("unknown invoice in the body",
            lambda w: w.request("POST", "/v1/invoiceitems", {
                "customer": w.customer()["id"], "invoice": "in_missing00000000000", "amount": "5",
                "currency": "usd"}),
            400, "invalid_request_error", "resource_missing", "invoice"),
    Failure("integer parameter not an integer",
            lambda w: w.request("POST", "/v1/invoiceitems", {
                "customer": w.customer()["id"], "currency": "usd", "amount": "ten"}),
            400, "invalid_request_error", "parameter_invalid_integer", "amount"),
    Failure("amount above 8 digits",
            lambda w: w.request("POST", "/v1/invoiceitems", {
                "customer": w.customer()["id"], "currency": "usd", "amount": "100000000"}),
            400, "invalid_request_error", "amount_too_large", "amount"),
    Failure("required parameter missing", _add_lines_without_lines,
            400, "invalid_request_error", "parameter_missing", "lines"),
    Failure("parameter unknown",
            lambda w: w.request("POST", "/v1/customers", {"nickname": "acme"}),
            400, "invalid_request_error", "parameter_unknown", "nickname"),
    Failure("idempotency key reused with other parameters", _reused_idempotency_key,
            400, "idempotency_error", None),
    Failure("card declined", _declined_payment, 402, "card_error", "card_declined"),
    Failure("malformed API key", _with_key("Bearer not-a-key"),
            401, "invalid_request_error", None),
    Failure("no API key", _with_key(None), 401, "invalid_request_error", None),
]  # fmt: skip


def _check_failure(
    response: httpx.Response, failure: Failure, description: Description
) -> list[str]:
    body = response.json()
    errors = description.validator().check(body, {"$ref": REF + "error"}, failure.name)
    error = body.get("error", {})
    found: tuple[object, ...] = (response.status_code, error.get("type"), error.get("code"))
    wanted: tuple[object, ...] = (failure.status, failure.type, failure.code)
    if failure.check_param:
        found, wanted = (*found, error.get("param")), (*wanted, failure.param)
    if found != wanted:
        errors.append(f"{failure.name}: (status, type, code, param) {found}, Stripe: {wanted}")
    if not error.get("message"):
        errors.append(f"{failure.name}: no message")
    return errors


@pytest.mark.parametrize("failure", FAILURES, ids=lambda failure: failure.name)
def test_errors_match_the_description(
    failure: Failure, wire: Wire, description: Description
) -> None:
    errors = _check_failure(failure.send(wire), failure, description)
    assert not errors, "\n".join(errors)


def test_rate_limit_matches_the_description(
    wire: Wire, emulator_server: RunningEmulator, description: Description
) -> None:
    """Over the account's rate: 429 with code ``rate_limit`` (an invalid_request_error)."""
    emulator_server.control("POST", "config", {"rate_limit_test": 1})
    try:  # one request a second: the second of two within the same second is refused
        statuses = []
        for _ in range(50):  # bounded; a slow machine only needs more tries
            response = wire.request("GET", "/v1/customers", {"limit": "1"})
            statuses.append(response.status_code)
            if response.status_code == 429:
                break
    finally:
        emulator_server.control("POST", "config", {"rate_limit_test": 0})
    assert statuses[-1] == 429, statuses
    failure = Failure("rate limit", _with_key(None), 429, "invalid_request_error", "rate_limit")
    errors = _check_failure(response, failure, description)
    assert not errors, "\n".join(errors)


def test_the_emulator_pins_a_version_at_or_after_the_description() -> None:
    """The description may lag the pinned version (EXTRA_FIELDS), never lead it."""
    assert DESCRIBED_VERSION.partition(".")[0] <= API_VERSION.partition(".")[0]
