"""The support console (``/console``): server-rendered, no build step, plain forms.

Sign-in sets an HttpOnly, SameSite=Strict session cookie; every form carries the session's
CSRF token and the server refuses a form without it. Viewers read; agents and admins act, and
every action asks for a reason and lands in the audit log.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from billsync.api.deps import BillsyncDep
from billsync.bootstrap import Billsync
from billsync.config import Settings
from billsync.core.capacity import capacity
from billsync.core.money import format_minor, to_minor_units
from billsync.core.periods import PeriodStatus
from billsync.core.policy import PolicyError, SyncPolicy
from billsync.errors import BillsyncError
from billsync.repositories import console as console_repository
from billsync.repositories import problems
from billsync.repositories import sync as sync_repository
from billsync.repositories import webhooks as webhook_repository
from billsync.services.console_auth import Signed, SignInRefused, Throttled
from billsync.services.console_views import account_view, search
from billsync.sync.budget import Lane

router = APIRouter(prefix="/console", include_in_schema=False)
TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parent.parent / "templates"),
    autoescape=select_autoescape(["html"]),
)
SESSION = "billsync_console"
LOGIN_CSRF = "billsync_console_login"
ACTIONS = {"sync", "hold", "release", "approve"}


def _page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(TEMPLATES.get_template(name).render(**context), status_code=status)


def _message(status: int, user: Signed | None, title: str, message: str) -> HTMLResponse:
    """The console's one-message page: a refusal, or why an action was not done."""
    return _page("console_message.html", status, user=user, title=title, message=message)


def _signed(billsync: Billsync, request: Request) -> Signed | None:
    return billsync.console.session(request.cookies.get(SESSION))


def _dashboard(billsync: Billsync, path: str) -> str:
    live = (billsync.settings.stripe_api_key or "").startswith(("sk_live_", "rk_live_"))
    return f"https://dashboard.stripe.com/{'' if live else 'test/'}{path}"


@router.get("/login")
def login_form(request: Request) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = _page("console_login.html", csrf=token, error=None)
    response.set_cookie(LOGIN_CSRF, token, httponly=True, samesite="strict", path="/console")
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
    client = request.client.host if request.client else "unknown"
    try:
        token, _ = await run_in_threadpool(billsync.console.sign_in, name, password, client)
    except (SignInRefused, Throttled) as refusal:
        return _page(
            "console_login.html", refusal.status_code, csrf=expected, error=refusal.message
        )
    response = RedirectResponse("/console", status_code=303)
    response.set_cookie(
        SESSION,
        token,
        httponly=True,
        samesite="strict",
        path="/console",
        secure=request.url.scheme == "https",
    )
    response.delete_cookie(LOGIN_CSRF, path="/console")
    return response


def _require(billsync: Billsync, request: Request) -> Signed | RedirectResponse:
    signed = _signed(billsync, request)
    return RedirectResponse("/console/login", status_code=303) if signed is None else signed


@router.post("/logout")
def logout(request: Request, billsync: BillsyncDep, csrf: str = Form(default="")) -> Response:
    signed = _signed(billsync, request)
    if signed is not None and hmac.compare_digest(signed.csrf, csrf):
        billsync.console.sign_out(signed)
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(SESSION, path="/console")
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
    return _page(
        "console_home.html",
        user=signed,
        q=q,
        results=results,
        trail=trail,
        problems=open_problems[:50],
    )


@router.get("/accounts/{account_id}")
def account(request: Request, account_id: str, billsync: BillsyncDep) -> Response:
    signed = _require(billsync, request)
    if isinstance(signed, RedirectResponse):
        return signed
    with billsync.database.read() as connection:
        view = account_view(connection, account_id)
    if view is None:
        return _message(404, signed, "No such account", f"There is no account {account_id!r}.")

    def money(amount: int | None) -> str:
        return "—" if amount is None else format_minor(amount, view.account.currency)

    return _page(
        "console_account.html",
        user=signed,
        view=view,
        money=money,
        dashboard=lambda path: _dashboard(billsync, path),
    )


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
    signed = allowed
    if action not in ACTIONS:
        return _message(404, signed, "Unknown action", f"There is no action {action!r}.")
    if not reason.strip():
        return _message(
            422, signed, "A reason is needed", "Every action needs a reason, for the audit log."
        )
    try:
        await run_in_threadpool(
            partial(_perform, action=action, period=period, reason=reason),
            billsync,
            signed,
            account_id,
        )
    except BillsyncError as error:
        return _message(error.status_code, signed, "Not done", error.message)
    except ValueError as error:
        return _message(422, signed, "Not done", str(error))
    return RedirectResponse(f"/console/accounts/{account_id}", status_code=303)


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
) -> Response:
    """A credit or a charge, in the account's currency; the amount is typed twice."""
    allowed = _refusal(billsync, request, csrf, "agent")
    if not isinstance(allowed, Signed):
        return allowed
    problem = None
    try:
        value = Decimal(amount.strip())
    except InvalidOperation:
        value = Decimal(0)
        problem = f"{amount!r} is not an amount"
    if problem is None and amount.strip() != confirm_amount.strip():
        problem = "the two amounts differ: type the same amount twice to confirm"
    if problem is None and (
        not value.is_finite() or value <= 0 or kind not in ("credit", "charge")
    ):
        problem = "enter a positive amount and choose credit or charge"
    if problem is None and not reason.strip():
        problem = "every adjustment needs a reason, for the audit log"
    if problem is not None:
        return _message(422, allowed, "Not done", problem)
    with billsync.database.read() as connection:
        account = billsync.accounts.get(connection, account_id)
    minor = to_minor_units(value, account.currency) * (-1 if kind == "credit" else 1)
    try:
        await run_in_threadpool(
            partial(
                billsync.adjustments.add,
                account_id,
                amount=minor,
                description=description,
                actor=allowed.name,
                reason=reason.strip(),
            )
        )
    except BillsyncError as error:
        return _message(error.status_code, allowed, "Not done", error.message)
    return RedirectResponse(f"/console/accounts/{account_id}", status_code=303)


