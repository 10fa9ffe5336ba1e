"""The support console (``/console``): server-rendered, no build step, plain forms.

Sign-in sets an HttpOnly, SameSite=Strict session cookie; every form carries the session's
CSRF token and the server refuses a form without it. Viewers read (the forms they cannot use are
not shown to them); agents and admins act, every action asks for a reason, lands in the audit log
and says what it did on the page it returns to. Times are shown in the viewer's time zone
(``api.console_display``).
"""

from __future__ import annotations

import asyncio
import hmac
import re
import secrets
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from billsync.api.console_display import (
    COMMON_ZONES,
    FLASH,
    FLASH_SECONDS,
    TIME_ZONE,
    known_zone,
    moment,
    seal,
    unseal,
    zone_of,
)
from billsync.api.deps import BillsyncDep
from billsync.api.web_security import root, secure_cookies, url
from billsync.bootstrap import Billsync
from billsync.config import Settings
from billsync.core.capacity import capacity
from billsync.core.credit_notes import DESTINATIONS, REASONS
from billsync.core.display import format_money
from billsync.core.periods import PeriodStatus
from billsync.errors import BillsyncError
from billsync.repositories import console as console_repository
from billsync.repositories import problems
from billsync.repositories import sync as sync_repository
from billsync.repositories import webhooks as webhook_repository
from billsync.services.console_auth import Signed, SignInRefused, Throttled
from billsync.services.console_views import account_view, describe_entry, search
from billsync.services.support import PROBLEM_ACTIONS, problem_actions

router = APIRouter(prefix="/console", include_in_schema=False)
TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parent.parent / "templates"),
    autoescape=select_autoescape(["html"]),
)
TEMPLATES.globals["root"] = root  # links and forms under the prefix billsync is served at
SESSION = "billsync_console"
LOGIN_CSRF = "billsync_console_login"
WHOLE_NUMBER = re.compile(r"[0-9]{1,12}")  # a policy's seconds or minor units, in ASCII digits


def _page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(TEMPLATES.get_template(name).render(**context), status_code=status)


