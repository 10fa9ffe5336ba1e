"""Coupons and the discounts made from them: on a customer, and on an invoice.

- ``POST /v1/coupons``, ``GET`` and ``DELETE /v1/coupons/{id}``
  (docs.stripe.com/api/coupons). A deleted coupon can no longer be redeemed; discounts already
  made from it keep applying (docs.stripe.com/api/coupons/delete: "deleting a coupon does not
  affect any customers who have already applied the coupon").
- A customer's discount. Since 2025-03-31.basil the customer endpoints take no ``coupon`` (nor
  ``promotion_code``) parameter and nothing replaced it there
  (docs.stripe.com/changelog/basil/2025-03-31/deprecate-singular-coupon-promotion-code: "The
  coupon and promotion_code parameters and fields are no longer available on Subscription,
  Subscription Schedule, Customer or Preview Invoice endpoints"); the customer keeps its
  ``discount`` field and ``DELETE /v1/customers/{id}/discount``. So a customer gets a discount
  the way Stripe still allows through the API: a request made with an older ``Stripe-Version``
  (docs.stripe.com/api/versioning), which ``POST /v1/customers`` and ``/v1/customers/{id}``
  accept ``coupon`` from (see ``routes.Route.removed``).
- An invoice's ``discounts`` (docs.stripe.com/api/invoices/create#create_invoice-discounts):
  not given, the invoice inherits the customer's discount; ``""`` means none ("Pass an empty
  string to avoid inheriting any discounts"); a list of ``{coupon}``, ``{discount}`` (one of
  the customer's, or already on the invoice) or ``{promotion_code}`` (which the emulator does
  not serve: refused as missing). Since 2025-09-30.clover a discount names its coupon in
  ``source.coupon``, not expanded
  (docs.stripe.com/changelog/clover/2025-09-30/add-discount-source-property).

A coupon's ``duration`` bounds a customer's discount through ``end`` (``repeating``: that many
months after it starts); Stripe describes ``once`` for subscriptions ("how long the discount
will be in effect if used on a subscription"), so on one-off invoices the emulator applies a
customer's ``once`` discount for as long as the customer has it.
"""

from __future__ import annotations

import calendar
import datetime
import secrets
import string
from typing import TYPE_CHECKING, Any

from billsync.emulator import render
from billsync.emulator.errors import StripeError, invalid, not_found
from billsync.emulator.metadata import merge_metadata
from billsync.emulator.state import State, new_id

if TYPE_CHECKING:
    from billsync.emulator.billing import Context

_COUPON_ID = string.ascii_uppercase + string.digits
KINDS = ("coupon", "discount", "promotion_code")


# --- coupons ----------------------------------------------------------------------------------


def _coupon_terms(params: dict[str, Any]) -> dict[str, Any]:
    """The coupon's amount and duration, checked as Stripe checks them
    (docs.stripe.com/api/coupons/create)."""
    percent_off, amount_off = params.get("percent_off"), params.get("amount_off")
    if (percent_off is None) == (amount_off is None):
        raise invalid(
            "A coupon takes exactly one of percent_off and amount_off.",
            param="percent_off" if percent_off is None else "amount_off",
        )
    if percent_off is not None and not 0 < percent_off <= 100:
        raise invalid(
            "Invalid percent_off: it must be greater than 0 and at most 100.", param="percent_off"
        )
    if amount_off is not None:
        if amount_off <= 0:
            raise invalid("Invalid amount_off: it must be a positive integer.", param="amount_off")
        if not params.get("currency"):
            raise StripeError(
                400,
                "Missing required param: currency (a coupon with amount_off needs one).",
                code="parameter_missing",
                param="currency",
            )
    duration = params.get("duration", "once")
    months = params.get("duration_in_months")
    if duration == "repeating" and (months is None or months <= 0):
        raise invalid(
            "A repeating coupon needs duration_in_months, a positive integer.",
            param="duration_in_months",
        )
    if duration != "repeating" and months is not None:
        raise invalid(
            "duration_in_months applies only to coupons with duration=repeating.",
            param="duration_in_months",
        )
    options = {
        currency.lower(): {"amount_off": option["amount_off"]}
        for currency, option in params.get("currency_options", {}).items()
    }
    return {
        "amount_off": amount_off,
        "currency": params["currency"].lower() if params.get("currency") else None,
        "currency_options": options or None,
        "duration": duration,
        "duration_in_months": months,
        "percent_off": percent_off,
    }