@router.post("/problems/{problem_id}/{decision}")
async def decide(
    request: Request,
    problem_id: int,
    decision: str,
    billsync: BillsyncDep,
    *,
    csrf: str = Form(default=""),
    reason: str = Form(default=""),
    account: str = Form(default=""),
) -> Response:
    """Resolve a drift item: accept Stripe's version, or re-push the ledger."""
    allowed = _refusal(billsync, request, csrf, "agent")
    if not isinstance(allowed, Signed):
        return allowed
    syncing = billsync.sync
    if decision not in ("accept", "repush") or syncing is None or syncing.reconciler is None:
        return _message(404, allowed, "Not available", "No such decision here.")
    if not reason.strip():
        return _message(
            422, allowed, "A reason is needed", "Every decision needs a reason, for the audit log."
        )
    reconciler = syncing.reconciler
    call = reconciler.accept_stripe if decision == "accept" else reconciler.repush_ledger
    try:
        outcome = await run_in_threadpool(call, problem_id)
    except BillsyncError as error:
        return _message(error.status_code, allowed, "Not done", error.message)
    with billsync.database.transaction() as connection:
        console_repository.record(
            connection,
            actor=allowed.name,
            action=f"drift.{decision}",
            now=billsync.clock.now(),
            account_id=account or None,
            reason=reason.strip(),
            detail={"problem": problem_id, "resolved": outcome.resolved, "error": outcome.error},
        )
    return RedirectResponse(
        f"/console/accounts/{account}" if account else "/console", status_code=303
    )


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
    return _page(
        "console_health.html",
        user=signed,
        numbers=numbers,
        platform=platform_view(billsync.settings, summary, now),
        periods=held[:HEALTH_PERIODS],
        more_periods=len(held) > HEALTH_PERIODS,
        problems=open_problems,
        inbox=inbox,
        queue=syncing.scheduler.depth() if syncing else {},
        budget=syncing.guard.budget.snapshot() if syncing else None,
        breaker=syncing.guard.breaker.snapshot() if syncing else None,
    )


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
                if not text.strip().isdigit():
                    return _message(422, allowed, "Not done", f"{name} must be a whole number")
                override[name] = int(text)
        try:
            SyncPolicy().merged(override)
        except PolicyError as error:
            return _message(422, allowed, "Not done", str(error))
    with billsync.database.transaction() as connection:
        billsync.accounts.get(connection, account_id)
        console_repository.set_sync_policy(connection, account_id, override)
        console_repository.record(
            connection,
            actor=allowed.name,
            action="account.sync_policy",
            now=billsync.clock.now(),
            account_id=account_id,
            reason=reason.strip() or None,
            detail={"sync_policy": override},
        )
    return RedirectResponse(f"/console/accounts/{account_id}", status_code=303)


@router.get("/users")
def users_page(request: Request, billsync: BillsyncDep) -> Response:
    signed = _require(billsync, request)
    if isinstance(signed, RedirectResponse):
        return signed
    if not signed.can("admin"):
        return _message(403, signed, "Refused", "Only admins manage users.")
    with billsync.database.read() as connection:
        everyone = console_repository.all_users(connection)
    return _page("console_users.html", user=signed, users=everyone)


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
    return RedirectResponse("/console/users", status_code=303)


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
    return RedirectResponse("/console/users", status_code=303)


def _perform(
    billsync: Billsync, signed: Signed, account_id: str, *, action: str, period: str, reason: str
) -> str:
    syncing = billsync.sync
    if syncing is None:
        raise BillsyncError("billsync has no Stripe key: nothing to act on", code="no_stripe")
    start = date.fromisoformat(period) if period and action != "sync" else None
    detail: dict[str, Any] = {}
    if action == "sync":
        outcome = syncing.service.sync_account(account_id, lane=Lane.ON_DEMAND)
        detail = {"calls": outcome.calls, "error": outcome.error}
    else:
        if start is None:
            raise ValueError("choose the period to act on")
        if action == "hold":
            syncing.lifecycle.hold(account_id, start)
        elif action == "release":
            syncing.lifecycle.release(account_id, start)
        else:
            detail = {"finalized": syncing.lifecycle.approve_now(account_id, start)}
    with billsync.database.transaction() as connection:
        console_repository.record(
            connection,
            actor=signed.name,
            action=f"period.{action}" if start else f"account.{action}",
            now=billsync.clock.now(),
            account_id=account_id,
            period_start=start,
            reason=reason.strip(),
            detail=detail,
        )
    return action
