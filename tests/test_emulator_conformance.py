"""The Stripe emulator's wire objects against stripe-python 16.1.0 (API 2026-10-28.endive).

Three contracts, each checked on the raw JSON the emulator sends over real HTTP:

1. SDK resource conformance: every object the emulator serves is checked by introspection
   against the SDK resource class that types it (``stripe.Invoice``, ``stripe.InvoiceLineItem``
   ...), recursing into nested ``StripeObject`` classes: a field whose annotation is not
   ``Optional[...]`` must be present and non-null, and every present field must have the JSON
   type its annotation declares.
2. Fixture shape agreement: Stripe's own example objects (``stripe-fixtures3.json``) name the
   top-level keys a real object carries; the emulator's objects must carry them too.
3. Parameter validation against the SDK's TypedDicts, on raw form posts.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import importlib
import inspect
import json
import re
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

import pytest
import stripe
import typing_extensions
from stripe._stripe_object import UntypedStripeObject

from billsync.emulator.params import fields_of, params_class
from billsync.emulator.routes import ROUTES, Route
from tests.emulator_wire import Wire

Json = dict[str, Any]
NONE_TYPE = type(None)

# --- resolving the SDK's annotations ---------------------------------------------------------
#
# The SDK's resource modules evaluate most annotations at class creation, but names only
# imported under ``if TYPE_CHECKING:`` stay ``ForwardRef("Account")`` (typing.get_type_hints
# fails on them). They are resolved here in the namespace of the class's own module, plus the
# names its TYPE_CHECKING block imports, plus typing's names.


def _parse(source: str) -> ast.Module:
    """ast.parse, again if it overlapped a parse in another thread: CPython 3.11 before 3.11.8
    may then fail with "AST constructor recursion depth mismatch" (python/cpython#106905)."""
    for _ in range(5):
        try:
            return ast.parse(source)
        except SystemError:
            continue
    return ast.parse(source)


@cache
def _type_checking_imports(module_name: str) -> dict[str, Any]:
    """The names a module imports under ``if TYPE_CHECKING:``, imported for real."""
    module = sys.modules[module_name]
    tree = _parse(inspect.getsource(module))
    names: dict[str, Any] = {}
    for node in tree.body:
        if not (isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)):
            continue
        for statement in ast.walk(node):
            if isinstance(statement, ast.ImportFrom) and statement.module and not statement.level:
                imported = importlib.import_module(statement.module)
                for alias in statement.names:
                    names[alias.asname or alias.name] = getattr(imported, alias.name)
    return names


@cache
def _globals_of(module_name: str) -> dict[str, Any]:
    namespace: dict[str, Any] = dict(vars(typing))
    namespace.update(vars(sys.modules[module_name]))
    namespace.update(_type_checking_imports(module_name))
    return namespace


def _deref(annotation: Any, owner: type) -> Any:
    """``annotation`` with a top-level string / ForwardRef evaluated where ``owner`` lives
    (its module's globals, the class body as locals, as typing.get_type_hints does)."""
    while isinstance(annotation, str | typing.ForwardRef):
        text = annotation if isinstance(annotation, str) else annotation.__forward_arg__
        annotation = eval(text, _globals_of(owner.__module__), dict(vars(owner)))  # noqa: S307
    return annotation


def _is_optional(annotation: Any, owner: type) -> bool:
    annotation = _deref(annotation, owner)
    return typing.get_origin(annotation) in (Union, types.UnionType) and NONE_TYPE in (
        typing.get_args(annotation)
    )


_FIELDS: dict[type, dict[str, tuple[Any, type]]] = {}


def sdk_fields(cls: type) -> dict[str, tuple[Any, type]]:
    """name → (annotation, the class whose body declares it) of a StripeObject subclass;
    ClassVars and private names excluded."""
    if cls in _FIELDS:
        return _FIELDS[cls]
    fields: dict[str, tuple[Any, type]] = {}
    for klass in reversed(cls.__mro__):
        if not (isinstance(klass, type) and issubclass(klass, stripe.StripeObject)):
            continue
        for name, annotation in inspect.get_annotations(klass).items():
            if name.startswith("_"):
                continue
            resolved = _deref(annotation, klass)
            if resolved is ClassVar or typing.get_origin(resolved) is ClassVar:
                continue
            fields[name] = (annotation, klass)
    _FIELDS[cls] = fields
    return fields


def _describe(annotation: Any) -> str:
    text = re.sub(r"\b(typing_extensions|typing|decimal|builtins)\.", "", repr(annotation))
    text = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text)
    text = re.sub(r"\bstripe\.[\w.]*\.(\w+)", r"\1", text)
    return text if len(text) <= 140 else text[:137] + "..."


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _is_list_object(annotation: Any) -> bool:
    return annotation is stripe.ListObject or typing.get_origin(annotation) is stripe.ListObject


def _is_untyped_object(annotation: Any) -> bool:
    return annotation is UntypedStripeObject or typing.get_origin(annotation) is UntypedStripeObject


def _is_stripe_object(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, stripe.StripeObject)


def _kind_of(annotation: Any, owner: type) -> set[str]:
    """The JSON kinds a (non-null) value of this annotation may have on the wire."""
    annotation = _deref(annotation, owner)
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return {"null", "boolean", "number", "string", "array", "object"}
    if origin in (Union, types.UnionType):
        return set().union(*(_kind_of(arg, owner) for arg in typing.get_args(annotation)))
    if annotation is NONE_TYPE:
        return {"null"}
    if origin is Literal:
        return {_json_kind(value) for value in typing.get_args(annotation)}
    if annotation in (str, Decimal):
        return {"string"}
    if annotation in (int, float):
        return {"number"}
    if annotation is bool:
        return {"boolean"}
    if origin is list:
        return {"array"}
    if origin is dict or _is_list_object(annotation) or _is_untyped_object(annotation):
        return {"object"}
    if _is_stripe_object(annotation):
        return {"object"}
    raise TypeError(f"the conformance resolver does not understand {annotation!r}")


