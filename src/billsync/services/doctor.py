"""``billsync doctor``: is the configured Stripe account (or the emulator) set up the way billsync
needs it? Each check says what it found and, when it fails, what to fix.

Checks: the key works and its mode; the API version billsync speaks (and the webhook
endpoint's, which renders payloads in its own version); the Customer Portal's saved settings
(without them Stripe refuses portal sessions); the webhook endpoint pointing at billsync and
the events it sends; the webhook secrets configured; and the rate limits billsync plans with
against Stripe's for the mode (docs.stripe.com/rate-limits: 100 requests/s live, 25/s in test
mode, 25/s per endpoint unless Stripe raised them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from billsync.config import Settings
from billsync.core.installation import Mode, key_mode, mode_conflict
from billsync.repositories.installation import InstallationRow
from billsync.stripe_gateway import STRIPE_API_VERSION
from billsync.sync.port import StripeFailure

# The events billsync acts on (services/webhooks.py); "*" covers them all.
NEEDED_EVENTS = (
    "invoice.created", "invoice.updated", "invoice.finalized", "invoice.finalization_failed",
    "invoice.paid", "invoice.payment_failed", "invoice.voided", "invoice.marked_uncollectible",
    "invoice.deleted", "customer.deleted", "invoiceitem.deleted",
)  # fmt: skip
STRIPE_GLOBAL_LIMIT = {"live": 100.0, "test": 25.0}
STRIPE_ENDPOINT_LIMIT = 25.0
WEBHOOK_PATH = "/v1/stripe/webhook"


class StripeSetup(Protocol):
    """The reads the doctor makes (``StripeGateway`` has them)."""

    def ping(self) -> None: ...

    def list_portal_configurations(self) -> list[dict[str, Any]]: ...

    def list_webhook_endpoints(self) -> list[dict[str, Any]]: ...


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    found: str
    fix: str | None = None  # what to do, when not ok

    def as_json(self) -> dict[str, Any]:
        return {"check": self.name, "ok": self.ok, "found": self.found, "fix": self.fix}


def diagnose(
    settings: Settings, stripe: StripeSetup | None, installation: InstallationRow | None = None
) -> list[Check]:
    """The checks, in order; ``installation``: the database's row, when it could be read (the
    namespace this installation writes under, and the mode its ledger is tied to)."""
    key = settings.stripe_api_key
    if not key or stripe is None:
        return [
            Check(
                "stripe key", False, "no BILLSYNC_STRIPE_API_KEY",
                "set BILLSYNC_STRIPE_API_KEY to a secret (sk_…) or restricted (rk_…) key",
            )
        ]  # fmt: skip
    mode = key_mode(key)
    where = f" at {settings.stripe_api_base}" if settings.stripe_api_base else ""
    checks = [
        Check(
            "stripe key", mode is not None, f"{mode or 'unknown'} mode key{where}",
            None if mode else "use a key starting sk_live_, sk_test_, rk_live_ or rk_test_",
        )
    ]  # fmt: skip
    if installation is not None:
        checks.append(_installation(settings, installation, mode))
    try:
        stripe.ping()
    except StripeFailure as failure:
        checks.append(
            Check(
                "stripe answers", False, failure.message,
                "check the key (Dashboard → Developers → API keys) and the network",
            )
        )  # fmt: skip
        return checks
    checks.append(Check("stripe answers", True, f"the key works; API version {STRIPE_API_VERSION}"))
    checks.append(_portal(stripe, mode or "test"))
    checks.append(_webhooks(settings, stripe))
    checks.append(
        Check("webhook secrets", bool(settings.webhook_secrets()),
              f"{len(settings.webhook_secrets())} configured",
              None if settings.webhook_secrets() else
              "set BILLSYNC_STRIPE_WEBHOOK_SECRETS to the endpoint's signing secret (whsec_…)")
    )  # fmt: skip
    checks.append(_limits(settings, mode or "test"))
    return checks


def _installation(settings: Settings, installation: InstallationRow, mode: Mode | None) -> Check:
    namespace = settings.stripe_namespace or installation.namespace
    named = (
        f"namespace {namespace!r}" if namespace else "no namespace (a database from before them)"
    )
    conflict = mode_conflict(installation.stripe_mode, mode)
    tied = f"; ledger synced in {installation.stripe_mode} mode" if installation.stripe_mode else ""
    return Check(
        "installation", conflict is None, conflict or f"{named}{tied}",
        None if conflict is None else "billsync refuses to sync until the key's mode matches",
    )  # fmt: skip


def _portal(stripe: StripeSetup, mode: str) -> Check:
    try:
        configurations = stripe.list_portal_configurations()
    except StripeFailure as failure:
        return Check("customer portal", False, failure.message, "check the key's permissions")
    default = [c for c in configurations if c.get("is_default") and c.get("active")]
    where = "https://dashboard.stripe.com/" + ("" if mode == "live" else "test/")
    if not default:
        return Check(
            "customer portal", False, f"no saved portal settings in {mode} mode",
            f"save the Customer Portal's settings at {where}settings/billing/portal "
            "(without them Stripe refuses portal sessions)",
        )  # fmt: skip
    features = default[0].get("features", {})
    history = features.get("invoice_history", {}).get("enabled")
    return Check(
        "customer portal", True,
        f"default configuration {default[0].get('id')}"
        + ("" if history else " (invoice history is off: customers will not see their invoices)"),
    )  # fmt: skip


def _webhooks(settings: Settings, stripe: StripeSetup) -> Check:
    try:
        endpoints = stripe.list_webhook_endpoints()
    except StripeFailure as failure:
        return Check("webhook endpoint", False, failure.message, "check the key's permissions")
    wanted = None if not settings.public_url else settings.public_url.rstrip("/") + WEBHOOK_PATH
    mine = [e for e in endpoints if wanted is None or e.get("url") == wanted]
    if not mine:
        target = wanted or f"<BILLSYNC_PUBLIC_URL>{WEBHOOK_PATH}"
        return Check(
            "webhook endpoint", False,
            f"no endpoint for {target} among {len(endpoints)}",
            f"add an endpoint for {target} (Dashboard → Developers → Webhooks) with the events "
            "invoice.*, customer.deleted, invoiceitem.deleted; the sweep recovers meanwhile",
        )  # fmt: skip
    endpoint = mine[0]
    problems = []
    if endpoint.get("status") != "enabled":
        problems.append(f"it is {endpoint.get('status')}")
    events = set(endpoint.get("enabled_events") or ())
    missing = [] if "*" in events else [e for e in NEEDED_EVENTS if e not in events]
    if missing:
        problems.append("missing events " + ", ".join(missing))
    if endpoint.get("api_version") not in (None, STRIPE_API_VERSION):
        problems.append(
            f"it renders payloads in API version {endpoint.get('api_version')}, billsync speaks "
            f"{STRIPE_API_VERSION}"
        )
    found = f"{endpoint.get('url')} ({endpoint.get('id')})"
    if problems:
        return Check("webhook endpoint", False, found + ": " + "; ".join(problems),
                     "edit the endpoint in the Dashboard (or recreate it with api_version "
                     f"{STRIPE_API_VERSION})")  # fmt: skip
    return Check("webhook endpoint", True, found)


def _limits(settings: Settings, mode: str) -> Check:
    budget = settings.stripe_calls_per_second()
    limit = STRIPE_GLOBAL_LIMIT[mode]
    raised = {e: r for e, r in settings.stripe_endpoint_rates.items() if r > STRIPE_ENDPOINT_LIMIT}
    found = (
        f"budget {budget:g}/s of Stripe's {limit:g}/s in {mode} mode; "
        f"{settings.stripe_endpoint_rate:g}/s per endpoint"
        + (f" ({len(raised)} raised: {', '.join(sorted(raised))})" if raised else "")
    )
    if budget > limit or settings.stripe_endpoint_rate > STRIPE_ENDPOINT_LIMIT:
        return Check(
            "rate limits", False, found,
            f"keep BILLSYNC_STRIPE_RATE ≤ {limit:g} and BILLSYNC_STRIPE_ENDPOINT_RATE ≤ "
            f"{STRIPE_ENDPOINT_LIMIT:g} unless Stripe raised your limits (else Stripe answers "
            "429)",
        )  # fmt: skip
    note = " — endpoints raised above 25/s only if Stripe raised them for you" if raised else ""
    return Check("rate limits", True, found + note)
