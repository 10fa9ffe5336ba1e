"""Support actions: what a person does to an account's billing — sync it now, hold, release or
approve a period, add a credit or a charge to a period's invoice, lower a finalized invoice with a
credit note, act on a problem (decide on drift; retry a failed payment, note the customer was
contacted, resolve it with a note), set its sync policy — each checked, done and audited here,
once.

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

Each kind of problem has the actions that fit it (:func:`problem_actions`, the one list the
console's buttons and the checks here read): drift is accepted or re-pushed, a failed payment is
retried, its customer contacted, and it is resolved with a note.

Refusals are BillsyncErrors a person can act on: 404 for an unknown action or a missing account,
period or problem; 422 for what the caller must fix (no reason, a bad period or amount); 409 when
the period or problem does not allow the action now; 502 when Stripe refused; 503 when billsync
has no Stripe key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection

from billsync.clock import Clock
from billsync.core.money import AmountError, parse_amount
from billsync.core.periods import PeriodStatus
from billsync.db.database import Database
from billsync.errors import Conflict, DuplicateRequest, InvalidRequest, NotFound
from billsync.repositories import console as console_repository
from billsync.repositories import problems as problem_repository
from billsync.repositories import sync as sync_repository
from billsync.repositories.accounts import AccountRecord, get_account
from billsync.repositories.problems import ProblemRecord
from billsync.services.accounts import checked_policy
from billsync.services.adjustments import Adjustments
from billsync.services.invoice_support import (
    InvoiceSupport,
    IssuedCreditNote,
    PaymentRetried,
    StripeRefused,
)
from billsync.services.lifecycle import LifecycleService
from billsync.services.reconcile import ACCEPT_NOTES, DRIFT_KINDS, Decision, Reconciler
from billsync.services.support_checks import (
    ACTOR_LIMIT,
    REASON_LIMIT,
    StripeNotConfigured,
    Who,
    checked_text,
    checked_who,
    configured,
    period_start,
)
from billsync.services.sync import SyncService
from billsync.sync.budget import Lane

__all__ = [
    "ACTOR_LIMIT", "REASON_LIMIT", "IssuedCreditNote", "PaymentRetried", "StripeNotConfigured",
    "StripeRefused", "SupportActions", "Who", "checked_text", "checked_who", "period_start",
    "problem_actions",
]  # fmt: skip

ACTIONS = ("sync", "hold", "release", "approve")
DECISIONS = ("accept", "repush")
KINDS = ("credit", "charge")
PAYMENT_FAILED = "payment_failed"
# What a person can do about a problem, by kind (problem_actions); the labels are the console's.
PROBLEM_ACTIONS = {
    "accept": "Accept Stripe's version",
    "repush": "Re-push the ledger",
    "retry_payment": "Retry the payment now",
    "contacted": "Mark the customer contacted",
    "resolve": "Resolve with a note",
}
# Drift on a finalized invoice: the ledger cannot be pushed onto it any more (a credit note can
# lower it; reconcile refuses to re-push these).
FINAL_DRIFT = ("total_differs", "invoice_finalized_in_stripe")


def problem_actions(kind: str) -> tuple[str, ...]:
    """The actions that fit a problem of this kind: drift is accepted (when it is Stripe's to
    keep) or the ledger re-pushed (while the invoice is a draft); a failed payment is retried,
    its customer contacted, resolved with a note; anything else is resolved with a note."""
    if kind == PAYMENT_FAILED:
        return ("retry_payment", "contacted", "resolve")
    if kind in DRIFT_KINDS:
        fitting = tuple(
            action
            for action, fits in (
                ("accept", kind in ACCEPT_NOTES),
                ("repush", kind not in FINAL_DRIFT),
            )
            if fits
        )
        return fitting or ("resolve",)
    return ("resolve",)


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
    """A credit or charge added to a period's invoice, and whether it reached Stripe's draft."""

    account_id: str
    line_id: int
    amount: int  # minor units: negative for a credit
    currency: str = "usd"
    period_start: date | None = None
    period_status: PeriodStatus | None = None
    # The on-demand sync right after: True when Stripe's draft holds the line, False when it
    # does not yet (``error`` says why; a later sync brings it), None when nothing was synced
    # (no Stripe key).
    pushed: bool | None = None
    error: str | None = None

    @property
    def kind(self) -> str:
        return "credit" if self.amount < 0 else "charge"


@dataclass(frozen=True, slots=True)
class Decided:
    """A drift decision taken on the problem's own account and period."""

    account_id: str
    period_start: date
    decision: Decision


