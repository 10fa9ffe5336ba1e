"""The Stripe peer of the test suite: the emulator served over real HTTP (default), or real
Stripe test mode when BILLSYNC_TEST_STRIPE_KEY is set."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import stripe
import uvicorn

from billsync.emulator.app import Emulator, create_app
from billsync.emulator.state import API_VERSION, EmulatorConfig
from tests.ports import free_port
from tests.waiting import wait_until

REAL_KEY_VARIABLE = "BILLSYNC_TEST_STRIPE_KEY"
EMULATOR_KEY = "sk_test_billsyncEmulatorKey01"


@dataclass
class RunningEmulator:
    url: str
    emulator: Emulator

    def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = httpx.request(method, f"{self.url}/_emulator/{path}", json=body, timeout=10)
        response.raise_for_status()
        return response.json()

    def client(self, **options: Any) -> stripe.StripeClient:
        return stripe.StripeClient(
            EMULATOR_KEY,
            base_addresses={"api": self.url},
            stripe_version=API_VERSION,
            **options,
        )


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test process keeps its own
        pass


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[RunningEmulator]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    emulator = create_app(EmulatorConfig(public_url=url))
    # At the session's end, connections still open (an SDK's pooled keep-alive, a request the
    # "hang" fault holds) get a second to finish, not the join's whole backstop.
    server = _Server(
        uvicorn.Config(
            emulator, host="127.0.0.1", port=port, log_level="error", timeout_graceful_shutdown=1
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, "the emulator starts")
    yield RunningEmulator(url, emulator)
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def running_emulator(emulator_server: RunningEmulator) -> RunningEmulator:
    """The emulator, reset, with rate limits lifted unless a test sets them, and the Customer
    Portal's settings saved (as on a Stripe account set up for billsync; a test of the
    refusal without them resets the emulator)."""
    emulator_server.control("POST", "reset")
    emulator_server.control(
        "POST", "config", {"rate_limit_test": 0, "rate_limit_live": 0, "rate_limit_endpoint": 0}
    )
    save_portal_settings(emulator_server.url, EMULATOR_KEY)
    emulator_server.control("DELETE", "stats")  # a test counts its own requests
    return emulator_server


def save_portal_settings(url: str, key: str) -> None:
    """What saving the portal's settings in the Dashboard does: a default configuration."""
    httpx.post(
        f"{url}/v1/billing_portal/configurations",
        data={"features[invoice_history][enabled]": "true"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    ).raise_for_status()


@dataclass
class StripePeer:
    """What a scenario runs against: a client, and the emulator when it is the emulator."""

    client: stripe.StripeClient
    emulator: RunningEmulator | None

    @property
    def is_real(self) -> bool:
        return self.emulator is None

    def need_emulator(self) -> RunningEmulator:
        if self.emulator is None:
            pytest.skip("needs the emulator's control plane (fault injection, clock)")
        return self.emulator


@pytest.fixture
def stripe_peer(request: pytest.FixtureRequest) -> StripePeer:
    key = os.environ.get(REAL_KEY_VARIABLE)
    if key:
        if not key.startswith("sk_test_"):
            pytest.fail(f"{REAL_KEY_VARIABLE} must be a test-mode key (sk_test_...)")
        return StripePeer(stripe.StripeClient(key, stripe_version=API_VERSION), None)
    running: RunningEmulator = request.getfixturevalue("running_emulator")
    return StripePeer(running.client(), running)
