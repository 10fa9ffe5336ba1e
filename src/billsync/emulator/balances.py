"""Customers' credit balances: the ledger of customer balance transactions, and what finalizing
and voiding an invoice do with the balance.

Stripe keeps the balance as a ledger (docs.stripe.com/billing/customer/balance): a negative
amount is a credit (Stripe owes the customer), a positive one a debit. ``balance`` on the
customer is the balance in the customer's ``currency``; a transaction in another currency goes
to that currency's balance ("Specifies the invoice_credit_balance that this transaction will
apply to. If the customer's currency is not set, it will be updated to this value",
docs.stripe.com/api/customer_balance_transactions/create), and applies only to invoices in that
currency.

- Finalization applies the balance of the invoice's currency (see ``amounts.settle``): an
  ``applied_to_invoice`` transaction, and an ``invoice_too_small`` one when the amount due is
  under Stripe's minimum charge. A draft's ``starting_balance`` is the current balance ("If the
  invoice has not been finalized yet, this will be the current customer balance",
  docs.stripe.com/api/invoices/object#invoice_object-starting_balance) and its ``ending_balance``
  is null until it is finalized.
- Voiding an invoice gives back the balance it applied (``unapplied_from_invoice``;
  docs.stripe.com/changelog/2019-12-03/customer-balances-returned-voided-invoices).

The ``balance`` parameter of ``POST /v1/customers`` and ``/v1/customers/{id}`` sets the balance
of the customer's currency directly, with no transaction in the emulator's ledger.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from billsync.emulator import amounts, render
from billsync.emulator.metadata import merge_metadata
from billsync.emulator.state import State, created_filter, new_id, paginate

if TYPE_CHECKING:
    from billsync.emulator.billing import Context


def record(
    state: State,
    ctx: Context,
    customer: dict[str, Any],
    amount: int,
    *,
    currency: str,
    kind: str,
    invoice: str | None = None,
    description: str | None = None,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One ledger entry: the customer's balance in ``currency`` moves by ``amount``
    (``customer.updated`` when the customer's own ``balance`` changes)."""
    before = render.customer(customer)
    if customer["currency"] is None:
        customer["currency"] = currency
    if customer["currency"] == currency:
        customer["balance"] += amount
        ending = customer["balance"]
    else:
        others = customer.setdefault("_balances", {})
        others[currency] = others.get(currency, 0) + amount
        ending = others[currency]
    transaction = {
        "id": new_id("cbtxn"),
        "object": "customer_balance_transaction",
        "amount": amount,
        "checkout_session": None,
        "created": state.clock.now(),
        "credit_note": None,
        "currency": currency,
        "customer": customer["id"],
        "customer_account": None,
        "description": description,
        "ending_balance": ending,
        "invoice": invoice,
        "livemode": customer["livemode"],
        "metadata": metadata,
        "type": kind,
        "_sequence": state.sequence(),
    }
    state.balance_transactions[transaction["id"]] = transaction
    after = render.customer(customer)
    changed = {key: before[key] for key in ("balance", "currency") if before[key] != after[key]}
    if changed:
        state.emit(
            "customer.updated", after, livemode=ctx.livemode, request=ctx.request, previous=changed
        )
    return transaction


def create_transaction(
    state: State, ctx: Context, customer_id: str, params: dict[str, Any]
) -> dict[str, Any]:
    """``POST /v1/customers/{id}/balance_transactions``: an ``adjustment`` (negative: a
    credit)."""
    customer = state.customer(customer_id, ctx.livemode, "id")
    transaction = record(
        state,
        ctx,
        customer,
        params["amount"],
        currency=params["currency"].lower(),
        kind="adjustment",
        description=params.get("description") or None,
        metadata=merge_metadata({}, params.get("metadata", {})),
    )
    return render.balance_transaction(transaction)


def list_transactions(
    state: State, ctx: Context, customer_id: str, params: dict[str, Any]
) -> dict[str, Any]:
    """The customer's ledger, newest first; ``invoice`` keeps the entries of one invoice
    (docs.stripe.com/changelog/clover/2025-12-15/customer-balance-transations-list-invoice:
    "You can use the invoice to identify any adjustments that fall below the minimum threshold
    for creating a charge")."""
    customer = state.customer(customer_id, ctx.livemode, "id")
    created = created_filter(params)
    found = [
        transaction
        for transaction in state.balance_transactions.values()
        if transaction["customer"] == customer["id"]
        and created(transaction["created"])
        and ("invoice" not in params or transaction["invoice"] == params["invoice"])
    ]
    url = f"/v1/customers/{customer_id}/balance_transactions"
    return paginate(found, params, url, render.balance_transaction)


def settle_at_finalization(state: State, ctx: Context, invoice: dict[str, Any]) -> None:
    """Apply the customer's balance to the invoice being finalized and fix its amounts:
    ``starting_balance``, ``ending_balance`` and the amount due stop following the customer's
    balance from here on."""
    customer = state.customers[invoice["customer"]]
    currency = invoice["currency"]
    total = render.breakdown(state, invoice).total
    settlement = amounts.settle(
        total, render.balance_in(customer, currency), amounts.minimum_charge(currency)
    )
    if settlement.applied:
        record(
            state, ctx, customer, settlement.applied,
            currency=currency, kind="applied_to_invoice", invoice=invoice["id"],
        )  # fmt: skip
    if settlement.carried:
        record(
            state, ctx, customer, settlement.carried,
            currency=currency, kind="invoice_too_small", invoice=invoice["id"],
        )  # fmt: skip
    invoice["starting_balance"] = settlement.starting_balance
    invoice["ending_balance"] = settlement.ending_balance
    invoice["_amount_due"] = settlement.amount_due
    invoice["_balance_applied"] = settlement.applied


def give_back(state: State, ctx: Context, invoice: dict[str, Any]) -> None:
    """A voided invoice returns the balance it applied."""
    applied = invoice.get("_balance_applied", 0)
    if applied:
        customer = state.customers[invoice["customer"]]
        record(
            state, ctx, customer, -applied,
            currency=invoice["currency"], kind="unapplied_from_invoice", invoice=invoice["id"],
        )  # fmt: skip
        invoice["_balance_applied"] = 0
