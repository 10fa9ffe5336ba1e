"""Support actions: what a person does to an account's billing — sync it now, hold, release or
approve a period, add a credit or a charge, decide on drift, set its sync policy — each checked,
done and audited here, once.

The console, ``billsync support`` and any API route call this service, so an action has one set
of checks and one audit entry whoever asks. This service owns the transactions, because some
actions call Stripe (STYLE.md, convention 3):

- An action and its audit entry commit in one transaction: the entry is written in the
  transaction that takes the decision, so a refused or failed decision leaves no entry and no
  decision goes unaudited.
- Actions that call Stripe (sync, approve, re-push the ledger) commit the decision with its
  entry first, call Stripe with no transaction open, then settle what Stripe answered onto the
  same entry (``detail.outcome``). An entry without an outcome is a decision whose Stripe call
  did not come back.
- The account an entry names is the one the action was taken on: a drift decision is audited
  under its problem's account, never under one the caller names.

Refusals are BillsyncErrors a person can act on: 404 for an unknown action or a missing account,
period or problem; 422 for what the caller must fix (no reason, a bad period or amount); 409 when
the period or problem does not allow the action now; 503 when billsync has no Stripe key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, TypeVar

from sqlalchemy import Connection

from billsync.clock import Clock
from billsync.core.money import AmountError, parse_amount
from billsync.core.policy import PolicyError, SyncPolicy
from billsync.core.text import unsafe_character, unsafe_message
from billsync.db.database import Database
from billsync.errors import BillsyncError, InvalidRequest, NotFound
from billsync.repositories import console as console_repository
from billsync.repositories.accounts import AccountRecord, get_account
from billsync.services.adjustments import Adjustments
from billsync.services.lifecycle import LifecycleService
from billsync.services.reconcile import Decision, Reconciler
from billsync.services.sync import SyncService
from billsync.sync.budget import Lane

ACTIONS = ("sync", "hold", "release", "approve")
DECISIONS = ("accept", "repush")
KINDS = ("credit", "charge")
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


@dataclass(frozen=True, slots=True)
class Done:
    """An action taken, as its audit entry records it; ``outcome`` is what Stripe answered, for
    the actions that call it."""

    action: str
    account_id: str
    period_start: date | None
    outcome: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Adjusted:
    account_id: str
    line_id: int
    amount: int  # minor units: negative for a credit


@dataclass(frozen=True, slots=True)
class Decided:
    """A drift decision taken on the problem's own account and period."""

    account_id: str
    period_start: date
    decision: Decision


