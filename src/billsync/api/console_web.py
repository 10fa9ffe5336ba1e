"""What every page of the support console shares: its templates, who is signed in and whether
they may act, the page an action returns to with its confirmation, links into the Stripe
Dashboard. The routes are ``api.console`` (sign-in and the pages) and ``api.console_actions``
(the forms support acts with)."""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from billsync.api.console_display import (
    COMMON_ZONES,
    FLASH,
    FLASH_SECONDS,
    moment,
    seal,
    unseal,
    zone_of,
)
from billsync.api.web_security import root, secure_cookies, url
from billsync.bootstrap import Billsync
from billsync.errors import BillsyncError, DuplicateRequest
from billsync.repositories.console import prior_request
from billsync.services.console_auth import Signed

# The console's one router: the pages (api.console) and the forms (api.console_actions).
router = APIRouter(prefix="/console", include_in_schema=False)
TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parent.parent / "templates"),
    autoescape=select_autoescape(["html"]),
)
TEMPLATES.globals["root"] = root  # links and forms under the prefix billsync is served at
# Each form rendered carries a key of its own: sent twice (a double click, a re-post), the
# action is carried out once (billsync.core.request_keys).
TEMPLATES.globals["submission"] = lambda: secrets.token_urlsafe(18)
SESSION = "billsync_console"


def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(TEMPLATES.get_template(name).render(**context), status_code=status)


def view(
    request: Request,
    billsync: Billsync,
    signed: Signed,
    name: str,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    """A page for someone signed in: times in their zone, and the confirmation of the action
    they just took (shown once)."""
    zone = zone_of(request)
    flash = unseal(request.cookies.get(FLASH), signed.csrf)
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    response = page(
        name, status, user=signed, flash=flash, when=lambda value: moment(value, zone),
        zone=zone.key, zones=COMMON_ZONES, here=here, **context,
    )  # fmt: skip
    if request.cookies.get(FLASH):
        response.delete_cookie(FLASH, path=url("/console"))
    return response


def done(
    request: Request, billsync: Billsync, signed: Signed, location: str, said: str
) -> RedirectResponse:
    """Back to ``location`` after an action, saying there what was done."""
    response = RedirectResponse(url(location), status_code=303)
    response.set_cookie(
        FLASH, seal(said, signed.csrf), max_age=FLASH_SECONDS, httponly=True,
        samesite="strict", path=url("/console"), secure=secure_cookies(billsync.settings, request),
    )  # fmt: skip
    return response


def message(status: int, user: Signed | None, title: str, text: str) -> HTMLResponse:
    """The console's one-message page: a refusal, or why an action was not done."""
    return page("console_message.html", status, user=user, title=title, message=text)


def not_done(
    request: Request, billsync: Billsync, signed: Signed, error: BillsyncError, location: str
) -> Response:
    """Why an action was not done. A form sent again after it was carried out (a double click,
    the browser's re-post) goes back to its account's page, saying when it was done — once."""
    if not isinstance(error, DuplicateRequest):
        return message(error.status_code, signed, "Not done", error.message)
    with billsync.database.read() as connection:
        prior = prior_request(connection, error.actor, error.key)
    if prior is None:  # cannot be: the key is on a committed entry
        return message(error.status_code, signed, "Not done", error.message)
    if prior.digest != error.digest:  # the same form, sent again with other values
        return message(
            409, signed, "Not done",
            f"This form was already used for another request at "
            f"{moment(prior.at, zone_of(request))} (audit entry {prior.entry_id}, "
            f"{prior.action}): nothing was done with these values. Reload the page and fill "
            "the form in again.",
        )  # fmt: skip
    outcome = prior.detail.get("outcome")
    failed = isinstance(outcome, dict) and outcome.get("error")
    said = (
        f"This form was sent more than once: it was carried out once, at "
        f"{moment(prior.at, zone_of(request))} (audit entry {prior.entry_id}, "
        f"{prior.action}), and not again."
        + (f" It ended with: {failed}. Fill in the form anew to try again." if failed else "")
    )
    if prior.account_id is not None:
        location = f"/console/accounts/{quote(prior.account_id, safe='')}"
    return done(request, billsync, signed, location, said)


def signed_in(billsync: Billsync, request: Request) -> Signed | None:
    return billsync.console.session(request.cookies.get(SESSION))


def dashboard(billsync: Billsync, path: str) -> str:
    live = (billsync.settings.stripe_api_key or "").startswith(("sk_live_", "rk_live_"))
    return f"https://dashboard.stripe.com/{'' if live else 'test/'}{path}"


def require(billsync: Billsync, request: Request) -> Signed | RedirectResponse:
    signed = signed_in(billsync, request)
    return RedirectResponse(url("/console/login"), status_code=303) if signed is None else signed


def refusal(billsync: Billsync, request: Request, csrf: str, role: str) -> Response | Signed:
    """The signed-in person allowed to do this, or the page that says why not."""
    signed = signed_in(billsync, request)
    if signed is None:
        return message(401, None, "Signed out", "Sign in again to act.")
    if not csrf or not hmac.compare_digest(signed.csrf, csrf):
        return message(
            403, signed, "Refused", "This form is missing its security token: reload the page."
        )
    if not signed.can(role):
        return message(
            403,
            signed,
            "Refused",
            "Viewers can look but not act: ask an agent."
            if role == "agent"
            else f"This needs the {role} role.",
        )
    return signed