@dataclass(frozen=True, slots=True)
class Acted:
    """An action on a problem: done on the problem's own account, and what it came to."""

    account_id: str
    period_start: date | None
    problem_id: int
    action: str
    resolved: bool
    message: str


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
        self.invoices = None if sync is None else InvoiceSupport(database, clock, sync)

    # --- account and period actions -------------------------------------------------------

    def act(
        self,
        action: str,
        account_id: str,
        *,
        actor: str,
        reason: str,
        period: str | date | None = None,
        submission: str | None = None,
    ) -> Done:
        """``sync`` the account now, or ``hold``, ``release`` or ``approve`` (finalize now) its
        period starting ``period`` (YYYY-MM-DD)."""
        if action not in ACTIONS:
            raise NotFound(
                f"there is no action {action!r} (one of {', '.join(ACTIONS)})",
                code="unknown_action",
            )
        who = self._first_time(checked_who(
            actor, reason, submission=submission, action=f"account.{action}",
            parameters={"account": account_id, "period": str(period)},
        ))  # fmt: skip
        if action == "sync":
            return self._sync(account_id, who)
        lifecycle = configured(self.lifecycle)
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
        sync = configured(self.sync)
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
        period: str | date | None = None,
        submission: str | None = None,
    ) -> Adjusted:
        """A credit or a charge on the invoice of the period starting ``period`` (YYYY-MM-DD; by
        default the account's oldest period not finalized). ``amount`` is typed in the account's
        currency and must be exact in its minor unit (nothing is rounded): with ``kind``
        ('credit' or 'charge') a positive amount, without it a signed one (negative: a credit).
        The line and its audit entry commit together (``Adjustments.add``); then, with a Stripe
        key, the account is synced at once so that the period's draft shows it, and what the
        sync did is settled onto the entry. ``submission``: the client's key for this request
        (the console form's): sent again, it adds nothing (:class:`DuplicateRequest`)."""
        who = self._first_time(checked_who(
            actor, reason, submission=submission, action="adjustment",
            parameters={"account": account_id, "amount": amount, "description": description,
                        "kind": kind, "period": str(period)},
        ))  # fmt: skip
        if kind is not None and kind not in KINDS:
            raise InvalidRequest("choose credit or charge", code="invalid_kind")
        description = checked_text("description", description, 200)
        start = None if period is None or period == "" else period_start(period)
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
        added = self.adjustments.add(
            account_id, amount=minor, description=description, actor=who.actor,
            reason=who.reason, period_start=start, request=who.request,
        )  # fmt: skip
        adjusted = Adjusted(
            account_id, added.line_id, minor, added.currency, added.period_start,
            added.period_status,
        )  # fmt: skip
        if self.sync is None:
            return adjusted
        result = self.sync.sync_account(account_id, lane=Lane.ON_DEMAND)
        with self.database.read() as connection:
            line = next(
                (
                    line
                    for line in sync_repository.lines_of(
                        connection, account_id, [added.period_start]
                    )
                    if line.id == added.line_id
                ),
                None,
            )
        pushed = line is not None and line.synced_version == line.version
        why = result.error or (
            None if pushed or result.busy is None else "another sync of the account was running"
        )
        self._settle(added.entry_id, {"calls": result.calls, "error": why, "pushed": pushed})
        return Adjusted(
            account_id, added.line_id, minor, added.currency, added.period_start,
            added.period_status, pushed, why,
        )  # fmt: skip

    def issue_credit_note(
        self,
        account_id: str,
        period: str | date | None,
        *,
        actor: str,
        reason: str,
        amount: str | None = None,
        line_id: int | None = None,
        reason_code: str | None = None,
        destination: str = "credit",
        memo: str | None = None,
        submission: str | None = None,
    ) -> IssuedCreditNote:
        """Lower the finalized invoice of the period starting ``period`` with a credit note in
        Stripe: the whole invoice or its line ``line_id``, by ``amount`` (typed in the account's
        currency; empty: all that can still be credited). What is still due is lowered first;
        the part already paid goes to ``destination``: ``credit`` (the customer's balance) or
        ``refund``. ``reason_code`` is Stripe's (order_change, product_unsatisfactory,
        duplicate, fraudulent); ``memo`` is printed on the credit note. ``submission``: the
        client's key for this request; sent again, it issues nothing."""
        who = self._first_time(checked_who(
            actor, reason, submission=submission, action="credit_note",
            parameters={"account": account_id, "period": str(period), "amount": amount,
                        "line": line_id, "reason_code": reason_code,
                        "destination": destination, "memo": memo},
        ))  # fmt: skip
        start = period_start(period)
        invoices = configured(self.invoices)
        return invoices.issue_credit_note(
            account_id, start, who=who, amount=amount, line_id=line_id,
            reason_code=reason_code or None, destination=destination, memo=memo,
        )  # fmt: skip

    def set_policy(
        self,
        account_id: str,
        override: dict[str, Any] | None,
        *,
        actor: str,
        reason: str,
        submission: str | None = None,
    ) -> Done:
        """The account's own sync policy (``{"policy", "interval_seconds", "threshold"}``), or
        back to the default with ``None``."""
        who = self._first_time(checked_who(
            actor, reason, submission=submission, action="sync_policy",
            parameters={"account": account_id, "override": override},
        ))  # fmt: skip
        if override is not None:
            override = checked_policy(override)  # the API's bounds: no interval past 31 days
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
        submission: str | None = None,
    ) -> Decided:
        """``accept`` Stripe's version of a drift problem, or ``repush`` the ledger. The
        decision is audited under the problem's account and period; a caller that names an
        account (the console's form) is refused if the problem is about another one."""
        if decision not in DECISIONS:
            raise NotFound(
                f"there is no decision {decision!r} (one of {', '.join(DECISIONS)})",
                code="unknown_decision",
            )
        who = self._first_time(checked_who(
            actor, reason, submission=submission, action=f"problem.{decision}",
            parameters={"problem": problem_id, "account": account_id},
        ))  # fmt: skip
        reconciler = configured(self.reconciler)
        now = self.clock.now()
        with self.database.transaction() as connection:
            _open_problem(connection, problem_id, decision, account_id)
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

    def problem_action(
        self,
        problem_id: int,
        action: str,
        *,
        actor: str,
        reason: str,
        account_id: str | None = None,
        submission: str | None = None,
    ) -> Acted:
        """Act on a problem with one of the actions that fit its kind (:func:`problem_actions`):
        ``accept``/``repush`` (drift, see :meth:`decide`), ``retry_payment`` (a failed payment,
        now), ``contacted`` (the customer was contacted: noted in the audit log, the problem
        stays open), ``resolve`` (closed, with the reason as its note). Audited under the
        problem's own account and period."""
        if action not in PROBLEM_ACTIONS:
            raise NotFound(
                f"there is no action {action!r} on a problem (one of {', '.join(PROBLEM_ACTIONS)})",
                code="unknown_action",
            )
        if action in DECISIONS:
            decided = self.decide(
                problem_id, action, actor=actor, reason=reason, account_id=account_id,
                submission=submission,
            )  # fmt: skip
            done = (
                "resolved"
                if decided.decision.resolved
                else f"not resolved: {decided.decision.error}"
            )
            return Acted(
                decided.account_id, decided.period_start, problem_id, action,
                decided.decision.resolved, f"{PROBLEM_ACTIONS[action]}: {done}.",
            )  # fmt: skip
        who = self._first_time(checked_who(
            actor, reason, submission=submission, action=f"problem.{action}",
            parameters={"problem": problem_id, "account": account_id},
        ))  # fmt: skip
        with self.database.read() as connection:
            problem = _open_problem(connection, problem_id, action, account_id)
        assert problem.account_id is not None
        if action == "retry_payment":
            retried = configured(self.invoices).retry_payment(problem, who)
            return Acted(problem.account_id, problem.period_start, problem_id, action,
                         retried.paid, retried.message)  # fmt: skip
        now = self.clock.now()
        with self.database.transaction() as connection:
            if action == "resolve" and not problem_repository.resolve(
                connection, problem.id, f"resolved by {who.actor}: {who.reason}"[:200], now
            ):
                raise Conflict(f"problem {problem_id} was resolved meanwhile", code="resolved")
            self._audit(
                connection, now, who, f"problem.{action}", problem.account_id,
                start=problem.period_start, detail={"problem": problem.id, "kind": problem.kind},
            )  # fmt: skip
        message = (
            f"Problem {problem_id} resolved: {who.reason}"
            if action == "resolve"
            else f"Noted: the customer was contacted about problem {problem_id}."
        )
        return Acted(
            problem.account_id, problem.period_start, problem_id, action, action == "resolve",
            message,
        )  # fmt: skip

    # --- the audit entry ----------------------------------------------------------------

    def _first_time(self, who: Who) -> Who:
        """``who``, if its request was not carried out before; else :class:`DuplicateRequest`
        at once, before anything is read from Stripe (the audit entry's unique key is what
        makes it once; this only says so before the action's own checks speak of its
        aftermath)."""
        if who.request is not None:
            with self.database.read() as connection:
                if console_repository.prior_request(connection, who.actor, who.request.key):
                    raise DuplicateRequest(who.actor, who.request.key, who.request.digest)
        return who

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
            request=who.request,
        )  # fmt: skip

    def _settle(self, entry: int, outcome: dict[str, Any]) -> None:
        with self.database.transaction() as connection:
            console_repository.settle(connection, entry, outcome)


