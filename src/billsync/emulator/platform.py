"""Billing portal sessions, events and webhook endpoints."""

from __future__ import annotations

import secrets
from typing import Any

from billsync.emulator.billing import Context
from billsync.emulator.errors import StripeError, invalid, not_found
from billsync.emulator.metadata import merge_metadata
from billsync.emulator.state import API_VERSION, State, created_filter, new_id, paginate, public


def create_portal_configuration(
    state: State, ctx: Context, params: dict[str, Any]
) -> dict[str, Any]:
    """Saved Customer Portal settings (what the Dashboard's portal page saves). The mode's
    first one is its default."""
    mine = [c for c in state.portal_configurations.values() if c["livemode"] == ctx.livemode]
    wanted = params.get("features", {})
    features: dict[str, dict[str, Any]] = {
        "customer_update": {"allowed_updates": [], "enabled": False},
        "invoice_history": {"enabled": False},
        "payment_method_update": {"enabled": False, "payment_method_configuration": None},
        "subscription_cancel": {
            "cancellation_reason": {"enabled": False, "options": []},
            "enabled": False,
            "mode": "at_period_end",
            "proration_behavior": "none",
        },
        "subscription_pause": {
            "duration": {"interval_options": [], "type": "indefinite"},
            "enabled": False,
        },
        "subscription_update": {
            "default_allowed_updates": [],
            "enabled": False,
            "proration_behavior": "none",
            "schedule_at_period_end": {"conditions": []},
            "trial_update_behavior": "end_trial",
            "billing_cycle_anchor": None,
        },
    }
    for name, settings in wanted.items():
        if name in features and isinstance(settings, dict):
            features[name] = {**features[name], **settings}
    profile = {"headline": None, "privacy_policy_url": None, "terms_of_service_url": None}
    configuration = {
        "id": new_id("bpc"),
        "object": "billing_portal.configuration",
        "active": True,
        "application": None,
        "business_profile": {**profile, **params.get("business_profile", {})},
        "created": state.clock.now(),
        "default_return_url": params.get("default_return_url"),
        "features": features,
        "is_default": not mine,
        "livemode": ctx.livemode,
        "login_page": {"enabled": False, "url": None},
        "metadata": params.get("metadata", {}),
        "name": params.get("name"),
        "updated": state.clock.now(),
        "_sequence": state.sequence(),
    }
    state.portal_configurations[configuration["id"]] = configuration
    return public(configuration)


def list_portal_configurations(
    state: State, ctx: Context, params: dict[str, Any]
) -> dict[str, Any]:
    mine = [c for c in state.portal_configurations.values() if c["livemode"] == ctx.livemode]
    return paginate(mine, params, "/v1/billing_portal/configurations", public)


def _portal_configuration(state: State, ctx: Context, wanted: str | None) -> str:
    """The configuration a session uses: the one named, else the mode's default. None saved:
    Stripe refuses the session, with this message."""
    if wanted is not None:
        found = state.portal_configurations.get(wanted)
        if found is None or found["livemode"] != ctx.livemode:
            raise not_found("billing_portal.configuration", wanted, "configuration", in_body=True)
        return wanted
    for configuration in state.portal_configurations.values():
        if configuration["livemode"] == ctx.livemode and configuration["is_default"]:
            return str(configuration["id"])
    mode = "live" if ctx.livemode else "test"
    where = "" if ctx.livemode else "test/"
    raise invalid(
        f"You can’t create a portal session in {mode} mode until you save your customer portal "
        f"settings in {mode} mode at https://dashboard.stripe.com/{where}settings/billing/portal."
    )


