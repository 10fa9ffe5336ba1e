"""The forms support acts with in the console: period actions, credits and charges, credit notes,
actions on problems, an account's sync policy. Each needs the session's CSRF token and the
role it asks for, goes through the support-actions service (``services.support``: checked,
done and audited once), and returns to the account's page saying what it did."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time
from functools import partial
from typing import Any

from fastapi import Form, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from billsync.api import console_web as web
from billsync.api.deps import BillsyncDep
from billsync.core.commitment import commitment_on
from billsync.core.display import format_money
from billsync.errors import BillsyncError, InvalidRequest
from billsync.services.accounts import AccountChanges
from billsync.services.console_auth import Signed
from billsync.services.support_checks import checked_who, period_start

router = web.router
WHOLE_NUMBER = re.compile(r"[0-9]{1,12}")  # a policy's seconds or minor units, in ASCII digits


def unconfirmed(signed: Signed, amount: str, confirm: str) -> Response | None:
    """The refusal of an amount typed twice differently (forms that move money ask twice)."""
    if amount.strip() == confirm.strip():
        return None
    return web.message(
        422, signed, "Not done", "the two amounts differ: type the same amount twice to confirm"
    )


@router.post("/accounts/{account_id}/actions/{action}")
async def act(
    request: Request,
    account_id: str,
    action: str,
    billsync: BillsyncDep,
    *,
    csrf: str = Form(default=""),
    submission: str = Form(default=""),
    reason: str = Form(default=""),
    period: str = Form(default=""),
) -> Response:
    allowed = web.refusal(billsync, request, csrf, "agent")
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
                submission=submission or None,
                period=period or None,
            )
        )
    except BillsyncError as error:
        return web.not_done(request, billsync, allowed, error, f"/console/accounts/{account_id}")
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
    return web.done(request, billsync, allowed, f"/console/accounts/{account_id}", said)


@router.post("/accounts/{account_id}/adjustments")
async def adjust(
    request: Request,
    account_id: str,
    billsync: BillsyncDep,
    *,
    csrf: str = Form(default=""),
    submission: str = Form(default=""),
    kind: str = Form(default="credit"),
    amount: str = Form(default=""),
    confirm_amount: str = Form(default=""),
    description: str = Form(default=""),
    reason: str = Form(default=""),
    period: str = Form(default=""),
) -> Response:
    """A credit or a charge on the invoice of the chosen period, in the account's currency;
    the amount is typed twice."""
    allowed = web.refusal(billsync, request, csrf, "agent")
    if not isinstance(allowed, Signed):
        return allowed
    if (differ := unconfirmed(allowed, amount, confirm_amount)) is not None:
        return differ
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
                submission=submission or None,
                period=period or None,
            )
        )
    except BillsyncError as error:
        return web.not_done(request, billsync, allowed, error, f"/console/accounts/{account_id}")
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
    return web.done(request, billsync, allowed, location, said.strip())


@router.post("/accounts/{account_id}/credit_notes")
async def credit_note(
    request: Request,
    account_id: str,
    billsync: BillsyncDep,
    *,
    csrf: str = Form(default=""),
    submission: str = Form(default=""),
    period: str = Form(default=""),
    line: str = Form(default=""),
    amount: str = Form(default=""),
    destination: str = Form(default="credit"),
    stripe_reason: str = Form(default=""),
    memo: str = Form(default=""),
    reason: str = Form(default=""),
) -> Response:
    """A credit note on a finalized invoice (the whole invoice, or one of its lines)."""
    allowed = web.refusal(billsync, request, csrf, "agent")
    if not isinstance(allowed, Signed):
        return allowed
    line_id = None
    if line.strip():
        if not WHOLE_NUMBER.fullmatch(line.strip()):
            return web.message(
                422, allowed, "Not done", "choose a line of the invoice, or all of it"
            )
        line_id = int(line)
    try:
        issued = await run_in_threadpool(
            partial(
                billsync.support.issue_credit_note,
                account_id,
                period,
                actor=allowed.name,
                reason=reason,
                submission=submission or None,
                amount=amount or None,
                line_id=line_id,
                reason_code=stripe_reason or None,
                destination=destination,
                memo=memo or None,
            )
        )
    except BillsyncError as error:
        return web.not_done(request, billsync, allowed, error, f"/console/accounts/{account_id}")
    return web.done(request, billsync, allowed, f"/console/accounts/{account_id}", issued.summary())


@router.post("/problems/{problem_id}/{action}")
async def problem_action(
    request: Request,
    problem_id: int,
    action: str,
    billsync: BillsyncDep,
    *,
    csrf: str = Form(default=""),
    submission: str = Form(default=""),
    reason: str = Form(default=""),
    account: str = Form(default=""),
) -> Response:
    """Act on a problem with an action that fits its kind: accept Stripe's version or re-push
    the ledger (drift); retry the payment, note the customer was contacted, or resolve it with
    a note. The form's ``account`` is the page it was sent from: a problem of another account
    is refused."""
    allowed = web.refusal(billsync, request, csrf, "agent")
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
                submission=submission or None,
                account_id=account or None,
            )
        )
    except BillsyncError as error:
        return web.not_done(request, billsync, allowed, error, "/console")
    return web.done(
        request, billsync, allowed, f"/console/accounts/{acted.account_id}", acted.message
    )


@router.post("/accounts/{account_id}/policy")
def set_policy(
    request: Request,
    account_id: str,
    billsync: BillsyncDep,
    *,
    csrf: str = Form(default=""),
    submission: str = Form(default=""),
    policy: str = Form(default=""),
    interval_seconds: str = Form(default=""),
    threshold: str = Form(default=""),
    reason: str = Form(default=""),
) -> Response:
    """Admins set an account's own sync policy (empty policy: back to the default)."""
    allowed = web.refusal(billsync, request, csrf, "admin")
    if not isinstance(allowed, Signed):
        return allowed
    override: dict[str, Any] | None = None
    if policy:
        override = {"policy": policy}
        for name, text in (("interval_seconds", interval_seconds), ("threshold", threshold)):
            if text.strip():
                if not WHOLE_NUMBER.fullmatch(text.strip()):
                    return web.message(422, allowed, "Not done", f"{name} must be a whole number")
                override[name] = int(text)
    try:
        billsync.support.set_policy(
            account_id, override, actor=allowed.name, reason=reason,
            submission=submission or None,
        )  # fmt: skip
    except BillsyncError as error:
        return web.not_done(request, billsync, allowed, error, f"/console/accounts/{account_id}")
    said = f"Sync policy set: {override}." if override else "Sync policy back to the default."
    return web.done(request, billsync, allowed, f"/console/accounts/{account_id}", said)