def check_value(value: Any, annotation: Any, owner: type, path: str, errors: list[str]) -> None:
    """Append to ``errors`` where ``value`` (decoded JSON) contradicts ``annotation``."""
    annotation = _deref(annotation, owner)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    declared = _describe(annotation)
    if annotation is Any:
        return
    if origin in (Union, types.UnionType):
        if value is None:
            if NONE_TYPE not in args:
                errors.append(f"{path}: null, but {declared} is not nullable")
            return
        candidates = [
            arg
            for arg in args
            if arg is not NONE_TYPE and _json_kind(value) in _kind_of(arg, owner)
        ]
        if not candidates:
            errors.append(f"{path}: {_json_kind(value)} {value!r:.60}, declared {declared}")
            return
        first: list[str] | None = None
        for candidate in candidates:
            found: list[str] = []
            check_value(value, candidate, owner, path, found)
            if not found:
                return
            first = first if first is not None else found
        errors.extend(first or [])
        return
    if value is None:
        errors.append(f"{path}: null, but {declared} is not Optional")
        return
    if origin is Literal:
        if value not in args or _json_kind(value) not in {_json_kind(a) for a in args}:
            errors.append(f"{path}: {value!r:.60} is not one of {declared}")
        return
    if annotation is str:
        if not isinstance(value, str):
            errors.append(f"{path}: {_json_kind(value)} {value!r:.60}, declared str")
        return
    if annotation is bool:
        if not isinstance(value, bool):
            errors.append(f"{path}: {_json_kind(value)} {value!r:.60}, declared bool")
        return
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{path}: {_json_kind(value)} {value!r:.60}, declared int")
        return
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            errors.append(f"{path}: {_json_kind(value)} {value!r:.60}, declared float")
        return
    if annotation is Decimal:
        # The SDK decodes these from decimal strings (``_field_encodings``: decimal_string).
        try:
            ok = isinstance(value, str) and Decimal(value).is_finite()
        except InvalidOperation:
            ok = False
        if not ok:
            errors.append(f"{path}: {value!r:.60} is not a decimal string (declared Decimal)")
        return
    if origin is list:
        if not isinstance(value, list):
            errors.append(f"{path}: {_json_kind(value)} {value!r:.60}, declared {declared}")
            return
        for index, item in enumerate(value):
            check_value(item, args[0], owner, f"{path}[{index}]", errors)
        return
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{path}: {_json_kind(value)} {value!r:.60}, declared {declared}")
            return
        for key, item in value.items():
            check_value(item, args[1], owner, f"{path}.{key}", errors)
        return
    if _is_untyped_object(annotation):
        if not isinstance(value, dict):
            errors.append(f"{path}: {_json_kind(value)} {value!r:.60}, declared {declared}")
            return
        item_type = args[0] if args else Any
        if not isinstance(item_type, typing.TypeVar):
            for key, item in value.items():
                check_value(item, item_type, owner, f"{path}.{key}", errors)
        return
    if _is_list_object(annotation):
        check_list_object(value, args[0] if args else Any, owner, path, errors)
        return
    if _is_stripe_object(annotation):
        check_object(value, annotation, path, errors)
        return
    raise TypeError(f"{path}: the conformance resolver does not understand {annotation!r}")


def check_list_object(
    value: Any, item_type: Any, owner: type, path: str, errors: list[str]
) -> None:
    """A ``ListObject[X]``: ``{"object": "list", "data": [X...], "has_more", "url"}``."""
    if not isinstance(value, dict):
        errors.append(f"{path}: {_json_kind(value)} {value!r:.60}, declared a list object")
        return
    if value.get("object") != "list":
        errors.append(f"{path}.object: {value.get('object')!r}, expected 'list'")
    for name in sdk_fields(stripe.ListObject):  # data, has_more, url
        if name not in value:
            errors.append(f"{path}.{name}: missing, declared by ListObject")
    if "has_more" in value:
        check_value(value["has_more"], bool, owner, f"{path}.has_more", errors)
    if "url" in value:
        check_value(value["url"], str, owner, f"{path}.url", errors)
    if "data" in value:
        check_value(value["data"], list[item_type], owner, f"{path}.data", errors)


def check_object(value: Any, cls: type, path: str, errors: list[str]) -> None:
    """A StripeObject subclass: required (non-Optional) fields present, every present declared
    field of the declared JSON type, recursively."""
    if not isinstance(value, dict):
        errors.append(f"{path}: {_json_kind(value)} {value!r:.60}, declared {cls.__qualname__}")
        return
    for name, (annotation, owner) in sdk_fields(cls).items():
        if name not in value:
            if not _is_optional(annotation, owner):
                errors.append(f"{path}.{name}: missing, declared {_describe(annotation)}")
            continue
        check_value(value[name], annotation, owner, f"{path}.{name}", errors)


def check_deleted(value: Any, cls: type, path: str, errors: list[str]) -> None:
    """A deleted object: ``id``, ``object`` and ``deleted: true`` are all it must carry."""
    if not isinstance(value, dict):
        errors.append(f"{path}: {_json_kind(value)}, expected a deleted object")
        return
    fields = sdk_fields(cls)
    for name in ("id", "object", "deleted"):
        if name not in value:
            errors.append(f"{path}.{name}: missing from a deleted object")
    if value.get("deleted") is not True:
        errors.append(f"{path}.deleted: {value.get('deleted')!r}, expected true")
    for name, item in value.items():
        if name in fields:
            annotation, owner = fields[name]
            check_value(item, annotation, owner, f"{path}.{name}", errors)


def _understood(annotation: Any, owner: type, seen: set[type]) -> None:
    """Resolve every part of an annotation; descend into nested classes of the same module."""
    annotation = _deref(annotation, owner)
    _kind_of(annotation, owner)  # raises TypeError for shapes the checker cannot read
    for arg in typing.get_args(annotation):
        if typing.get_origin(annotation) is not Literal and not isinstance(arg, typing.TypeVar):
            _understood(arg, owner, seen)
    if _is_stripe_object(annotation) and annotation not in seen:
        seen.add(annotation)
        if annotation.__module__ == owner.__module__:
            for inner, inner_owner in sdk_fields(annotation).values():
                _understood(inner, inner_owner, seen)


# --- talking to the emulator over the wire ---------------------------------------------------


@pytest.fixture(scope="module")
def samples(wire: Wire) -> Callable[[Kind], list[Json]]:
    """Each kind's samples, built once and shared by the SDK and the fixture checks."""
    built: dict[str, list[Json]] = {}

    def get(kind: Kind) -> list[Json]:
        if kind.name not in built:
            built[kind.name] = kind.build(wire)
        return built[kind.name]

    return get


# --- the resources the emulator serves -----------------------------------------------------