# --- shared look-ups -----------------------------------------------------------------------


def _account(connection: Connection, account_id: str) -> AccountRecord:
    account = get_account(connection, account_id)
    if account is None:
        raise NotFound(f"account '{account_id}' does not exist", code="account_not_found")
    return account


def _open_problem(
    connection: Connection, problem_id: int, action: str, account_id: str | None
) -> ProblemRecord:
    """The open problem an action is about, when the action fits its kind; a caller that names
    an account (the console's form) is refused if the problem is about another one."""
    problem = problem_repository.get(connection, problem_id)
    if problem is None or problem.account_id is None:
        raise NotFound(f"there is no problem {problem_id}", code="problem_not_found")
    if problem.resolved_at is not None:
        raise Conflict(
            f"problem {problem_id} is resolved already ({problem.resolution})", code="resolved"
        )
    fitting = problem_actions(problem.kind)
    if action not in fitting:
        raise Conflict(
            f"problem {problem_id} is {problem.kind.replace('_', ' ')}: "
            f"{PROBLEM_ACTIONS[action].lower()} does not apply to it (what does: "
            f"{', '.join(PROBLEM_ACTIONS[a].lower() for a in fitting)})",
            code="action_not_for_problem",
        )
    if account_id is not None and account_id != problem.account_id:
        raise InvalidRequest(
            f"problem {problem_id} is about account {problem.account_id!r}, not "
            f"{account_id!r}: act on it from its own account's page",
            code="problem_account_mismatch",
        )
    return problem