class SupportActions:
    def __init__(
        self,
        database: Database,
        clock: Clock,
        adjustments: Adjustments,
        *,
        sync: SyncService | None = None,
        lifecycle: LifecycleService | None = None,
        reconciler: Reconciler | None = None,
    ) -> None:
        self.database = database
        self.clock = clock
        self.adjustments = adjustments
        self.sync = sync
        self.lifecycle = lifecycle
        self.reconciler = reconciler

    # --- account and period actions -------------------------------------------------------

    def act(
        self,
        action: str,
        account_id: str,
        *,
        actor: str,
        reason: str,
        period: str | date | None = None,
    ) -> Done:
        """``sync`` the account now, or ``hold``, ``release`` or ``approve`` (finalize now) its
        period starting ``period`` (YYYY-MM-DD)."""
        if action not in ACTIONS:
            raise NotFound(
                f"there is no action {action!r} (one of {', '.join(ACTIONS)})",
                code="unknown_action",
            )
        who = checked_who(actor, reason)
        if action == "sync":
            return self._sync(account_id, who)
        lifecycle = _configured(self.lifecycle)
        start = period_start(period)
        step = {
            "hold": lifecycle.hold_period,
            "release": lifecycle.release_period,
            "approve": lifecycle.approve_period,
        }[action]
        now = self.clock.now()
        with self.database.transaction() as connection:
            step(connection, account_id, start, now)
            entry = self._audit(connection, now, who, f"period.{action}", account_id, start=start)
        if action != "approve":
            return Done(f"period.{action}", account_id, start)
        outcome = {"finalized": lifecycle.finalize_approved(account_id, start)}
        self._settle(entry, outcome)
        return Done("period.approve", account_id, start, outcome)

    def _sync(self, account_id: str, who: Who) -> Done:
        sync = _configured(self.sync)
        with self.database.transaction() as connection:
            _account(connection, account_id)
            entry = self._audit(connection, self.clock.now(), who, "account.sync", account_id)
        result = sync.sync_account(account_id, lane=Lane.ON_DEMAND)
        outcome = {"calls": result.calls, "error": result.error}
        self._settle(entry, outcome)
        return Done("account.sync", account_id, None, outcome)

    def adjust(
        self,
        account_id: str,
        amount: str,
        *,
        description: str,
        actor: str,
        reason: str,
        kind: str | None = None,
    ) -> Adjusted:
        """A credit or a charge on the account's current invoice. ``amount`` is typed in the
        account's currency and must be exact in its minor unit (nothing is rounded): with
        ``kind`` ('credit' or 'charge') a positive amount, without it a signed one (negative:
        a credit). The line and its audit entry commit together (``Adjustments.add``)."""
        who = checked_who(actor, reason)
        if kind is not None and kind not in KINDS:
            raise InvalidRequest("choose credit or charge", code="invalid_kind")
        description = checked_text("description", description, 200)
        with self.database.read() as connection:
            account = _account(connection, account_id)
        try:
            minor = parse_amount(amount, account.currency)
        except AmountError as error:
            raise InvalidRequest(str(error), code="invalid_amount") from None
        if kind is not None:
            if minor <= 0:
                raise InvalidRequest(
                    f"enter a positive amount, not {amount.strip()!r}: the {kind} says which way",
                    code="invalid_amount",
                )
            minor = -minor if kind == "credit" else minor
        line_id = self.adjustments.add(
            account_id, amount=minor, description=description, actor=who.actor, reason=who.reason
        )
        return Adjusted(account_id, line_id, minor)

    def set_policy(
        self, account_id: str, override: dict[str, Any] | None, *, actor: str, reason: str
    ) -> Done:
        """The account's own sync policy (``{"policy", "interval_seconds", "threshold"}``), or
        back to the default with ``None``."""
        who = checked_who(actor, reason)
        if override is not None:
            try:
                SyncPolicy().merged(override)
            except PolicyError as error:
                raise InvalidRequest(str(error), code="invalid_policy") from None
        with self.database.transaction() as connection:
            _account(connection, account_id)
            console_repository.set_sync_policy(connection, account_id, override)
            self._audit(
                connection, self.clock.now(), who, "account.sync_policy", account_id,
                detail={"sync_policy": override},
            )  # fmt: skip
        return Done("account.sync_policy", account_id, None)

    # --- drift --------------------------------------------------------------------------

    def decide(
        self,
        problem_id: int,
        decision: str,
        *,
        actor: str,
        reason: str,
        account_id: str | None = None,
    ) -> Decided:
        """``accept`` Stripe's version of a drift problem, or ``repush`` the ledger. The
        decision is audited under the problem's account and period; a caller that names an
        account (the console's form) is refused if the problem is about another one."""
        if decision not in DECISIONS:
            raise NotFound(
                f"there is no decision {decision!r} (one of {', '.join(DECISIONS)})",
                code="unknown_decision",
            )
        who = checked_who(actor, reason)
        reconciler = _configured(self.reconciler)
        now = self.clock.now()
        with self.database.transaction() as connection:
            problem = reconciler.open_problem(connection, problem_id)
            assert problem.account_id is not None
            assert problem.period_start is not None
            if account_id is not None and account_id != problem.account_id:
                raise InvalidRequest(
                    f"problem {problem_id} is about account {problem.account_id!r}, not "
                    f"{account_id!r}: decide it from its own account's page",
                    code="problem_account_mismatch",
                )
            detail: dict[str, Any] = {"problem": problem.id, "kind": problem.kind}
            if decision == "accept":
                accepted = reconciler.accept(connection, problem, now)
                detail |= {"resolved": accepted.resolved, "resolution": accepted.resolution}
            else:
                repush = reconciler.repush(connection, problem, now)
            entry = self._audit(
                connection, now, who, f"drift.{decision}", problem.account_id,
                start=problem.period_start, detail=detail,
            )  # fmt: skip
        if decision == "accept":
            return Decided(problem.account_id, problem.period_start, accepted)
        repushed = reconciler.carry_out(repush)
        self._settle(entry, {"resolved": repushed.resolved, "error": repushed.error})
        return Decided(problem.account_id, problem.period_start, repushed)

    # --- the audit entry ----------------------------------------------------------------

    def _audit(
        self,
        connection: Connection,
        now: datetime,
        who: Who,
        action: str,
        account_id: str,
        *,
        start: date | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int:
        return console_repository.record(
            connection, actor=who.actor, action=action, now=now,
            account_id=account_id, period_start=start, reason=who.reason, detail=detail,
        )  # fmt: skip

    def _settle(self, entry: int, outcome: dict[str, Any]) -> None:
        with self.database.transaction() as connection:
            console_repository.settle(connection, entry, outcome)


# --- checks every action shares ---------------------------------------------------------------


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


def checked_who(actor: str, reason: str) -> Who:
    """Every action needs who acts and why."""
    if not reason.strip():
        raise InvalidRequest(
            "every action needs a reason, for the audit log", code="reason_required"
        )
    return Who(
        checked_text("actor", actor, ACTOR_LIMIT), checked_text("reason", reason, REASON_LIMIT)
    )


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


def _account(connection: Connection, account_id: str) -> AccountRecord:
    account = get_account(connection, account_id)
    if account is None:
        raise NotFound(f"account '{account_id}' does not exist", code="account_not_found")
    return account


def _configured(part: T | None) -> T:
    """The part of billsync that talks to Stripe, or the refusal to act without it."""
    if part is None:
        raise StripeNotConfigured(
            "billsync has no Stripe key (BILLSYNC_STRIPE_API_KEY): nothing to act on"
        )
    return part