def _customer(w: Wire) -> list[Json]:
    created = w.customer()
    return [created, w.get(f"/v1/customers/{created['id']}")]


def _customer_updated(w: Wire) -> list[Json]:
    created = w.customer()
    return [w.post(f"/v1/customers/{created['id']}", {"name": "Acme", "metadata[tier]": ""})]


def _deleted_customer(w: Wire) -> list[Json]:
    created = w.customer()
    return [w.delete(f"/v1/customers/{created['id']}")]


def _deleted_customer_retrieved(w: Wire) -> list[Json]:
    created = w.customer()
    w.delete(f"/v1/customers/{created['id']}")
    return [w.get(f"/v1/customers/{created['id']}")]


def _invoiceitem_pending(w: Wire) -> list[Json]:
    created = w.pending_item(w.customer()["id"])
    return [created, w.get(f"/v1/invoiceitems/{created['id']}")]


def _invoiceitem_on_draft(w: Wire) -> list[Json]:
    customer = w.customer()["id"]
    invoice = w.draft(customer)
    created = w.post(
        "/v1/invoiceitems",
        {
            "customer": customer,
            "invoice": invoice["id"],
            "price_data[currency]": "usd",
            "price_data[product]": "prod_conformance",
            "price_data[unit_amount_decimal]": "3.5",
            "quantity_decimal": "2.25",
            "description": "priced item",
        },
    )
    updated = w.post(f"/v1/invoiceitems/{created['id']}", {"description": "renamed"})
    return [created, updated, w.get(f"/v1/invoiceitems/{created['id']}")]


def _deleted_invoiceitem(w: Wire) -> list[Json]:
    created = w.pending_item(w.customer()["id"])
    return [w.delete(f"/v1/invoiceitems/{created['id']}")]


def _invoice_draft(w: Wire) -> list[Json]:
    invoice = w.draft_with_lines(w.customer()["id"])
    return [invoice, w.get(f"/v1/invoices/{invoice['id']}")]


def _invoice_draft_empty(w: Wire) -> list[Json]:
    invoice = w.draft(w.customer()["id"])
    return [invoice, w.post(f"/v1/invoices/{invoice['id']}", {"footer": "Net 30"})]


def _invoice_send_invoice(w: Wire) -> list[Json]:
    invoice = w.draft(w.customer()["id"], collection_method="send_invoice", days_until_due="30")
    return [invoice, w.get(f"/v1/invoices/{invoice['id']}")]


def _invoice_open(w: Wire) -> list[Json]:
    invoice = w.finalized(w.customer()["id"])
    assert invoice["status"] == "open"
    return [invoice, w.get(f"/v1/invoices/{invoice['id']}")]


def _invoice_paid(w: Wire) -> list[Json]:
    invoice = w.finalized(w.customer()["id"])
    paid = w.post(f"/v1/invoices/{invoice['id']}/pay", {"payment_method": "pm_card_visa"})
    assert paid["status"] == "paid"
    return [paid, w.get(f"/v1/invoices/{invoice['id']}")]


def _invoice_void(w: Wire) -> list[Json]:
    invoice = w.finalized(w.customer()["id"])
    voided = w.post(f"/v1/invoices/{invoice['id']}/void")
    assert voided["status"] == "void"
    return [voided, w.get(f"/v1/invoices/{invoice['id']}")]


def _invoice_uncollectible(w: Wire) -> list[Json]:
    invoice = w.finalized(w.customer()["id"])
    marked = w.post(f"/v1/invoices/{invoice['id']}/mark_uncollectible")
    assert marked["status"] == "uncollectible"
    return [marked, w.get(f"/v1/invoices/{invoice['id']}")]


def _deleted_invoice(w: Wire) -> list[Json]:
    invoice = w.draft_with_lines(w.customer()["id"])
    return [w.delete(f"/v1/invoices/{invoice['id']}")]


def _invoice_preview(w: Wire) -> list[Json]:
    customer = w.customer()["id"]
    w.pending_item(customer)
    return [
        w.post(
            "/v1/invoices/create_preview",
            {"customer": customer, "invoice_items[0][amount]": "500", "currency": "usd"},
        )
    ]


def _invoice_expanded(w: Wire) -> list[Json]:
    invoice = w.draft_with_lines(w.customer()["id"])
    expanded = w.get(f"/v1/invoices/{invoice['id']}", {"expand[]": ["customer"]})
    assert isinstance(expanded["customer"], dict)
    return [expanded]


def _line_items_inline(w: Wire) -> list[Json]:
    invoice = w.draft_with_lines(w.customer()["id"])
    lines: list[Json] = invoice["lines"]["data"]
    assert len(lines) == 3
    return lines


def _line_items_listed(w: Wire) -> list[Json]:
    invoice = w.draft_with_lines(w.customer()["id"])
    lines: list[Json] = w.get(f"/v1/invoices/{invoice['id']}/lines")["data"]
    assert len(lines) == 3
    return lines


def _line_items_updated(w: Wire) -> list[Json]:
    invoice = w.draft_with_lines(w.customer()["id"])
    first = invoice["lines"]["data"][0]["id"]
    updated = w.post(
        f"/v1/invoices/{invoice['id']}/update_lines",
        {"lines[0][id]": first, "lines[0][amount]": "1100", "lines[0][description]": "more"},
    )
    lines: list[Json] = updated["lines"]["data"]
    return lines


def _lifecycle(w: Wire) -> None:
    """Every kind of event the emulator emits, at least once."""
    customer = w.customer()["id"]
    w.post(f"/v1/customers/{customer}", {"name": "Renamed"})
    for ending in ("pay", "void", "mark_uncollectible"):
        invoice = w.finalized(customer)
        w.post(f"/v1/invoices/{invoice['id']}/{ending}")
    declined = w.finalized(customer)
    response = w.request(
        "POST",
        f"/v1/invoices/{declined['id']}/pay",
        {"payment_method": "pm_card_chargeDeclined"},
    )
    assert response.status_code == 402
    draft = w.draft_with_lines(customer)
    w.post(
        f"/v1/invoices/{draft['id']}/remove_lines",
        {"lines[0][id]": draft["lines"]["data"][0]["id"], "lines[0][behavior]": "delete"},
    )
    w.delete(f"/v1/invoices/{draft['id']}")
    gone = w.customer()["id"]
    w.delete(f"/v1/customers/{gone}")


