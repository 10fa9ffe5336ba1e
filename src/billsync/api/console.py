"""The support console (``/console``): server-rendered, no build step, plain forms.

Sign-in sets an HttpOnly, SameSite=Strict session cookie; every form carries the session's
CSRF token and the server refuses a form without it. Viewers read (the forms they cannot use are
not shown to them); agents and admins act, every action asks for a reason, lands in the audit log
and says what it did on the page it returns to. Times are shown in the viewer's time zone
(``api.console_display``). The pages are here; the forms support acts with are
``api.console_actions``; what both share is ``api.console_web``.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from datetime import datetime
from typing import Any

from fastapi import Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from billsync.api import console_actions  # noqa: F401 - its routes are on the router
from billsync.api import console_web as web
from billsync.api.console_display import TIME_ZONE, known_zone
from billsync.api.deps import BillsyncDep
from billsync.api.web_security import root, secure_cookies, url
from billsync.config import Settings
from billsync.core.capacity import capacity
from billsync.core.commitment import commitment_on
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

router = web.router  # with the forms support acts with (api.console_actions)
LOGIN_CSRF = "billsync_console_login"


@router.get("/login")
def login_form(request: Request, billsync: BillsyncDep) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = web.page("console_login.html", csrf=token, error=None)
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
        return web.page(
            "console_login.html", 403, csrf=expected, error="The form expired: try again."
        )
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
        return web.page("console_login.html", 401, csrf=expected, error=refusal.message)
    except Throttled as refusal:
        page = web.page("console_login.html", 429, csrf=expected, error=refusal.message)
        page.headers["Retry-After"] = str(refusal.retry_after)
        return page
    response = RedirectResponse(url("/console"), status_code=303)
    response.set_cookie(
        web.SESSION,
        token,
        httponly=True,
        samesite="strict",
        path=url("/console"),
        secure=secure_cookies(billsync.settings, request),
    )
    response.delete_cookie(LOGIN_CSRF, path=url("/console"))
    return response


@router.post("/logout")
def logout(request: Request, billsync: BillsyncDep, csrf: str = Form(default="")) -> Response:
    signed = web.signed_in(billsync, request)
    if signed is not None and hmac.compare_digest(signed.csrf, csrf):
        billsync.console.sign_out(signed)
    response = RedirectResponse(url("/console/login"), status_code=303)
    response.delete_cookie(web.SESSION, path=url("/console"))
    return response


@router.get("")
def home(request: Request, billsync: BillsyncDep, q: str = "") -> Response:
    signed = web.require(billsync, request)
    if isinstance(signed, RedirectResponse):
        return signed
    with billsync.database.read() as connection:
        results = search(connection, q) if q else []
        trail = console_repository.trail(connection, limit=20)
        open_problems = problems.open_problems(connection)
    return web.view(
        request, billsync, signed, "console_home.html",
        q=q, results=results, trail=trail, problems=open_problems[:50],
    )  # fmt: skip


@router.get("/accounts/{account_id}")
def account(request: Request, account_id: str, billsync: BillsyncDep, period: str = "") -> Response:
    """Everything about one account; ``period``: the period being looked at (the credit and
    charge form targets it)."""
    signed = web.require(billsync, request)
    if isinstance(signed, RedirectResponse):
        return signed
    now = billsync.clock.now()
    with billsync.database.read() as connection:
        view = account_view(connection, account_id, billsync.catalog, now)
    if view is None:
        return web.message(404, signed, "No such account", f"There is no account {account_id!r}.")
    currency = view.account.currency
    # The period starts a change of terms can take effect from: the current one, the next.
    current = view.account.schedule(billsync.settings.billing_anchor_day).period_for_date(
        now.date()
    )

    def money(amount: int | None) -> str:
        return "—" if amount is None else format_money(amount, currency)

    adjustable = [p.start.isoformat() for p in view.adjustable]
    return web.view(
        request, billsync, signed, "console_account.html",
        view=view, money=money, dashboard=lambda path: web.dashboard(billsync, path),
        target=period if period in adjustable else (adjustable[0] if adjustable else ""),
        problem_actions=problem_actions, action_labels=PROBLEM_ACTIONS,
        reasons=REASONS, destinations=DESTINATIONS,
        describe=lambda entry: describe_entry(entry, currency),
        now=now, term_starts=[current.start, current.end],
        minimum_now=commitment_on(view.account.commitments, current.start),
    )  # fmt: skip


@router.get("/timezone")
def time_zone(request: Request, billsync: BillsyncDep, tz: str = "", next: str = "") -> Response:
    """The viewer's time zone for every time the console shows (kept in a cookie), then back
    to the page they were on."""
    signed = web.require(billsync, request)
    if isinstance(signed, RedirectResponse):
        return signed
    name = tz.strip()
    if not known_zone(name):
        return web.message(
            422, signed, "Unknown time zone",
            f"{name!r} is not a time zone name: use one like Europe/Paris or America/New_York.",
        )  # fmt: skip
    console = url("/console")
    back = next if next.startswith(console) and not next.startswith("//") else console
    response = web.done(
        request, billsync, signed, back.removeprefix(root()), f"Times are now in {name}."
    )
    response.set_cookie(
        TIME_ZONE, name, max_age=365 * 86400, httponly=True, samesite="strict", path=console,
        secure=secure_cookies(billsync.settings, request),
    )  # fmt: skip
    return response


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
    signed = web.require(billsync, request)
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
    return web.view(
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


@router.get("/users")
def users_page(request: Request, billsync: BillsyncDep) -> Response:
    signed = web.require(billsync, request)
    if isinstance(signed, RedirectResponse):
        return signed
    if not signed.can("admin"):
        return web.message(403, signed, "Refused", "Only admins manage users.")
    with billsync.database.read() as connection:
        everyone = console_repository.all_users(connection)
    return web.view(request, billsync, signed, "console_users.html", users=everyone)


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
    allowed = web.refusal(billsync, request, csrf, "admin")
    if not isinstance(allowed, Signed):
        return allowed
    try:
        await run_in_threadpool(billsync.console.add_user, name.strip(), password, role)
    except BillsyncError as error:
        return web.message(error.status_code, allowed, "Not done", error.message)
    with billsync.database.transaction() as connection:
        console_repository.record(
            connection,
            actor=allowed.name,
            action="user.add",
            now=billsync.clock.now(),
            reason=reason.strip() or None,
            detail={"user": name.strip(), "role": role},
        )
    return web.done(
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
    allowed = web.refusal(billsync, request, csrf, "admin")
    if not isinstance(allowed, Signed):
        return allowed
    if name == allowed.name:
        return web.message(409, allowed, "Not done", "You cannot disable yourself.")
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
    return web.done(request, billsync, allowed, "/console/users", f"User {name} disabled.")