def create_coupon(state: State, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    coupon_id = params.get("id") or "".join(secrets.choice(_COUPON_ID) for _ in range(8))
    if coupon_id in state.coupons and not state.coupons[coupon_id].get("deleted"):
        raise invalid("Coupon already exists.", param="id", code="resource_already_exists")
    applies_to = params.get("applies_to")
    coupon = {
        "id": coupon_id,
        "object": "coupon",
        **_coupon_terms(params),
        "applies_to": {"products": list(applies_to.get("products", []))} if applies_to else None,
        "created": state.clock.now(),
        "livemode": ctx.livemode,
        "max_redemptions": params.get("max_redemptions"),
        "metadata": merge_metadata({}, params.get("metadata", {})),
        "name": params.get("name") or None,
        "redeem_by": params.get("redeem_by"),
        "times_redeemed": 0,
        "_sequence": state.sequence(),
    }
    state.coupons[coupon_id] = coupon
    rendered = render.coupon(state, coupon)
    state.emit("coupon.created", rendered, livemode=ctx.livemode, request=ctx.request)
    return rendered


def retrieve_coupon(state: State, ctx: Context, coupon_id: str) -> dict[str, Any]:
    return render.coupon(state, state.coupon(coupon_id, ctx.livemode))


def delete_coupon(state: State, ctx: Context, coupon_id: str) -> dict[str, Any]:
    coupon = state.coupon(coupon_id, ctx.livemode)
    snapshot = render.coupon(state, coupon)
    coupon["deleted"] = True
    state.emit("coupon.deleted", snapshot, livemode=ctx.livemode, request=ctx.request)
    return {"id": coupon_id, "object": "coupon", "deleted": True}


def redeemable(state: State, ctx: Context, coupon_id: str, param: str) -> dict[str, Any]:
    """A coupon that can make a new discount now, or Stripe's refusal."""
    coupon = state.coupon(coupon_id, ctx.livemode, param, in_body=True)
    if not render.coupon_valid(state, coupon):
        raise StripeError(400, f"Coupon expired: {coupon_id}", code="coupon_expired", param=param)
    return coupon


def _fits(coupon: dict[str, Any], currency: str) -> bool:
    return coupon["percent_off"] is not None or render.amount_off_in(coupon, currency) is not None


# --- discounts --------------------------------------------------------------------------------


def _add_months(unix: int, months: int) -> int:
    """``unix`` plus calendar months (UTC), the day clamped to the target month's length."""
    moment = datetime.datetime.fromtimestamp(unix, tz=datetime.UTC)
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return int(moment.replace(year=year, month=month, day=day).timestamp())


def _new_discount(
    state: State, coupon: dict[str, Any], customer: str, invoice: str | None
) -> dict[str, Any]:
    now = state.clock.now()
    months = coupon["duration_in_months"] if coupon["duration"] == "repeating" else None
    discount: dict[str, Any] = {
        "id": new_id("di"),
        "object": "discount",
        "checkout_session": None,
        "customer": customer,
        "customer_account": None,
        "end": _add_months(now, months) if months else None,
        "invoice": invoice,
        "invoice_item": None,
        "promotion_code": None,
        "source": {"coupon": coupon["id"], "type": "coupon"},
        "start": now,
        "subscription": None,
        "subscription_item": None,
        # The coupon's terms as redeemed: a coupon deleted, and another made with its id,
        # leaves the discount as it was.
        "_coupon": {key: value for key, value in coupon.items() if not key.startswith("_")},
        "_sequence": state.sequence(),
    }
    coupon["times_redeemed"] += 1
    state.discounts[discount["id"]] = discount
    return discount


def _customer_changed(
    state: State, ctx: Context, customer: dict[str, Any], before: dict[str, Any]
) -> None:
    after = render.customer(customer)
    state.emit(
        "customer.updated",
        after,
        livemode=ctx.livemode,
        request=ctx.request,
        previous={"discount": before.get("discount")},
    )


def give_customer(
    state: State, ctx: Context, customer: dict[str, Any], coupon_id: str
) -> tuple[str, dict[str, Any]]:
    """The customer's discount becomes one made from ``coupon_id`` (the ``coupon`` parameter of
    a request made with a ``Stripe-Version`` before 2025-03-31.basil); returns the event to
    emit once the customer's own event is out (``customer.discount.created``, or ``.updated``
    when it replaces one)."""
    coupon = redeemable(state, ctx, coupon_id, "coupon")
    replaced = customer["discount"] is not None
    customer["discount"] = render.discount(_new_discount(state, coupon, customer["id"], None))
    event = "customer.discount.updated" if replaced else "customer.discount.created"
    return event, customer["discount"]


def delete_customer_discount(state: State, ctx: Context, customer_id: str) -> dict[str, Any]:
    customer = state.customer(customer_id, ctx.livemode, "id")
    if customer["discount"] is None:
        raise StripeError(
            404,
            f"Customer {customer_id} has no discount applied.",
            code="resource_missing",
            param="id",
        )
    before = render.customer(customer)
    removed = customer["discount"]
    customer["discount"] = None
    state.emit("customer.discount.deleted", removed, livemode=ctx.livemode, request=ctx.request)
    _customer_changed(state, ctx, customer, before)
    return render.deleted_discount(removed)


def expire_due(state: State) -> None:
    """Customers' discounts whose ``end`` has come on the emulator clock are gone, as Stripe
    ends a repeating coupon's discount (``customer.discount.deleted``)."""
    now = state.clock.now()
    ending = [
        d for d in state.discounts.values() if d["end"] is not None and d["end"] <= now
    ]  # few: only discounts from repeating coupons have an end
    for discount in ending:
        customer = state.customers[discount["customer"]]
        current = customer["discount"]
        if current is None or current["id"] != discount["id"] or customer.get("deleted"):
            continue
        before = render.customer(customer)
        customer["discount"] = None
        request = {"id": None, "idempotency_key": None}
        state.emit(
            "customer.discount.deleted", current, livemode=customer["livemode"], request=request
        )
        state.emit(
            "customer.updated",
            render.customer(customer),
            livemode=customer["livemode"],
            request=request,
            previous={"discount": before["discount"]},
        )


# --- an invoice's discounts -------------------------------------------------------------------


def inherited(customer: dict[str, Any], currency: str, state: State) -> list[str]:
    """The customer's discount, for a new invoice given no ``discounts``, when it can discount
    an invoice in ``currency``."""
    discount = customer["discount"]
    if discount is None:
        return []
    terms = state.discounts[discount["id"]]["_coupon"]
    return [discount["id"]] if _fits(terms, currency) else []


def resolve(state: State, ctx: Context, invoice: dict[str, Any], value: Any) -> list[str]:
    """An invoice's ``discounts`` parameter → the discount ids it will carry. Every entry is
    checked before any coupon is redeemed, so a refused request redeems nothing."""
    if value == "":
        return []
    customer = state.customers[invoice["customer"]]
    own = {customer["discount"]["id"]} if customer["discount"] is not None else set()
    own |= set(invoice["discounts"])
    plan: list[tuple[str, Any]] = []
    for index, entry in enumerate(value):
        given = [kind for kind in KINDS if entry.get(kind)]
        if len(given) != 1:
            raise invalid(
                "Each discount takes exactly one of coupon, discount and promotion_code.",
                param=f"discounts[{index}]",
            )
        kind = given[0]
        param = f"discounts[{index}][{kind}]"
        wanted = entry[kind]
        if kind == "promotion_code":
            raise not_found("promotion code", wanted, param, in_body=True)
        if kind == "discount":
            if wanted not in own:
                raise not_found("discount", wanted, param, in_body=True)
            plan.append(("discount", wanted))
            continue
        coupon = redeemable(state, ctx, wanted, param)
        if not _fits(coupon, invoice["currency"]):
            raise invalid(
                f"Coupon {wanted} takes an amount off in {coupon['currency']} and has none in "
                f"{invoice['currency']}, the invoice's currency.",
                param=param,
            )
        plan.append(("coupon", coupon))
    reused = [target for kind, target in plan if kind == "discount"]
    if len(set(reused)) != len(reused):
        raise invalid("A discount can apply to an invoice only once.", param="discounts")
    return [
        target
        if kind == "discount"
        else _new_discount(state, target, customer["id"], invoice["id"])["id"]
        for kind, target in plan
    ]