def _events(w: Wire) -> list[Json]:
    _lifecycle(w)
    listed: list[Json] = w.get("/v1/events", {"limit": "100"})["data"]
    assert len(listed) > 20
    return [*listed, w.get(f"/v1/events/{listed[0]['id']}")]


def _webhook_endpoint(w: Wire) -> list[Json]:
    created = w.post(
        "/v1/webhook_endpoints",
        {
            "url": "https://billsync.test/stripe/webhooks",
            "enabled_events[0]": "invoice.paid",
            "enabled_events[1]": "invoice.finalized",
            "description": "conformance",
            "metadata[owner]": "billsync",
        },
    )
    assert isinstance(created["secret"], str)
    updated = w.post(f"/v1/webhook_endpoints/{created['id']}", {"disabled": "true"})
    return [created, updated, w.get(f"/v1/webhook_endpoints/{created['id']}")]


def _deleted_webhook_endpoint(w: Wire) -> list[Json]:
    created = w.post(
        "/v1/webhook_endpoints",
        {"url": "https://billsync.test/hooks", "enabled_events[0]": "*"},
    )
    return [w.delete(f"/v1/webhook_endpoints/{created['id']}")]


def _portal_configuration(w: Wire) -> list[Json]:
    return [
        w.post("/v1/billing_portal/configurations", {"features[invoice_history][enabled]": "true"}),
        w.post(
            "/v1/billing_portal/configurations",
            {
                "business_profile[privacy_policy_url]": "https://billsync.test/privacy",
                "features[customer_update][enabled]": "true",
                "features[customer_update][allowed_updates][0]": "email",
                "default_return_url": "https://billsync.test/account",
            },
        ),
    ]


def _portal_session(w: Wire) -> list[Json]:
    customer = w.customer()["id"]
    w.post("/v1/billing_portal/configurations", {"features[invoice_history][enabled]": "true"})
    return [
        w.post(
            "/v1/billing_portal/sessions",
            {"customer": customer, "return_url": "https://billsync.test/account"},
        ),
        w.post("/v1/billing_portal/sessions", {"customer": customer, "locale": "fr"}),
    ]


def _list_customers(w: Wire) -> list[Json]:
    w.customer()
    w.customer()
    return [w.get("/v1/customers", {"limit": "1"}), w.get("/v1/customers")]


def _list_invoiceitems(w: Wire) -> list[Json]:
    customer = w.customer()["id"]
    w.pending_item(customer)
    w.draft_with_lines(customer)
    return [w.get("/v1/invoiceitems"), w.get("/v1/invoiceitems", {"pending": "true"})]


def _list_invoices(w: Wire) -> list[Json]:
    customer = w.customer()["id"]
    w.draft_with_lines(customer)
    w.finalized(customer)
    return [
        w.get("/v1/invoices"),
        w.get("/v1/invoices", {"customer": customer, "expand[]": ["data.customer"]}),
    ]


def _list_lines(w: Wire) -> list[Json]:
    invoice = w.draft_with_lines(w.customer()["id"])
    return [
        w.get(f"/v1/invoices/{invoice['id']}/lines"),
        w.get(f"/v1/invoices/{invoice['id']}/lines", {"limit": "2"}),
    ]


def _list_events(w: Wire) -> list[Json]:
    w.finalized(w.customer()["id"])
    return [w.get("/v1/events"), w.get("/v1/events", {"type": "invoice.*"})]


def _list_webhook_endpoints(w: Wire) -> list[Json]:
    w.post("/v1/webhook_endpoints", {"url": "https://billsync.test/a", "enabled_events[0]": "*"})
    return [w.get("/v1/webhook_endpoints")]


# --- what changes a total besides its lines: coupons, discounts, the customer's balance ---------

# The last API version whose customer endpoints take `coupon` (2025-03-31.basil removed it).
LEGACY_VERSION = "2025-02-24.acacia"


def _new_coupon(w: Wire, **extra: str) -> Json:
    return w.post(
        "/v1/coupons",
        {"percent_off": "15", "duration": "forever", "metadata[owner]": "billsync", **extra},
    )


def _amount_coupon(w: Wire) -> Json:
    return w.post(
        "/v1/coupons",
        {
            "amount_off": "250",
            "currency": "usd",
            "duration": "repeating",
            "duration_in_months": "2",
            "name": "2.50 off",
            "currency_options[eur][amount_off]": "230",
            "applies_to[products][0]": "prod_conformance",
        },
    )


def _coupons(w: Wire) -> list[Json]:
    percent, amount = _new_coupon(w), _amount_coupon(w)
    return [percent, amount, w.get(f"/v1/coupons/{percent['id']}")]


def _deleted_coupon(w: Wire) -> list[Json]:
    return [w.delete(f"/v1/coupons/{_new_coupon(w)['id']}")]


def _discounted_customer(w: Wire) -> str:
    customer: str = w.customer()["id"]
    response = w.http.post(
        f"/v1/customers/{customer}",
        data={"coupon": _new_coupon(w)["id"]},
        headers={"Stripe-Version": LEGACY_VERSION},
    )
    assert response.status_code == 200, response.text
    return customer


def _customer_with_discount(w: Wire) -> list[Json]:
    customer = w.get(f"/v1/customers/{_discounted_customer(w)}")
    assert customer["discount"] is not None
    return [customer]


def _deleted_discount(w: Wire) -> list[Json]:
    return [w.delete(f"/v1/customers/{_discounted_customer(w)}/discount")]


def _discounted_draft(w: Wire) -> Json:
    """The customer's discount and one of the invoice's own, the customer in credit."""
    customer = _discounted_customer(w)
    w.post(f"/v1/customers/{customer}/balance_transactions", {"amount": "-900", "currency": "usd"})
    invoice = w.draft(customer, **{"discounts[0][discount]": w.get(
        f"/v1/customers/{customer}")["discount"]["id"], "discounts[1][coupon]": _amount_coupon(
        w)["id"]})  # fmt: skip
    return w.post(
        f"/v1/invoices/{invoice['id']}/add_lines",
        {
            "lines[0][amount]": "1000",
            "lines[1][price_data][currency]": "usd",
            "lines[1][price_data][product]": "prod_conformance",
            "lines[1][price_data][unit_amount_decimal]": "1.5",
            "lines[1][quantity_decimal]": "1000",
            "lines[2][amount]": "-100",
        },
    )