@router.post("/accounts/{account_id}/commitment")
def set_commitment(
    request: Request,
    account_id: str,
    billsync: BillsyncDep,
    *,
    csrf: str = Form(default=""),
    submission: str = Form(default=""),
    amount: str = Form(default=""),
    effective_from: str = Form(default=""),
    reason: str = Form(default=""),
) -> Response:
    """Admins set the account's minimum per period (empty: none) from the current or the next
    period on, as ``PATCH /v1/accounts/{id}`` does (audited as ``account.update``; a form sent
    again after it changed the minimum changes nothing, even if someone set another since)."""
    allowed = web.refusal(billsync, request, csrf, "admin")
    if not isinstance(allowed, Signed):
        return allowed
    location = f"/console/accounts/{account_id}"
    try:
        who = checked_who(
            allowed.name, reason, submission=submission or None, action="commitment",
            parameters={"account": account_id, "amount": amount, "from": effective_from},
        )  # fmt: skip
        start = period_start(effective_from) if effective_from.strip() else None
        changes = AccountChanges(minimum_amount=amount.strip() or None, minimum_amount_from=start)
        with billsync.database.transaction() as connection:
            account = billsync.accounts.update(
                connection, account_id, changes, actor=who.actor, reason=who.reason,
                default_anchor_day=billsync.settings.billing_anchor_day, request=who.request,
            )  # fmt: skip
    except BillsyncError as error:
        return web.not_done(request, billsync, allowed, error, location)
    billsync.bill_cache.forget(frozenset({account_id}))
    set_from = (
        start
        or account.schedule(billsync.settings.billing_anchor_day)
        .period_for_date(billsync.clock.now().date())
        .start
    )
    minimum = commitment_on(account.commitments, set_from)
    said = f"Minimum commitment from the period starting {set_from}: " + (
        "none." if minimum is None else f"{format_money(minimum, account.currency)} a period."
    )
    return web.done(request, billsync, allowed, location, said)


@router.post("/accounts/{account_id}/credit_grants")
def grant_credit(
    request: Request,
    account_id: str,
    billsync: BillsyncDep,
    *,
    csrf: str = Form(default=""),
    submission: str = Form(default=""),
    amount: str = Form(default=""),
    confirm_amount: str = Form(default=""),
    expires_on: str = Form(default=""),
    reason: str = Form(default=""),
) -> Response:
    """Admins grant prepaid credit, as ``POST /v1/accounts/{id}/credit-grants`` does (audited as
    ``credit_grant.created``); the amount is typed twice, and the form's one-time key grants it
    once however often the form is sent. It expires at 00:00 UTC of the day given."""
    allowed = web.refusal(billsync, request, csrf, "admin")
    if not isinstance(allowed, Signed):
        return allowed
    location = f"/console/accounts/{account_id}"
    if (differ := unconfirmed(allowed, amount, confirm_amount)) is not None:
        return differ
    try:
        who = checked_who(
            allowed.name, reason, submission=submission or None, action="credit_grant",
            parameters={"account": account_id, "amount": amount, "expires_on": expires_on},
        )  # fmt: skip
        try:
            expires_at = datetime.combine(date.fromisoformat(expires_on.strip()), time.min, UTC)
        except ValueError:
            raise InvalidRequest(
                f"the expiry is a day, YYYY-MM-DD, not {expires_on.strip()!r}",
                code="invalid_expiry",
            ) from None
        with billsync.database.transaction() as connection:
            account = billsync.accounts.get(connection, account_id)
            grant = billsync.credits.grant(
                connection, account_id, amount=amount.strip(), currency=account.currency,
                expires_at=expires_at, reason=who.reason, actor=who.actor, request=who.request,
            )  # fmt: skip
    except BillsyncError as error:
        return web.not_done(request, billsync, allowed, error, location)
    if billsync.ingest.changes is not None:
        billsync.ingest.changes.accounts_changed({account_id})
    said = (
        f"Prepaid credit of {format_money(grant.amount, grant.currency)} granted, expiring "
        f"{grant.expires_at:%Y-%m-%d %H:%M} UTC: each period's close draws on it."
    )
    return web.done(request, billsync, allowed, location, said)