def _view(
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
    response = _page(
        name, status, user=signed, flash=flash, when=lambda value: moment(value, zone),
        zone=zone.key, zones=COMMON_ZONES, here=here, **context,
    )  # fmt: skip
    if request.cookies.get(FLASH):
        response.delete_cookie(FLASH, path=url("/console"))
    return response


def _done(
    request: Request, billsync: Billsync, signed: Signed, location: str, message: str
) -> RedirectResponse:
    """Back to ``location`` after an action, saying there what was done."""
    response = RedirectResponse(url(location), status_code=303)
    response.set_cookie(
        FLASH, seal(message, signed.csrf), max_age=FLASH_SECONDS, httponly=True,
        samesite="strict", path=url("/console"), secure=secure_cookies(billsync.settings, request),
    )  # fmt: skip
    return response


def _message(status: int, user: Signed | None, title: str, message: str) -> HTMLResponse:
    """The console's one-message page: a refusal, or why an action was not done."""
    return _page("console_message.html", status, user=user, title=title, message=message)


def _signed(billsync: Billsync, request: Request) -> Signed | None:
    return billsync.console.session(request.cookies.get(SESSION))


def _dashboard(billsync: Billsync, path: str) -> str:
    live = (billsync.settings.stripe_api_key or "").startswith(("sk_live_", "rk_live_"))
    return f"https://dashboard.stripe.com/{'' if live else 'test/'}{path}"


@router.get("/login")
def login_form(request: Request, billsync: BillsyncDep) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = _page("console_login.html", csrf=token, error=None)
    response.set_cookie(
        LOGIN_CSRF, token, httponly=True, samesite="strict", path=url("/console"),
        secure=secure_cookies(billsync.settings, request),
    )  # fmt: skip
    return response


@router.post("/login")
async def login(
    request: Request,
    billsync: BillsyncDep,
    name: str = Form(default=""),
    password: str = Form(default=""),
    csrf: str = Form(default=""),
) -> Response:
    expected = request.cookies.get(LOGIN_CSRF, "")
    if not expected or not hmac.compare_digest(expected, csrf):
        return _page("console_login.html", 403, csrf=expected, error="The form expired: try again.")
    # The peer as the server reports it: a proxy's X-Forwarded-For counts only when the proxy
    # is one of BILLSYNC_TRUSTED_PROXIES (the server is started with those alone trusted).
    client = request.client.host if request.client else "unknown"
    auth = billsync.console
    try:
        admission = await run_in_threadpool(auth.admit, name, client)
        if admission.delay:
            await asyncio.sleep(admission.delay)  # slows a guesser without holding a thread
        token, _ = await run_in_threadpool(auth.sign_in, name, password, client, admission)
    except SignInRefused as refusal:
        return _page("console_login.html", 401, csrf=expected, error=refusal.message)
    except Throttled as refusal:
        page = _page("console_login.html", 429, csrf=expected, error=refusal.message)
        page.headers["Retry-After"] = str(refusal.retry_after)
        return page
    response = RedirectResponse(url("/console"), status_code=303)
    response.set_cookie(
        SESSION,
        token,
        httponly=True,
        samesite="strict",
        path=url("/console"),
        secure=secure_cookies(billsync.settings, request),
    )
    response.delete_cookie(LOGIN_CSRF, path=url("/console"))
    return response


def _require(billsync: Billsync, request: Request) -> Signed | RedirectResponse:
    signed = _signed(billsync, request)
    return RedirectResponse(url("/console/login"), status_code=303) if signed is None else signed


@router.post("/logout")
def logout(request: Request, billsync: BillsyncDep, csrf: str = Form(default="")) -> Response:
    signed = _signed(billsync, request)
    if signed is not None and hmac.compare_digest(signed.csrf, csrf):
        billsync.console.sign_out(signed)
    response = RedirectResponse(url("/console/login"), status_code=303)
    response.delete_cookie(SESSION, path=url("/console"))
    return response


@router.get("")
def home(request: Request, billsync: BillsyncDep, q: str = "") -> Response:
    signed = _require(billsync, request)
    if isinstance(signed, RedirectResponse):
        return signed
    with billsync.database.read() as connection:
        results = search(connection, q) if q else []
        trail = console_repository.trail(connection, limit=20)
        open_problems = problems.open_problems(connection)
    return _view(
        request, billsync, signed, "console_home.html",
        q=q, results=results, trail=trail, problems=open_problems[:50],
    )  # fmt: skip


@router.get("/accounts/{account_id}")
def account(request: Request, account_id: str, billsync: BillsyncDep, period: str = "") -> Response:
    """Everything about one account; ``period``: the period being looked at (the credit and
    charge form targets it)."""
    signed = _require(billsync, request)
    if isinstance(signed, RedirectResponse):
        return signed
    with billsync.database.read() as connection:
        view = account_view(connection, account_id, billsync.catalog)
    if view is None:
        return _message(404, signed, "No such account", f"There is no account {account_id!r}.")
    currency = view.account.currency

    def money(amount: int | None) -> str:
        return "—" if amount is None else format_money(amount, currency)

    adjustable = [p.start.isoformat() for p in view.adjustable]
    return _view(
        request, billsync, signed, "console_account.html",
        view=view, money=money, dashboard=lambda path: _dashboard(billsync, path),
        target=period if period in adjustable else (adjustable[0] if adjustable else ""),
        problem_actions=problem_actions, action_labels=PROBLEM_ACTIONS,
        reasons=REASONS, destinations=DESTINATIONS,
        describe=lambda entry: describe_entry(entry, currency),
    )  # fmt: skip


@router.get("/timezone")
def time_zone(request: Request, billsync: BillsyncDep, tz: str = "", next: str = "") -> Response:
    """The viewer's time zone for every time the console shows (kept in a cookie), then back
    to the page they were on."""
    signed = _require(billsync, request)
    if isinstance(signed, RedirectResponse):
        return signed
    name = tz.strip()
    if not known_zone(name):
        return _message(
            422, signed, "Unknown time zone",
            f"{name!r} is not a time zone name: use one like Europe/Paris or America/New_York.",
        )  # fmt: skip
    console = url("/console")
    back = next if next.startswith(console) and not next.startswith("//") else console
    response = _done(
        request, billsync, signed, back.removeprefix(root()), f"Times are now in {name}."
    )
    response.set_cookie(
        TIME_ZONE, name, max_age=365 * 86400, httponly=True, samesite="strict", path=console,
        secure=secure_cookies(billsync.settings, request),
    )  # fmt: skip
    return response


@router.post("/accounts/{account_id}/actions/{action}")
async def act(
    request: Request,
    account_id: str,
    action: str,
    billsync: BillsyncDep,
    *,
    csrf: str = Form(default=""),
    reason: str = Form(default=""),
    period: str = Form(default=""),
) -> Response:
    allowed = _refusal(billsync, request, csrf, "agent")
    if not isinstance(allowed, Signed):
        return allowed
    try:
        done = await run_in_threadpool(
            partial(
                billsync.support.act,
                action,
                account_id,
                actor=allowed.name,
                reason=reason,
                period=period or None,
            )
        )
    except BillsyncError as error:
        return _message(error.status_code, allowed, "Not done", error.message)
    outcome, start = done.outcome, done.period_start
    said = {
        "sync": f"Synced: {outcome.get('calls', 0)} Stripe call(s)"
        + (f"; it failed: {outcome['error']}." if outcome.get("error") else "."),
        "hold": f"The period starting {start} is held: it will not finalize until released.",
        "release": f"The period starting {start} is released: its clock runs again.",
        "approve": f"The period starting {start} is approved: "
        + (
            "Stripe finalized its invoice."
            if outcome.get("finalized")
            else "Stripe has not finalized it yet; a worker retries."
        ),
    }[action]
    return _done(request, billsync, allowed, f"/console/accounts/{account_id}", said)


def _refusal(billsync: Billsync, request: Request, csrf: str, role: str) -> Response | Signed:
    """The signed-in person allowed to do this, or the page that says why not."""
    signed = _signed(billsync, request)
    if signed is None:
        return _message(401, None, "Signed out", "Sign in again to act.")
    if not csrf or not hmac.compare_digest(signed.csrf, csrf):
        return _message(
            403, signed, "Refused", "This form is missing its security token: reload the page."
        )
    if not signed.can(role):
        return _message(
            403,
            signed,
            "Refused",
            "Viewers can look but not act: ask an agent."
            if role == "agent"
            else f"This needs the {role} role.",
        )
    return signed


@router.post("/accounts/{account_id}/adjustments")
async def adjust(
    request: Request,
    account_id: str,
    billsync: BillsyncDep,
    *,
    csrf: str = Form(default=""),
    kind: str = Form(default="credit"),
    amount: str = Form(default=""),
    confirm_amount: str = Form(default=""),
    description: str = Form(default=""),
    reason: str = Form(default=""),
    period: str = Form(default=""),
) -> Response:
    """A credit or a charge on the invoice of the chosen period, in the account's currency;
    the amount is typed twice."""
    allowed = _refusal(billsync, request, csrf, "agent")
    if not isinstance(allowed, Signed):
        return allowed
    if amount.strip() != confirm_amount.strip():
        return _message(
            422,
            allowed,
            "Not done",
            "the two amounts differ: type the same amount twice to confirm",
        )
    try:
        adjusted = await run_in_threadpool(
            partial(
                billsync.support.adjust,
                account_id,
                amount,
                kind=kind,
                description=description,
                actor=allowed.name,
                reason=reason,
                period=period or None,
            )
        )
    except BillsyncError as error:
        return _message(error.status_code, allowed, "Not done", error.message)
    status = "" if adjusted.period_status is None else f" ({adjusted.period_status.value})"
    said = (
        f"{adjusted.kind.title()} of {format_money(abs(adjusted.amount), adjusted.currency)} "
        f"added to the invoice of the period starting {adjusted.period_start}{status}. "
        + {
            True: "Stripe's draft shows it now.",
            False: f"Not in Stripe's draft yet ({adjusted.error}): the next sync pushes it, "
            "before the period can be finalized.",
            None: "",
        }[adjusted.pushed]
    )
    location = f"/console/accounts/{account_id}?period={adjusted.period_start}"
    return _done(request, billsync, allowed, location, said.strip())


@router.post("/accounts/{account_id}/credit_notes")
async def credit_note(
    request: Request,
    account_id: str,
    billsync: BillsyncDep,
    *,
    csrf: str = Form(default=""),
    period: str = Form(default=""),
    line: str = Form(default=""),
    amount: str = Form(default=""),
    destination: str = Form(default="credit"),
    stripe_reason: str = Form(default=""),
    memo: str = Form(default=""),
    reason: str = Form(default=""),
) -> Response:
    """A credit note on a finalized invoice (the whole invoice, or one of its lines)."""
    allowed = _refusal(billsync, request, csrf, "agent")
    if not isinstance(allowed, Signed):
        return allowed
    line_id = None
    if line.strip():
        if not WHOLE_NUMBER.fullmatch(line.strip()):
            return _message(422, allowed, "Not done", "choose a line of the invoice, or all of it")
        line_id = int(line)
    try:
        issued = await run_in_threadpool(
            partial(
                billsync.support.issue_credit_note,
                account_id,
                period,
                actor=allowed.name,
                reason=reason,
                amount=amount or None,
                line_id=line_id,
                reason_code=stripe_reason or None,
                destination=destination,
                memo=memo or None,
            )
        )
    except BillsyncError as error:
        return _message(error.status_code, allowed, "Not done", error.message)
    return _done(request, billsync, allowed, f"/console/accounts/{account_id}", issued.summary())


@router.post("/problems/{problem_id}/{action}")
async def problem_action(
    request: Request,
    problem_id: int,
    action: str,
    billsync: BillsyncDep,
    *,
    csrf: str = Form(default=""),
    reason: str = Form(default=""),
    account: str = Form(default=""),
) -> Response:
    """Act on a problem with an action that fits its kind: accept Stripe's version or re-push
    the ledger (drift); retry the payment, note the customer was contacted, or resolve it with
    a note. The form's ``account`` is the page it was sent from: a problem of another account
    is refused."""
    allowed = _refusal(billsync, request, csrf, "agent")
    if not isinstance(allowed, Signed):
        return allowed
    try:
        acted = await run_in_threadpool(
            partial(
                billsync.support.problem_action,
                problem_id,
                action,
                actor=allowed.name,
                reason=reason,
                account_id=account or None,
            )
        )
    except BillsyncError as error:
        return _message(error.status_code, allowed, "Not done", error.message)
    return _done(request, billsync, allowed, f"/console/accounts/{acted.account_id}", acted.message)


# The health page lists the first periods in review or held; at month end there can be one per
# account, which the summary above the table counts instead.
HEALTH_PERIODS = 100


def platform_view(
    settings: Settings, summary: sync_repository.PlatformSummary, now: datetime
) -> dict[str, Any]:
    """The platform's sync state for the health page: the due queue, the interval achieved
    against the configured one, and month end's shortest remaining time at Stripe's limits."""
    waited = (
        0 if summary.oldest_behind_sync is None
        else int((now - summary.oldest_behind_sync).total_seconds())
    )  # fmt: skip
    interval = settings.sync_interval_seconds
    closing = sum(summary.periods.get(s, 0) for s in ("closing", "review", "held"))
    close = capacity(
        closing, float(interval), settings.stripe_calls_per_second(),
        settings.stripe_endpoint_rate_of,
    )  # fmt: skip
    return {
        "accounts": summary.accounts,
        "active": summary.active_accounts,
        "behind": summary.behind,
        "never_synced": summary.never_synced_behind,
        "effective_interval_seconds": waited,
        "interval_seconds": interval,
        "on_time": waited <= interval,
        "periods": dict(sorted(summary.periods.items())),
        "to_finalize": closing,
        "close_seconds": int(close.close_seconds),
    }


@router.get("/health")
def health(request: Request, billsync: BillsyncDep) -> Response:
    signed = _require(billsync, request)
    if isinstance(signed, RedirectResponse):
        return signed
    now = billsync.clock.now()
    with billsync.database.read() as connection:
        numbers = sync_repository.health(connection, now)
        summary = sync_repository.platform_summary(connection)
        held = sync_repository.periods_with_status(
            connection, [PeriodStatus.REVIEW, PeriodStatus.HELD], limit=HEALTH_PERIODS + 1
        )
        open_problems = problems.open_problems(connection)
        inbox = webhook_repository.counts(connection)
    syncing = billsync.sync
    return _view(
        request, billsync, signed, "console_health.html",
        numbers=numbers,
        platform=platform_view(billsync.settings, summary, now),
        periods=held[:HEALTH_PERIODS],
        more_periods=len(held) > HEALTH_PERIODS,
        problems=open_problems,
        inbox=inbox,
        queue=syncing.scheduler.depth() if syncing else {},
        budget=syncing.guard.budget.snapshot() if syncing else None,
        breaker=syncing.guard.breaker.snapshot() if syncing else None,
    )  # fmt: skip


@router.post("/accounts/{account_id}/policy")
def set_policy(
    request: Request,
    account_id: str,
    billsync: BillsyncDep,
    *,
    csrf: str = Form(default=""),
    policy: str = Form(default=""),
    interval_seconds: str = Form(default=""),
    threshold: str = Form(default=""),
    reason: str = Form(default=""),
) -> Response:
    """Admins set an account's own sync policy (empty policy: back to the default)."""
    allowed = _refusal(billsync, request, csrf, "admin")
    if not isinstance(allowed, Signed):
        return allowed
    override: dict[str, Any] | None = None
    if policy:
        override = {"policy": policy}
        for name, text in (("interval_seconds", interval_seconds), ("threshold", threshold)):
            if text.strip():
                if not WHOLE_NUMBER.fullmatch(text.strip()):
                    return _message(422, allowed, "Not done", f"{name} must be a whole number")
                override[name] = int(text)
    try:
        billsync.support.set_policy(account_id, override, actor=allowed.name, reason=reason)
    except BillsyncError as error:
        return _message(error.status_code, allowed, "Not done", error.message)
    said = f"Sync policy set: {override}." if override else "Sync policy back to the default."
    return _done(request, billsync, allowed, f"/console/accounts/{account_id}", said)


@router.get("/users")
def users_page(request: Request, billsync: BillsyncDep) -> Response:
    signed = _require(billsync, request)
    if isinstance(signed, RedirectResponse):
        return signed
    if not signed.can("admin"):
        return _message(403, signed, "Refused", "Only admins manage users.")
    with billsync.database.read() as connection:
        everyone = console_repository.all_users(connection)
    return _view(request, billsync, signed, "console_users.html", users=everyone)


@router.post("/users")
async def add_user(
    request: Request,
    billsync: BillsyncDep,
    *,
    csrf: str = Form(default=""),
    name: str = Form(default=""),
    role: str = Form(default="viewer"),
    password: str = Form(default=""),
    reason: str = Form(default=""),
) -> Response:
    allowed = _refusal(billsync, request, csrf, "admin")
    if not isinstance(allowed, Signed):
        return allowed
    try:
        await run_in_threadpool(billsync.console.add_user, name.strip(), password, role)
    except BillsyncError as error:
        return _message(error.status_code, allowed, "Not done", error.message)
    with billsync.database.transaction() as connection:
        console_repository.record(
            connection,
            actor=allowed.name,
            action="user.add",
            now=billsync.clock.now(),
            reason=reason.strip() or None,
            detail={"user": name.strip(), "role": role},
        )
    return _done(
        request, billsync, allowed, "/console/users", f"User {name.strip()} added ({role})."
    )


@router.post("/users/{name}/disable")
def disable_user(
    request: Request,
    name: str,
    billsync: BillsyncDep,
    *,
    csrf: str = Form(default=""),
    reason: str = Form(default=""),
) -> Response:
    allowed = _refusal(billsync, request, csrf, "admin")
    if not isinstance(allowed, Signed):
        return allowed
    if name == allowed.name:
        return _message(409, allowed, "Not done", "You cannot disable yourself.")
    with billsync.database.transaction() as connection:
        console_repository.set_user(connection, name, disabled=True)
        console_repository.record(
            connection,
            actor=allowed.name,
            action="user.disable",
            now=billsync.clock.now(),
            reason=reason.strip() or None,
            detail={"user": name},
        )
    return _done(request, billsync, allowed, "/console/users", f"User {name} disabled.")