def _invoice_discounted(w: Wire) -> list[Json]:
    invoice = _discounted_draft(w)
    assert invoice["total_discount_amounts"]
    assert invoice["starting_balance"] == -900
    return [invoice, w.get(f"/v1/invoices/{invoice['id']}")]


def _invoice_settled(w: Wire) -> list[Json]:
    """Finalized against a credit balance; and one under the minimum charge, paid at once."""
    finalized = w.post(f"/v1/invoices/{_discounted_draft(w)['id']}/finalize")
    small = w.draft(w.customer()["id"])
    w.post(f"/v1/invoices/{small['id']}/add_lines", {"lines[0][amount]": "25"})
    too_small = w.post(f"/v1/invoices/{small['id']}/finalize")
    assert too_small["status"] == "paid"
    return [finalized, too_small, w.post(f"/v1/invoices/{finalized['id']}/void")]


def _line_items_discounted(w: Wire) -> list[Json]:
    lines: list[Json] = _discounted_draft(w)["lines"]["data"]
    assert any(line["discount_amounts"] for line in lines)
    return lines


def _balance_transaction(w: Wire) -> list[Json]:
    customer = w.customer()["id"]
    return [
        w.post(
            f"/v1/customers/{customer}/balance_transactions",
            {"amount": "-500", "currency": "usd", "description": "credit", "metadata[n]": "1"},
        ),
        w.post(
            f"/v1/customers/{customer}/balance_transactions", {"amount": "75", "currency": "eur"}
        ),
    ]


def _list_balance_transactions(w: Wire) -> list[Json]:
    invoice = w.post(f"/v1/invoices/{_discounted_draft(w)['id']}/finalize")
    url = f"/v1/customers/{invoice['customer']}/balance_transactions"
    return [w.get(url), w.get(url, {"expand[]": ["data.invoice"]})]


@dataclass(frozen=True)
class Kind:
    """One kind of object the emulator serves: how to get samples of it over the wire, the
    SDK class that types it, and the key of Stripe's example object in the fixtures file."""

    name: str
    build: Callable[[Wire], list[Json]]
    sdk_class: type[stripe.StripeObject]
    fixture: str | None
    deleted: bool = False
    listed: bool = False  # the samples are list objects of sdk_class


PortalSession = stripe.billing_portal.Session

KINDS = [
    Kind("customer", _customer, stripe.Customer, "customer"),
    Kind("customer.updated", _customer_updated, stripe.Customer, "customer"),
    Kind("deleted_customer", _deleted_customer, stripe.Customer, "deleted_customer", True),
    Kind(
        "deleted_customer.retrieved",
        _deleted_customer_retrieved,
        stripe.Customer,
        "deleted_customer",
        True,
    ),
    Kind("invoiceitem.pending", _invoiceitem_pending, stripe.InvoiceItem, "invoiceitem"),
    Kind("invoiceitem.on_draft", _invoiceitem_on_draft, stripe.InvoiceItem, "invoiceitem"),
    Kind(
        "deleted_invoiceitem", _deleted_invoiceitem, stripe.InvoiceItem, "deleted_invoiceitem", True
    ),
    Kind("invoice.draft", _invoice_draft, stripe.Invoice, "invoice"),
    Kind("invoice.draft_empty", _invoice_draft_empty, stripe.Invoice, "invoice"),
    Kind("invoice.send_invoice", _invoice_send_invoice, stripe.Invoice, "invoice"),
    Kind("invoice.open", _invoice_open, stripe.Invoice, "invoice"),
    Kind("invoice.paid", _invoice_paid, stripe.Invoice, "invoice"),
    Kind("invoice.void", _invoice_void, stripe.Invoice, "invoice"),
    Kind("invoice.uncollectible", _invoice_uncollectible, stripe.Invoice, "invoice"),
    Kind("deleted_invoice", _deleted_invoice, stripe.Invoice, "deleted_invoice", True),
    Kind("invoice.preview", _invoice_preview, stripe.Invoice, "invoice"),
    Kind("invoice.expanded_customer", _invoice_expanded, stripe.Invoice, "invoice"),
    Kind("line_item.inline", _line_items_inline, stripe.InvoiceLineItem, "line_item"),
    Kind("line_item.listed", _line_items_listed, stripe.InvoiceLineItem, "line_item"),
    Kind("line_item.updated", _line_items_updated, stripe.InvoiceLineItem, "line_item"),
    Kind("event", _events, stripe.Event, "event"),
    Kind("webhook_endpoint", _webhook_endpoint, stripe.WebhookEndpoint, "webhook_endpoint"),
    Kind(
        "deleted_webhook_endpoint",
        _deleted_webhook_endpoint,
        stripe.WebhookEndpoint,
        "deleted_webhook_endpoint",
        True,
    ),
    Kind("billing_portal.session", _portal_session, PortalSession, "billing_portal.session"),
    Kind(
        "billing_portal.configuration",
        _portal_configuration,
        stripe.billing_portal.Configuration,
        "billing_portal.configuration",
    ),
    Kind("coupon", _coupons, stripe.Coupon, "coupon"),
    Kind("deleted_coupon", _deleted_coupon, stripe.Coupon, "deleted_coupon", True),
    Kind("customer.with_discount", _customer_with_discount, stripe.Customer, "customer"),
    Kind("deleted_discount", _deleted_discount, stripe.Discount, "deleted_discount", True),
    Kind("invoice.discounted", _invoice_discounted, stripe.Invoice, "invoice"),
    Kind("invoice.settled", _invoice_settled, stripe.Invoice, "invoice"),
    Kind("line_item.discounted", _line_items_discounted, stripe.InvoiceLineItem, "line_item"),
    Kind(
        "customer_balance_transaction",
        _balance_transaction,
        stripe.CustomerBalanceTransaction,
        "customer_balance_transaction",
    ),
    Kind("list.customer", _list_customers, stripe.Customer, None, listed=True),
    Kind("list.invoiceitem", _list_invoiceitems, stripe.InvoiceItem, None, listed=True),
    Kind("list.invoice", _list_invoices, stripe.Invoice, None, listed=True),
    Kind("list.line_item", _list_lines, stripe.InvoiceLineItem, None, listed=True),
    Kind("list.event", _list_events, stripe.Event, None, listed=True),
    Kind(
        "list.webhook_endpoint", _list_webhook_endpoints, stripe.WebhookEndpoint, None, listed=True
    ),
    Kind(
        "list.customer_balance_transaction",
        _list_balance_transactions,
        stripe.CustomerBalanceTransaction,
        None,
        listed=True,
    ),
]

