"""What every support action checks before acting: who acts and why, the period named, and that
billsync can reach Stripe. One set of checks for the console, ``billsync support`` and the API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any, TypeVar

from billsync.core.request_keys import InvalidKey, RequestKey, request_key
from billsync.core.text import unsafe_character, unsafe_message
from billsync.errors import BillsyncError, InvalidRequest

# The audit log's columns.
ACTOR_LIMIT = 100
REASON_LIMIT = 2000

T = TypeVar("T")


class StripeNotConfigured(BillsyncError):
    status_code = 503
    code = "stripe_not_configured"


@dataclass(frozen=True, slots=True)
class Who:
    """Who acts and why: checked once, written to the audit entry."""

    actor: str
    reason: str
    # The client's key for this request (the console form's one-time submission): the action
    # is carried out once however often the form is sent (billsync.core.request_keys).
    request: RequestKey | None = None


def checked_text(name: str, value: str, limit: int) -> str:
    """A person's text for the audit log or an invoice: stripped, not empty, at most ``limit``
    characters, and none of the characters no text in billsync may hold (``core.text``)."""
    text = value.strip()
    if not text:
        raise InvalidRequest(f"the {name} is needed", code=f"{name}_required")
    if len(text) > limit:
        raise InvalidRequest(f"the {name} is at most {limit} characters", code=f"invalid_{name}")
    unsafe = unsafe_character(text)
    if unsafe is not None:
        raise InvalidRequest(unsafe_message(f"the {name}", unsafe), code=f"invalid_{name}")
    return text


def checked_who(
    actor: str,
    reason: str,
    *,
    submission: str | None = None,
    action: str = "",
    parameters: dict[str, Any] | None = None,
) -> Who:
    """Every action needs who acts and why; ``submission`` is the client's key for this
    ``action`` with these ``parameters``, if it sent one."""
    if not reason.strip():
        raise InvalidRequest(
            "every action needs a reason, for the audit log", code="reason_required"
        )
    return Who(
        checked_text("actor", actor, ACTOR_LIMIT),
        checked_text("reason", reason, REASON_LIMIT),
        checked_request(submission, action, {"reason": reason, **(parameters or {})}),
    )


def checked_request(key: str | None, what: str, parameters: dict[str, Any]) -> RequestKey | None:
    """The client's key for a request (billsync.core.request_keys), or a 422 that says what a
    key may be."""
    try:
        return request_key(key, what, parameters)
    except InvalidKey as error:
        raise InvalidRequest(str(error), code="invalid_idempotency_key") from None


def period_start(period: str | date | None) -> date:
    """The start of the period an action is about: a date, or its ISO form (YYYY-MM-DD)."""
    if isinstance(period, date):
        return period
    text = (period or "").strip()
    if not text:
        raise InvalidRequest(
            "choose the period to act on (its start date, YYYY-MM-DD)", code="period_required"
        )
    try:
        if not text.isascii():
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(
            f"the period is its start date, YYYY-MM-DD, not {text!r}", code="invalid_period"
        ) from None


def configured(part: T | None) -> T:
    """The part of billsync that talks to Stripe, or the refusal to act without it."""
    if part is None:
        raise StripeNotConfigured(
            "billsync has no Stripe key (BILLSYNC_STRIPE_API_KEY): nothing to act on"
        )
    return part
