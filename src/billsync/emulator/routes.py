"""The emulated endpoints: method, path, the SDK params class that types them, the operation."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from billsync.emulator import balances, billing, credit_notes, discounts, invoices, platform
from billsync.emulator.billing import Context
from billsync.emulator.state import State

Operation = Callable[[State, Context, dict[str, str], dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # with {id}
    params: str  # module.Class under stripe.params
    operation: Operation
    locks_invoice: bool = False  # a write to one invoice: concurrent ones get lock_timeout
    # Parameters a later API version removed, with the version that removed them: a request
    # that names an earlier version in its Stripe-Version header may still give them, as
    # Stripe honours the version a request asks for (docs.stripe.com/api/versioning). They
    # reach the operation as strings, beside the parameters the SDK types.
    removed: tuple[tuple[str, str], ...] = ()

    def accepts_removed(self, name: str, version: str) -> bool:
        """Whether a request made with API ``version`` may give the removed ``name``."""
        return any(
            name == removed and version.partition(".")[0] < until.partition(".")[0]
            for removed, until in self.removed
        )

    @property
    def endpoint(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.path) + "$")


def _no_params(call: Callable[[State, Context, str], dict[str, Any]]) -> Operation:
    return lambda state, ctx, path, _params: call(state, ctx, path["id"])


# A customer's coupon, removed from the customer endpoints in 2025-03-31.basil
# (docs.stripe.com/changelog/basil/2025-03-31/deprecate-singular-coupon-promotion-code).
CUSTOMER_COUPON = (("coupon", "2025-03-31.basil"),)


ROUTES: list[Route] = [
    # customers
    Route(
        "POST",
        "/v1/customers",
        "_customer_create_params.CustomerCreateParams",
        lambda s, c, p, q: billing.create_customer(s, c, q),
        removed=CUSTOMER_COUPON,
    ),
    Route(
        "GET",
        "/v1/customers",
        "_customer_list_params.CustomerListParams",
        lambda s, c, p, q: billing.list_customers(s, c, q),
    ),
    Route(
        "GET",
        "/v1/customers/{id}",
        "_customer_retrieve_params.CustomerRetrieveParams",
        _no_params(billing.retrieve_customer),
    ),
    Route(
        "POST",
        "/v1/customers/{id}",
        "_customer_update_params.CustomerUpdateParams",
        lambda s, c, p, q: billing.update_customer(s, c, p["id"], q),
        removed=CUSTOMER_COUPON,
    ),
    Route(
        "DELETE",
        "/v1/customers/{id}",
        "_customer_delete_params.CustomerDeleteParams",
        _no_params(billing.delete_customer),
    ),
    Route(
        "DELETE",
        "/v1/customers/{id}/discount",
        "_customer_delete_discount_params.CustomerDeleteDiscountParams",
        _no_params(discounts.delete_customer_discount),
    ),
    Route(
        "POST",
        "/v1/customers/{id}/balance_transactions",
        "_customer_balance_transaction_create_params.CustomerBalanceTransactionCreateParams",
        lambda s, c, p, q: balances.create_transaction(s, c, p["id"], q),
    ),
    Route(
        "GET",
        "/v1/customers/{id}/balance_transactions",
        "_customer_balance_transaction_list_params.CustomerBalanceTransactionListParams",
        lambda s, c, p, q: balances.list_transactions(s, c, p["id"], q),
    ),
    # coupons
    Route(
        "POST",
        "/v1/coupons",
        "_coupon_create_params.CouponCreateParams",
        lambda s, c, p, q: discounts.create_coupon(s, c, q),
    ),
    Route(
        "GET",
        "/v1/coupons/{id}",
        "_coupon_retrieve_params.CouponRetrieveParams",
        _no_params(discounts.retrieve_coupon),
    ),
    Route(
        "DELETE",
        "/v1/coupons/{id}",
        "_coupon_delete_params.CouponDeleteParams",
        _no_params(discounts.delete_coupon),
    ),
    # invoice items
    Route(
        "POST",
        "/v1/invoiceitems",
        "_invoice_item_create_params.InvoiceItemCreateParams",
        lambda s, c, p, q: billing.create_invoice_item(s, c, q),
        locks_invoice=True,
    ),
    Route(
        "GET",
        "/v1/invoiceitems",
        "_invoice_item_list_params.InvoiceItemListParams",
        lambda s, c, p, q: billing.list_invoice_items(s, c, q),
    ),
    Route(
        "GET",
        "/v1/invoiceitems/{id}",
        "_invoice_item_retrieve_params.InvoiceItemRetrieveParams",
        _no_params(billing.retrieve_invoice_item),
    ),
    Route(
        "POST",
        "/v1/invoiceitems/{id}",
        "_invoice_item_update_params.InvoiceItemUpdateParams",
        lambda s, c, p, q: billing.update_invoice_item(s, c, p["id"], q),
        locks_invoice=True,
    ),
    Route(
        "DELETE",
        "/v1/invoiceitems/{id}",
        "_invoice_item_delete_params.InvoiceItemDeleteParams",
        _no_params(billing.delete_invoice_item),
        locks_invoice=True,
    ),
    # invoices
    Route(
        "POST",
        "/v1/invoices",
        "_invoice_create_params.InvoiceCreateParams",
        lambda s, c, p, q: invoices.create_invoice(s, c, q),
    ),
    Route(
        "GET",
        "/v1/invoices",
        "_invoice_list_params.InvoiceListParams",
        lambda s, c, p, q: invoices.list_invoices(s, c, q),
    ),
    Route(
        "POST",
        "/v1/invoices/create_preview",
        "_invoice_create_preview_params.InvoiceCreatePreviewParams",
        lambda s, c, p, q: invoices.create_preview(s, c, q),
    ),
    Route(
        "GET",
        "/v1/invoices/{id}",
        "_invoice_retrieve_params.InvoiceRetrieveParams",
        _no_params(invoices.retrieve_invoice),
    ),
    Route(
        "POST",
        "/v1/invoices/{id}",
        "_invoice_update_params.InvoiceUpdateParams",
        lambda s, c, p, q: invoices.update_invoice(s, c, p["id"], q),
        locks_invoice=True,
    ),
    Route(
        "DELETE",
        "/v1/invoices/{id}",
        "_invoice_delete_params.InvoiceDeleteParams",
        _no_params(invoices.delete_invoice),
        locks_invoice=True,
    ),
    Route(
        "POST",
        "/v1/invoices/{id}/finalize",
        "_invoice_finalize_invoice_params.InvoiceFinalizeInvoiceParams",
        lambda s, c, p, q: invoices.finalize_invoice(s, c, p["id"], q),
        locks_invoice=True,
    ),
    Route(
        "POST",
        "/v1/invoices/{id}/pay",
        "_invoice_pay_params.InvoicePayParams",
        lambda s, c, p, q: invoices.pay_invoice(s, c, p["id"], q),
        locks_invoice=True,
    ),
    Route(
        "POST",
        "/v1/invoices/{id}/void",
        "_invoice_void_invoice_params.InvoiceVoidInvoiceParams",
        _no_params(invoices.void_invoice),
        locks_invoice=True,
    ),
    Route(
        "POST",
        "/v1/invoices/{id}/mark_uncollectible",
        "_invoice_mark_uncollectible_params.InvoiceMarkUncollectibleParams",
        _no_params(invoices.mark_uncollectible),
        locks_invoice=True,
    ),
    Route(
        "POST",
        "/v1/invoices/{id}/add_lines",
        "_invoice_add_lines_params.InvoiceAddLinesParams",
        lambda s, c, p, q: invoices.add_lines(s, c, p["id"], q),
        locks_invoice=True,
    ),
    Route(
        "POST",
        "/v1/invoices/{id}/update_lines",
        "_invoice_update_lines_params.InvoiceUpdateLinesParams",
        lambda s, c, p, q: invoices.update_lines(s, c, p["id"], q),
        locks_invoice=True,
    ),
    Route(
        "POST",
        "/v1/invoices/{id}/remove_lines",
        "_invoice_remove_lines_params.InvoiceRemoveLinesParams",
        lambda s, c, p, q: invoices.remove_lines(s, c, p["id"], q),
        locks_invoice=True,
    ),
    Route(
        "GET",
        "/v1/invoices/{id}/lines",
        "_invoice_list_lines_params.InvoiceListLinesParams",
        lambda s, c, p, q: invoices.list_lines(s, c, p["id"], q),
    ),
    # credit notes (emulator.credit_notes)
    Route(
        "POST",
        "/v1/credit_notes",
        "_credit_note_create_params.CreditNoteCreateParams",
        lambda s, c, p, q: credit_notes.create_credit_note(s, c, q),
        locks_invoice=True,
    ),
    Route(
        "GET",
        "/v1/credit_notes",
        "_credit_note_list_params.CreditNoteListParams",
        lambda s, c, p, q: credit_notes.list_credit_notes(s, c, q),
    ),
    Route(
        "GET",
        "/v1/credit_notes/{id}",
        "_credit_note_retrieve_params.CreditNoteRetrieveParams",
        _no_params(credit_notes.retrieve_credit_note),
    ),
    # billing portal, events, webhook endpoints
    Route(
        "POST",
        "/v1/billing_portal/configurations",
        "billing_portal._configuration_create_params.ConfigurationCreateParams",
        lambda s, c, p, q: platform.create_portal_configuration(s, c, q),
    ),
    Route(
        "GET",
        "/v1/billing_portal/configurations",
        "billing_portal._configuration_list_params.ConfigurationListParams",
        lambda s, c, p, q: platform.list_portal_configurations(s, c, q),
    ),
    Route(
        "POST",
        "/v1/billing_portal/sessions",
        "billing_portal._session_create_params.SessionCreateParams",
        lambda s, c, p, q: platform.create_portal_session(s, c, q),
    ),
    Route(
        "GET",
        "/v1/events",
        "_event_list_params.EventListParams",
        lambda s, c, p, q: platform.list_events(s, c, q),
    ),
    Route(
        "GET",
        "/v1/events/{id}",
        "_event_retrieve_params.EventRetrieveParams",
        _no_params(platform.retrieve_event),
    ),
    Route(
        "POST",
        "/v1/webhook_endpoints",
        "_webhook_endpoint_create_params.WebhookEndpointCreateParams",
        lambda s, c, p, q: platform.create_webhook_endpoint(s, c, q),
    ),
    Route(
        "GET",
        "/v1/webhook_endpoints",
        "_webhook_endpoint_list_params.WebhookEndpointListParams",
        lambda s, c, p, q: platform.list_webhook_endpoints(s, c, q),
    ),
    Route(
        "GET",
        "/v1/webhook_endpoints/{id}",
        "_webhook_endpoint_retrieve_params.WebhookEndpointRetrieveParams",
        _no_params(platform.retrieve_webhook_endpoint),
    ),
    Route(
        "POST",
        "/v1/webhook_endpoints/{id}",
        "_webhook_endpoint_update_params.WebhookEndpointUpdateParams",
        lambda s, c, p, q: platform.update_webhook_endpoint(s, c, p["id"], q),
    ),
    Route(
        "DELETE",
        "/v1/webhook_endpoints/{id}",
        "_webhook_endpoint_delete_params.WebhookEndpointDeleteParams",
        _no_params(platform.delete_webhook_endpoint),
    ),
]


def match(method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    for route in ROUTES:
        if route.method != method:
            continue
        found = route.pattern.match(path)
        if found is not None:
            return route, found.groupdict()
    return None


def path_exists(path: str) -> bool:
    return any(route.pattern.match(path) for route in ROUTES)