KINDS_BY_NAME = {kind.name: kind for kind in KINDS}

# What an event's ``data.object`` is, by its ``object`` field (the SDK types it as untyped).
EVENT_OBJECTS: dict[str, type[stripe.StripeObject]] = {
    "coupon": stripe.Coupon,
    "customer": stripe.Customer,
    "discount": stripe.Discount,
    "invoice": stripe.Invoice,
    "invoiceitem": stripe.InvoiceItem,
}


def _label(sample: Json, index: int) -> str:
    name = sample.get("object", "?")
    if name == "event":
        return f"event[{sample.get('type')}]"
    return f"{name}[{index}]"


# --- 1. SDK resource conformance ----------------------------------------------------------------


@pytest.mark.unit
def test_resolver_understands_every_annotation() -> None:
    """Each field of each served class (and of its nested classes) resolves to a shape the
    checker reads: a silently skipped annotation would make the conformance tests vacuous."""
    seen: set[type] = set()
    for kind in KINDS:
        seen.add(kind.sdk_class)
        for annotation, owner in sdk_fields(kind.sdk_class).values():
            _understood(annotation, owner, seen)
    assert {
        stripe.Invoice.StatusTransitions,
        stripe.Invoice.AutomaticTax,
        stripe.Invoice.AutomaticTax.Liability,
        stripe.Invoice.Issuer,
        stripe.InvoiceLineItem.Period,
        stripe.InvoiceLineItem.Parent,
        stripe.InvoiceLineItem.Parent.InvoiceItemDetails,
        stripe.InvoiceLineItem.Pricing.PriceDetails,
        stripe.InvoiceItem.ProrationDetails,
        stripe.Customer.InvoiceSettings,
        stripe.Event.Data,
        stripe.Event.Request,
    } <= seen


def test_the_checker_catches_contradictions(samples: Callable[[Kind], list[Json]]) -> None:
    """The checker itself, on a real draft broken on purpose at every level it recurses into:
    it must name each break, and nothing else."""
    invoice = copy.deepcopy(samples(KINDS_BY_NAME["invoice.draft"])[0])
    invoice["status_transitions"]["finalized_at"] = "soon"  # Optional[int]
    invoice["automatic_tax"]["enabled"] = None  # bool, not Optional
    invoice["issuer"]["type"] = 1  # Literal[...] | str
    del invoice["period_end"]  # int, required
    invoice["customer"] = {"id": "cus_x", "object": "customer"}  # expanded, but no created
    invoice["lines"]["has_more"] = "no"
    line = invoice["lines"]["data"][1]
    line["period"]["start"] = "1793000000"  # int
    line["parent"]["invoice_item_details"]["proration"] = 0  # bool
    line["pricing"]["unit_amount_decimal"] = "1.2.3"  # Decimal string
    line["metadata"] = {"n": 1}  # UntypedStripeObject[str]
    invoice["object"] = "invoices"
    errors: list[str] = []
    check_object(invoice, stripe.Invoice, "invoice", errors)
    assert sorted(errors) == sorted(
        [
            "invoice.automatic_tax.enabled: null, but bool is not Optional",
            "invoice.customer.created: missing, declared int",
            "invoice.customer.livemode: missing, declared bool",
            "invoice.issuer.type: number 1, declared Union[Literal['account', 'self'], str]",
            "invoice.lines.has_more: string 'no', declared bool",
            "invoice.lines.data[1].metadata.n: number 1, declared str",
            "invoice.lines.data[1].parent.invoice_item_details.proration: number 0, declared bool",
            "invoice.lines.data[1].period.start: string '1793000000', declared int",
            "invoice.lines.data[1].pricing.unit_amount_decimal: '1.2.3' is not a decimal "
            "string (declared Decimal)",
            "invoice.object: 'invoices' is not one of Literal['invoice']",
            "invoice.period_end: missing, declared int",
            "invoice.status_transitions.finalized_at: string 'soon', declared Optional[int]",
        ]
    )


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.name)
def test_sdk_resource_conformance(kind: Kind, samples: Callable[[Kind], list[Json]]) -> None:
    built = samples(kind)
    assert built, f"{kind.name}: no samples"
    errors: list[str] = []
    for index, sample in enumerate(built):
        label = _label(sample, index)
        if kind.listed:
            check_list_object(sample, kind.sdk_class, kind.sdk_class, label, errors)
            assert sample["data"], f"{label}: an empty list proves nothing"
        elif kind.deleted:
            check_deleted(sample, kind.sdk_class, label, errors)
        else:
            check_object(sample, kind.sdk_class, label, errors)
    assert not errors, f"{kind.name} contradicts stripe-python {stripe.VERSION}:\n" + "\n".join(
        dict.fromkeys(errors)
    )


@pytest.mark.parametrize("kind", [k for k in KINDS if not k.deleted], ids=lambda k: k.name)
def test_no_undeclared_fields(kind: Kind, samples: Callable[[Kind], list[Json]]) -> None:
    """A top-level key the SDK class does not declare is not in Stripe's shape for the pinned
    version: code written against the emulator could come to rely on it and break on Stripe."""
    declared = set(sdk_fields(kind.sdk_class))
    extra: dict[str, set[str]] = {}
    for index, sample in enumerate(samples(kind)):
        for item in sample["data"] if kind.listed else [sample]:
            unknown = set(item) - declared
            if unknown:
                extra.setdefault(_label(sample, index), set()).update(unknown)
    assert not extra, f"{kind.name} sends keys {kind.sdk_class.__name__} does not declare: " + (
        ", ".join(f"{label}: {sorted(keys)}" for label, keys in extra.items())
    )


def test_event_payload_objects_conform(samples: Callable[[Kind], list[Json]]) -> None:
    """``data.object`` is untyped in the SDK, but it is the full resource the webhook handler
    parses: it must match that resource's class too."""
    events = samples(KINDS_BY_NAME["event"])
    errors: list[str] = []
    seen: set[str] = set()
    for event in events:
        payload = event["data"]["object"]
        cls = EVENT_OBJECTS.get(payload.get("object"))
        assert cls is not None, f"event[{event['type']}] carries an unexpected {payload!r:.80}"
        seen.add(event["type"])
        check_object(payload, cls, f"event[{event['type']}].data.object", errors)
    assert {"customer.deleted", "invoice.deleted", "invoiceitem.deleted", "invoice.paid"} <= seen
    assert not errors, "event payloads contradict the SDK:\n" + "\n".join(dict.fromkeys(errors))


