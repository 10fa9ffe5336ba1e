"""``billsync doctor`` against the emulator: what it finds and what it says to fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from billsync.cli.main import app as cli
from billsync.config import Settings
from billsync.services.doctor import NEEDED_EVENTS, diagnose
from billsync.stripe_gateway import STRIPE_API_VERSION, StripeGateway
from tests.stripe_peer import EMULATOR_KEY, RunningEmulator, save_portal_settings

PUBLIC = "https://billing.example.test"


@pytest.fixture
def bare(running_emulator: RunningEmulator) -> RunningEmulator:
    """A Stripe account as it is before anyone set it up for billsync."""
    running_emulator.control("POST", "reset")
    return running_emulator


def settings(emulator: RunningEmulator, tmp_path: Path, **extra: Any) -> Settings:
    return Settings(
        data_dir=tmp_path, stripe_api_key=EMULATOR_KEY, stripe_api_base=emulator.url,
        public_url=PUBLIC, **extra,
    )  # fmt: skip


def checks(emulator: RunningEmulator, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    configured = settings(emulator, tmp_path, **extra)
    gateway = StripeGateway(EMULATOR_KEY, api_base=emulator.url, max_network_retries=0)
    return {check.name: check for check in diagnose(configured, gateway)}


def endpoint(emulator: RunningEmulator, url: str, events: list[str], **extra: str) -> None:
    data = {"url": url, **{f"enabled_events[{i}]": e for i, e in enumerate(events)}, **extra}
    httpx.post(
        f"{emulator.url}/v1/webhook_endpoints",
        data=data,
        headers={"Authorization": f"Bearer {EMULATOR_KEY}"},
    ).raise_for_status()


def test_a_bare_account_gets_a_list_of_what_to_set_up(
    bare: RunningEmulator, tmp_path: Path
) -> None:
    found = checks(bare, tmp_path)
    assert found["stripe key"].ok
    assert "test mode" in found["stripe key"].found
    assert found["stripe answers"].ok
    assert STRIPE_API_VERSION in found["stripe answers"].found
    assert not found["customer portal"].ok
    assert "dashboard.stripe.com/test/settings/billing/portal" in (
        found["customer portal"].fix or ""
    )
    assert not found["webhook endpoint"].ok
    assert f"{PUBLIC}/v1/stripe/webhook" in (found["webhook endpoint"].fix or "")
    assert not found["webhook secrets"].ok
    assert found["rate limits"].ok  # a test key's default budget, 20/s, under Stripe's 25/s


def test_a_set_up_account_passes_every_check(bare: RunningEmulator, tmp_path: Path) -> None:
    save_portal_settings(bare.url, EMULATOR_KEY)
    endpoint(bare, f"{PUBLIC}/v1/stripe/webhook", ["*"])
    found = checks(bare, tmp_path, stripe_webhook_secrets="whsec_abc")
    assert all(check.ok for check in found.values()), found


def test_an_endpoint_missing_events_or_in_another_api_version_is_named(
    bare: RunningEmulator, tmp_path: Path
) -> None:
    endpoint(
        bare, f"{PUBLIC}/v1/stripe/webhook", ["invoice.paid", "invoice.updated"],
        api_version="2024-06-20",
    )  # fmt: skip
    check = checks(bare, tmp_path)["webhook endpoint"]
    assert not check.ok
    assert "missing events invoice.created" in check.found
    assert "customer.deleted" in check.found
    subscribed = {"invoice.paid", "invoice.updated"}
    assert all(event in check.found for event in set(NEEDED_EVENTS) - subscribed)
    assert "API version 2024-06-20" in check.found


def test_a_budget_above_stripes_limit_for_the_mode_fails(
    bare: RunningEmulator, tmp_path: Path
) -> None:
    check = checks(bare, tmp_path, stripe_rate=40)["rate limits"]
    assert not check.ok
    assert "budget 40/s of Stripe's 25/s in test mode" in check.found


def test_no_key_is_the_one_thing_to_fix(tmp_path: Path) -> None:
    (only,) = diagnose(Settings(data_dir=tmp_path), None)
    assert (only.name, only.ok) == ("stripe key", False)


def test_the_command_prints_the_checks_and_exits_1_until_all_pass(
    bare: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BILLSYNC_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BILLSYNC_STRIPE_API_KEY", EMULATOR_KEY)
    monkeypatch.setenv("BILLSYNC_STRIPE_API_BASE", bare.url)
    monkeypatch.setenv("BILLSYNC_PUBLIC_URL", PUBLIC)
    runner = CliRunner()
    first = runner.invoke(cli, ["doctor"])
    assert first.exit_code == 1
    assert "customer portal" in first.output
    assert "settings/billing/portal" in first.output
    save_portal_settings(bare.url, EMULATOR_KEY)
    endpoint(bare, f"{PUBLIC}/v1/stripe/webhook", ["*"])
    monkeypatch.setenv("BILLSYNC_STRIPE_WEBHOOK_SECRETS", "whsec_abc")
    second = runner.invoke(cli, ["doctor", "--json"])
    assert second.exit_code == 0, second.output
    assert {check["check"]: check["ok"] for check in json.loads(second.output)} == {
        "stripe key": True, "stripe answers": True, "customer portal": True,
        "webhook endpoint": True, "webhook secrets": True, "rate limits": True,
    }  # fmt: skip
