"""Raw HTTP to the emulator's /v1, for the checks of its answers against Stripe's own
descriptions (test_emulator_conformance, test_emulator_openapi): form posts in, decoded JSON
out, nothing in between, and builders of every kind of object it serves."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.stripe_peer import EMULATOR_KEY, RunningEmulator

Json = dict[str, Any]


class Wire:
    """Raw HTTP to the emulator's /v1: form posts in, decoded JSON out, nothing in between."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {EMULATOR_KEY}"},
            timeout=10,
        )

    def request(
        self, method: str, path: str, params: dict[str, Any] | None = None
    ) -> httpx.Response:
        if method == "GET":
            return self.http.get(path, params=params)
        return self.http.request(method, path, data=params)

    def ok(self, method: str, path: str, params: dict[str, Any] | None = None) -> Json:
        response = self.request(method, path, params)
        assert response.status_code == 200, f"{method} {path}: {response.text}"
        body: Json = response.json()
        return body

    def get(self, path: str, params: dict[str, Any] | None = None) -> Json:
        return self.ok("GET", path, params)

    def post(self, path: str, params: dict[str, Any] | None = None) -> Json:
        return self.ok("POST", path, params)

    def delete(self, path: str) -> Json:
        return self.ok("DELETE", path)

    # --- objects ----------------------------------------------------------------------------

    def customer(self) -> Json:
        return self.post(
            "/v1/customers",
            {
                "name": "Acme Cloud",
                "email": "billing@acme.test",
                "phone": "+15555550100",
                "description": "conformance",
                "metadata[tier]": "gold",
                "preferred_locales[0]": "en",
                "invoice_settings[default_payment_method]": "pm_card_visa",
                "invoice_settings[footer]": "Thanks",
            },
        )

    def pending_item(self, customer: str) -> Json:
        return self.post(
            "/v1/invoiceitems",
            {
                "customer": customer,
                "currency": "usd",
                "amount": "1250",
                "description": "pending usage",
                "metadata[billsync_line_id]": "1",
                "period[start]": "1793000000",
                "period[end]": "1793086400",
            },
        )

    def draft(self, customer: str, **extra: str) -> Json:
        return self.post(
            "/v1/invoices",
            {
                "customer": customer,
                "currency": "usd",
                "auto_advance": "false",
                "collection_method": "charge_automatically",
                "pending_invoice_items_behavior": "exclude",
                "description": "conformance draft",
                "metadata[billsync_period]": "2026-11-01",
                **extra,
            },
        )

    def draft_with_lines(self, customer: str) -> Json:
        """A draft with an amount line, a decimal-priced line and an attached pending item."""
        invoice = self.draft(customer)
        pending = self.pending_item(customer)
        return self.post(
            f"/v1/invoices/{invoice['id']}/add_lines",
            {
                "lines[0][amount]": "1000",
                "lines[0][description]": "compute",
                "lines[0][metadata][billsync_line_id]": "2",
                "lines[0][period][start]": "1793000000",
                "lines[0][period][end]": "1793086400",
                "lines[1][price_data][currency]": "usd",
                "lines[1][price_data][product]": "prod_conformance",
                "lines[1][price_data][unit_amount_decimal]": "0.125",
                "lines[1][quantity_decimal]": "1000.5",
                "lines[1][description]": "egress",
                "lines[2][invoice_item]": pending["id"],
            },
        )

    def finalized(self, customer: str) -> Json:
        invoice = self.draft_with_lines(customer)
        return self.post(f"/v1/invoices/{invoice['id']}/finalize", {"auto_advance": "false"})


@pytest.fixture(scope="module")
def wire(emulator_server: RunningEmulator) -> Iterator[Wire]:
    """The emulator as ``running_emulator`` gives it (reset, rate limits lifted), once for the
    module, and one keep-alive connection: a reset and a new client per test would cost more
    than the checks themselves. Every builder creates its own objects, and no test relies on
    the account being empty. The configuration is restored afterwards."""
    config = emulator_server.control("GET", "config")
    emulator_server.control("POST", "reset")
    emulator_server.control(
        "POST", "config", {"rate_limit_test": 0, "rate_limit_live": 0, "rate_limit_endpoint": 0}
    )
    client = Wire(emulator_server.url)
    yield client
    client.http.close()
    emulator_server.control("POST", "config", config)