@pytest.mark.parametrize("endpoint", ["add_lines", "invoiceitems"])
def test_a_deleted_invoice_takes_no_writes(endpoint: str, wire: Wire) -> None:
    """A write aimed at a deleted draft must fail as Stripe fails it (the invoice is gone:
    ``resource_missing`` — 404 when it is the URL's object, 400 when a parameter names it),
    never answer 200 with the ``{"deleted": true}`` stub where the SDK expects a full Invoice /
    InvoiceItem, nor attach items to it."""
    customer = wire.customer()["id"]
    invoice = wire.draft(customer)["id"]
    wire.delete(f"/v1/invoices/{invoice}")
    if endpoint == "add_lines":
        response = wire.request(
            "POST", f"/v1/invoices/{invoice}/add_lines", {"lines[0][amount]": "100"}
        )
    else:
        response = wire.request(
            "POST", "/v1/invoiceitems", {"customer": customer, "invoice": invoice, "amount": "5"}
        )
    body = response.json()
    expected = 404 if endpoint == "add_lines" else 400  # in the path / in the body
    assert response.status_code == expected, (
        f"{endpoint} on deleted invoice {invoice}: HTTP {response.status_code} {body}"
    )
    assert body["error"]["code"] == "resource_missing", body
    if endpoint == "invoiceitems":
        assert body["error"]["param"] == "invoice", body


@pytest.mark.parametrize(
    ("where", "status", "param"),
    [
        ("path", 404, "id"),
        ("line id in update_lines", 400, "lines[0][id]"),
        ("customer param", 400, "customer"),
        ("pagination cursor", 400, "starting_after"),
    ],
)
def test_a_missing_object_is_404_in_the_path_and_400_in_the_body(
    where: str, status: int, param: str, wire: Wire
) -> None:
    """Stripe answers ``resource_missing`` with 404 for the object in the URL's path and 400
    for an id it cannot find among the parameters (docs.stripe.com/error-codes/resource-missing;
    the API reference's errors: "400 Bad Request … a missing required parameter … 404 Not
    Found — The requested resource doesn't exist"): billsync decides on the code."""
    customer = wire.customer()["id"]
    invoice = wire.draft(customer)["id"]
    if where == "path":
        response = wire.request("GET", "/v1/invoices/in_missing0000000000000000")
    elif where == "line id in update_lines":
        response = wire.request(
            "POST",
            f"/v1/invoices/{invoice}/update_lines",
            {"lines[0][id]": "il_missing000000000000000", "lines[0][amount]": "5"},
        )
    elif where == "customer param":
        response = wire.request("POST", "/v1/invoices", {"customer": "cus_missing0000000000"})
    else:
        response = wire.request("GET", "/v1/invoices", {"starting_after": "in_missing000000000"})
    body = response.json()
    assert response.status_code == status, body
    assert body["error"]["code"] == "resource_missing", body
    assert body["error"]["param"] == param, body


# --- 2. Fixture shape agreement ------------------------------------------------------------------


# Stripe's example objects, vendored with their provenance (tests/fixtures/stripe/README.md).
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "stripe" / "fixtures3.json"
FIXTURES_SHA256 = "41486e14a5b930447f53ecc4e71e34e3184462ba3d18212a39d4a40f70eaba44"


@pytest.fixture(scope="module")
def stripe_fixtures() -> dict[str, Json]:
    """A missing or altered copy fails: these checks must never pass by having nothing to check."""
    assert FIXTURES.is_file(), f"Stripe's example objects are missing: {FIXTURES}"
    content = FIXTURES.read_bytes()
    digest = hashlib.sha256(content).hexdigest()
    assert digest == FIXTURES_SHA256, f"{FIXTURES} is not the vendored copy (sha256 {digest})"
    resources: dict[str, Json] = json.loads(content)["resources"]
    return resources


# Keys Stripe's examples carry that stripe-python 16.1.0 does not declare for the pinned API
# version: the emulator need not send them. Each entry is checked against the SDK class below,
# so the list cannot silently grow stale.
FIXTURE_KEYS_NOT_IN_SDK: dict[str, frozenset[str]] = {
    # Invoice.subscription moved to parent.subscription_details.subscription in 2025-03-31.basil;
    # the example still has a top-level "subscription": null.
    "invoice": frozenset({"subscription"}),
}

# Nested values compared key by key one level deep, except free-form maps.
FREE_FORM = frozenset({"metadata"})


def _sdk_field_for(kind: Kind, key: str) -> tuple[Any, type] | None:
    return sdk_fields(kind.sdk_class).get(key)


@pytest.mark.unit
def test_fixture_allow_list_is_not_in_the_sdk(stripe_fixtures: dict[str, Json]) -> None:
    classes = {kind.fixture: kind.sdk_class for kind in KINDS if kind.fixture}
    for resource, keys in FIXTURE_KEYS_NOT_IN_SDK.items():
        assert resource in stripe_fixtures, f"{resource} is not in the fixtures"
        declared = set(sdk_fields(classes[resource]))
        for key in keys:
            assert key in stripe_fixtures[resource], f"{resource}.{key}: not in the fixture"
            assert key not in declared, (
                f"{resource}.{key} is declared by {classes[resource].__name__}: the emulator "
                f"must send it, drop it from FIXTURE_KEYS_NOT_IN_SDK"
            )