def create_portal_session(state: State, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    if "customer" not in params:
        raise StripeError(
            400, "Missing required param: customer.", code="parameter_missing", param="customer"
        )
    customer = state.customer(params["customer"], ctx.livemode)
    configuration = _portal_configuration(state, ctx, params.get("configuration"))
    session_id = new_id("bps")
    session = {
        "id": session_id,
        "object": "billing_portal.session",
        "configuration": configuration,
        "created": state.clock.now(),
        "customer": customer["id"],
        "customer_account": None,
        "flow": None,
        "livemode": ctx.livemode,
        "locale": params.get("locale"),
        "on_behalf_of": params.get("on_behalf_of"),
        "return_url": params.get("return_url"),
        "url": f"{state.config.public_url.rstrip('/')}/_emulator/portal/{session_id}",
        "_sequence": state.sequence(),
    }
    state.portal_sessions[session_id] = session
    return public(session)


def _event(event: dict[str, Any]) -> dict[str, Any]:
    return public(event)


def list_events(state: State, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    created = created_filter(params)
    types = set(params.get("types", [])) | ({params["type"]} if "type" in params else set())

    def wanted(event_type: str) -> bool:
        if not types:
            return True
        return any(
            event_type == t or (t.endswith("*") and event_type.startswith(t[:-1])) for t in types
        )

    found = [
        event
        for event in state.events.values()
        if event["livemode"] == ctx.livemode and created(event["created"]) and wanted(event["type"])
    ]
    return paginate(found, params, "/v1/events", _event)


def retrieve_event(state: State, ctx: Context, event_id: str) -> dict[str, Any]:
    event = state.events.get(event_id)
    if event is None or event["livemode"] != ctx.livemode:
        raise not_found("event", event_id)
    return _event(event)


def create_webhook_endpoint(state: State, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    url = params["url"]
    if not url.startswith(("http://", "https://")):
        raise invalid("Invalid URL: must start with http:// or https://", param="url")
    endpoint = {
        "id": new_id("we"),
        "object": "webhook_endpoint",
        "api_version": params.get("api_version") or API_VERSION,
        "application": None,
        "created": state.clock.now(),
        "description": params.get("description") or None,
        "enabled_events": list(params["enabled_events"]),
        "livemode": ctx.livemode,
        "metadata": merge_metadata({}, params.get("metadata", {})),
        "secret": "whsec_" + secrets.token_urlsafe(24),
        "status": "enabled",
        "url": url,
        "_sequence": state.sequence(),
    }
    state.webhook_endpoints[endpoint["id"]] = endpoint
    return public(endpoint)


def _endpoint(state: State, ctx: Context, endpoint_id: str) -> dict[str, Any]:
    endpoint = state.webhook_endpoints.get(endpoint_id)
    if endpoint is None or endpoint["livemode"] != ctx.livemode:
        raise not_found("webhook_endpoint", endpoint_id)
    return endpoint


def _without_secret(endpoint: dict[str, Any]) -> dict[str, Any]:
    """Stripe returns an endpoint's signing secret only when creating it."""
    return {key: value for key, value in public(endpoint).items() if key != "secret"}


def retrieve_webhook_endpoint(state: State, ctx: Context, endpoint_id: str) -> dict[str, Any]:
    return _without_secret(_endpoint(state, ctx, endpoint_id))


def update_webhook_endpoint(
    state: State, ctx: Context, endpoint_id: str, params: dict[str, Any]
) -> dict[str, Any]:
    endpoint = _endpoint(state, ctx, endpoint_id)
    for key in ("url", "description"):
        if key in params:
            endpoint[key] = params[key] or None
    if "enabled_events" in params:
        endpoint["enabled_events"] = list(params["enabled_events"])
    if "disabled" in params:
        endpoint["status"] = "disabled" if params["disabled"] else "enabled"
    if "metadata" in params:
        endpoint["metadata"] = merge_metadata(endpoint["metadata"], params["metadata"])
    return _without_secret(endpoint)


def delete_webhook_endpoint(state: State, ctx: Context, endpoint_id: str) -> dict[str, Any]:
    _endpoint(state, ctx, endpoint_id)
    del state.webhook_endpoints[endpoint_id]
    return {"id": endpoint_id, "object": "webhook_endpoint", "deleted": True}


def list_webhook_endpoints(state: State, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    found = [e for e in state.webhook_endpoints.values() if e["livemode"] == ctx.livemode]
    return paginate(found, params, "/v1/webhook_endpoints", _without_secret)