@pytest.mark.parametrize(
    "kind", [kind for kind in KINDS if kind.fixture], ids=lambda kind: kind.name
)
def test_fixture_shape_agreement(
    kind: Kind, samples: Callable[[Kind], list[Json]], stripe_fixtures: dict[str, Json]
) -> None:
    assert kind.fixture is not None
    if kind.fixture not in stripe_fixtures:
        pytest.fail(f"the fixtures have no {kind.fixture!r} example")
    example = stripe_fixtures[kind.fixture]
    allowed = FIXTURE_KEYS_NOT_IN_SDK.get(kind.fixture, frozenset())
    errors: list[str] = []
    for index, sample in enumerate(samples(kind)):
        label = _label(sample, index)
        for key, expected in example.items():
            if key in allowed:
                continue
            if key not in sample:
                errors.append(f"{label}.{key}: missing (Stripe's example has {expected!r:.60})")
                continue
            actual = sample[key]
            if expected is None:
                continue
            if actual is None:
                declared = _sdk_field_for(kind, key)
                if declared is None or not _is_optional(*declared):
                    errors.append(f"{label}.{key}: null, Stripe's example has {expected!r:.60}")
                continue
            if _json_kind(actual) != _json_kind(expected):
                declared = _sdk_field_for(kind, key)
                if declared is not None and {_json_kind(actual), _json_kind(expected)} <= (
                    _kind_of(*declared)
                ):
                    continue  # both are right: an expandable id, here expanded
                errors.append(
                    f"{label}.{key}: {_json_kind(actual)} {actual!r:.60}, Stripe's example has "
                    f"{_json_kind(expected)} {expected!r:.60}"
                )
                continue
            if isinstance(expected, dict) and key not in FREE_FORM:
                for inner, inner_expected in expected.items():
                    if inner not in actual:
                        errors.append(f"{label}.{key}.{inner}: missing (in Stripe's example)")
                    elif (
                        inner_expected is not None
                        and actual[inner] is not None
                        and _json_kind(actual[inner]) != _json_kind(inner_expected)
                    ):
                        errors.append(
                            f"{label}.{key}.{inner}: {_json_kind(actual[inner])}, Stripe's "
                            f"example has {_json_kind(inner_expected)}"
                        )
    assert not errors, f"{kind.name} disagrees with Stripe's example object:\n" + "\n".join(
        dict.fromkeys(errors)
    )


# --- 3. Parameter validation against the SDK's TypedDicts --------------------------------------


@dataclass(frozen=True)
class BadRequest:
    name: str
    method: str
    path: str  # {customer} and {invoice} are filled in
    form: dict[str, str]
    code: str | None  # error.code; None: Stripe sends none (a plain invalid_request_error)
    param: str


BAD_REQUESTS = [
    BadRequest("unknown top-level", "POST", "/v1/customers", {"bogus": "1"}, "parameter_unknown",
               "bogus"),
    BadRequest("unknown in a hash", "POST", "/v1/customers", {"invoice_settings[bogus]": "x"},
               "parameter_unknown", "invoice_settings[bogus]"),
    BadRequest("unknown in a list item", "POST", "/v1/invoices/{invoice}/add_lines",
               {"lines[0][amount]": "100", "lines[0][bogus]": "x"}, "parameter_unknown",
               "lines[0][bogus]"),
    BadRequest("unknown two levels down", "POST", "/v1/invoices/{invoice}/add_lines",
               {"lines[0][amount]": "100", "lines[0][period][bogus]": "1"}, "parameter_unknown",
               "lines[0][period][bogus]"),
    BadRequest("unknown query parameter", "GET", "/v1/invoices", {"bogus": "1"},
               "parameter_unknown", "bogus"),
    BadRequest("amount not an integer", "POST", "/v1/invoiceitems",
               {"customer": "{customer}", "currency": "usd", "amount": "ten"},
               "parameter_invalid_integer", "amount"),
    BadRequest("line amount not an integer", "POST", "/v1/invoices/{invoice}/add_lines",
               {"lines[0][amount]": "1.5"}, "parameter_invalid_integer", "lines[0][amount]"),
    BadRequest("limit not an integer", "GET", "/v1/customers", {"limit": "many"},
               "parameter_invalid_integer", "limit"),
    BadRequest("boolean not a boolean", "POST", "/v1/invoices",
               {"customer": "{customer}", "auto_advance": "maybe"}, "parameter_invalid_boolean",
               "auto_advance"),
    BadRequest("add_lines without lines", "POST", "/v1/invoices/{invoice}/add_lines", {},
               "parameter_missing", "lines"),
    BadRequest("remove_lines without behavior", "POST", "/v1/invoices/{invoice}/remove_lines",
               {"lines[0][id]": "il_conformance"}, "parameter_missing", "lines[0][behavior]"),
    BadRequest("update_lines without id", "POST", "/v1/invoices/{invoice}/update_lines",
               {"lines[0][amount]": "1"}, "parameter_missing", "lines[0][id]"),
    BadRequest("period without end", "POST", "/v1/invoices/{invoice}/add_lines",
               {"lines[0][amount]": "1", "lines[0][period][start]": "1"}, "parameter_missing",
               "lines[0][period][end]"),
    BadRequest("collection_method not in the enum", "POST", "/v1/invoices",
               {"customer": "{customer}", "collection_method": "bogus"}, None,
               "collection_method"),
    BadRequest("behavior not in the enum", "POST", "/v1/invoices/{invoice}/remove_lines",
               {"lines[0][id]": "il_conformance", "lines[0][behavior]": "shred"}, None,
               "lines[0][behavior]"),
]  # fmt: skip


@pytest.fixture(scope="module")
def target(wire: Wire) -> tuple[str, str]:
    """A customer and an empty draft invoice for the bad requests to aim at."""
    customer = wire.customer()["id"]
    return customer, wire.draft(customer)["id"]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=lambda case: case.name)
def test_parameter_validation(case: BadRequest, wire: Wire, target: tuple[str, str]) -> None:
    customer, invoice = target

    def fill(text: str) -> str:
        return text.replace("{customer}", customer).replace("{invoice}", invoice)

    form = {key: fill(value) for key, value in case.form.items()}
    response = wire.request(case.method, fill(case.path), form)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error", error
    assert error.get("code") == case.code, error
    assert error.get("param") == case.param, error
    assert isinstance(error.get("message"), str)
    assert error["message"], error
    # A rejected request changes nothing: the draft has no lines.
    assert wire.get(f"/v1/invoices/{invoice}")["lines"]["data"] == []


@pytest.mark.unit
@pytest.mark.parametrize("route", ROUTES, ids=lambda route: route.endpoint)
def test_every_route_resolves_its_params_class(route: Route) -> None:
    cls = params_class(route.params)
    assert typing_extensions.is_typeddict(cls), f"{route.params} is not an SDK TypedDict"
    fields, required = fields_of(cls)
    assert required <= set(fields)
    if route.method == "GET" and "{id}" not in route.path:
        assert {"limit", "starting_after", "ending_before"} <= set(fields), route.params
    if route.method != "DELETE":
        assert "expand" in fields, f"{route.params}: every non-DELETE endpoint takes expand"
