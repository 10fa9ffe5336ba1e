"""Applying the sync plan to Stripe exactly once.

For each account: read desired (the ledger) and observed (what billsync last confirmed in
Stripe) state, plan the minimal operations (:mod:`billsync.core.sync_plan`), and apply them one
by one. Every write carries an idempotency key built from billsync's ids and line versions, is
recorded as an *intent* before the call and settled after it. When the outcome of a call is
unknown — a timeout, a lost connection, or a pending intent left by a process that died — Stripe
is read first (the draft's lines, matched by ``metadata.billsync_line_id``) and the plan is made
again from what is really there: nothing is ever created twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from functools import partial
from time import time as unix_now
from typing import Any, TypeVar
from urllib.parse import quote

from sqlalchemy import Connection

from billsync.clock import Clock
from billsync.core import invoice_text
from billsync.core.catalog import Catalog
from billsync.core.drift import ROLLUP_METADATA
from billsync.core.installation import NAMESPACE_KEY, Mode, is_ours, mode_conflict
from billsync.core.periods import PeriodStatus
from billsync.core.rollup import Item, Rollup, RollupError
from billsync.core.sync_plan import (
    AddLines,
    CloseWithoutInvoice,
    CreateCustomer,
    CreateInvoice,
    DeleteInvoice,
    DesiredLine,
    FinalizeInvoice,
    ObservedLine,
    Operation,
    PeriodState,
    PlanError,
    RemoveLines,
    UpdateLines,
    idempotency_key,
    idempotency_key_for_ids,
    plan,
)
from billsync.db.database import Database
from billsync.observability.context import sync_run
from billsync.repositories import installation as installation_repository
from billsync.repositories import problems as problem_repository
from billsync.repositories import sync as repository
from billsync.repositories import webhooks as webhook_repository
from billsync.repositories.problems import NewProblem, finalization_failed
from billsync.repositories.sync import Confirmation, PeriodRow, SyncAccount, SyncLine
from billsync.services.changes import Changes
from billsync.sync.budget import Lane
from billsync.sync.guard import CallGuard, NoGuard
from billsync.sync.leases import AccountBusy, LeaseLost, Leases
from billsync.sync.port import (
    LineChange,
    NewLine,
    RemoteInvoice,
    StripeAmbiguous,
    StripeFailure,
    StripePort,
    StripeRejected,
    endpoint_of,
)

log = logging.getLogger("billsync.sync")

T = TypeVar("T")


@dataclass
class SyncOutcome:
    account_id: str
    operations: list[Operation] = field(default_factory=list)  # applied (or planned, dry run)
    calls: int = 0
    recovered: bool = False
    error: str | None = None
    pending_lines: int = 0
    finalized: list[date] = field(default_factory=list)
    busy: str | None = None  # skipped: this lease holder was syncing the account already
    spaced: bool = False  # skipped: synced too recently for another on-demand sync

    @property
    def ok(self) -> bool:
        return self.error is None


def _record_deleted(
    connection: Connection, account_id: str, start: date, line_ids: list[int], now: datetime
) -> None:
    """A zero-total period's draft is deleted (the "delete" rule): no invoice, nothing to
    sync, the period done. Finalized first: its conditional change takes the account's
    ledger lock, which comes before any of the account's rows (the order ingest keeps)."""
    repository.mark_finalized(connection, account_id, start, now)
    repository.set_invoice(connection, account_id, start, None, now)
    repository.forget_lines(connection, line_ids)


def _last_day(end: date) -> date:
    return date.fromordinal(end.toordinal() - 1)


def _unix(day: date) -> int:
    return int(datetime.combine(day, time(), tzinfo=UTC).timestamp())


def _scope(account_id: str, start: date) -> str:
    return f"{account_id}:{start.isoformat()}"


def _metadata(
    account_id: str, start: date, line_id: int, version: int, namespace: str
) -> dict[str, str]:
    """How a Stripe line says which ledger line (and version) it is, of which installation:
    the key of recovery."""
    found = {
        "billsync_line_id": str(line_id),
        "billsync_version": str(version),
        "billsync_account": account_id,
        "billsync_period": _scope(account_id, start),
    }
    if namespace:
        found[NAMESPACE_KEY] = namespace
    return found


def record_totals(
    connection: Connection, account_id: str, start: date, invoice: RemoteInvoice, now: datetime
) -> None:
    """What the invoice totals after a write (a coupon's discount included), kept in the
    invoice mirror for the customer's page."""
    webhook_repository.record_totals(
        connection, invoice.id,
        {
            "account_id": account_id, "period_start": start, "status": invoice.status,
            "currency": invoice.currency, "total": invoice.total, "subtotal": invoice.subtotal,
            "discount": invoice.discount, "starting_balance": invoice.starting_balance,
            "amount_due": invoice.amount_due, "amount_paid": invoice.amount_paid,
            "amount_remaining": invoice.amount_remaining, "updated_at": now,
        },
    )  # fmt: skip


def _confirmations(invoice: RemoteInvoice, namespace: str) -> list[Confirmation]:
    """The invoice's lines this installation wrote; another namespace's are not ours."""
    found: list[Confirmation] = []
    for line in invoice.lines:
        if not is_ours(line.metadata, namespace):
            continue
        line_id = line.metadata.get("billsync_line_id", "")
        version = line.metadata.get("billsync_version", "")
        if line_id.isdigit() and version.isdigit():
            found.append(
                Confirmation(
                    int(line_id), line.line_item_id, line.invoice_item_id, line.amount, int(version)
                )
            )
    return found


# A roll-up item's version in the plan: observed items are in step at it or behind (0).
ROLLUP_VERSION = 1


def _observed(
    lines: list[SyncLine], rollup: Rollup, desired: dict[int, SyncLine]
) -> tuple[ObservedLine, ...]:
    """What Stripe was last seen to hold for a period, as items: lines confirmed as their own
    items, and roll-up items with the lines confirmed in them. ``lines``: all of the period's
    (those left out of the draft too: a roll-up item still counts them until rewritten);
    ``desired``: those the draft should carry. A roll-up item is in step when it carries
    exactly its desired lines, each confirmed at its version and amount; a second Stripe item
    claiming a key (left by a crash) is not desired, and the plan removes it."""
    found: list[ObservedLine] = []
    items: dict[str, list[SyncLine]] = {}
    for line in lines:
        if line.stripe_line_item_id is None:
            continue
        if line.rollup_key is None:
            if line.synced_version > 0 and line.id in desired:
                found.append(
                    ObservedLine(
                        line.id,
                        line.stripe_line_item_id,
                        line.synced_amount or 0,
                        line.synced_version,
                    )
                )
        else:
            items.setdefault(line.stripe_line_item_id, []).append(line)
    wanted = {item.key: item for item in rollup.items if item.key is not None}
    claimed: set[str] = set()
    for line_item_id, members in sorted(items.items(), key=lambda i: min(m.id for m in i[1])):
        key = min(members, key=lambda m: m.id).rollup_key
        assert key is not None
        target = wanted.get(key)
        in_step = (
            target is not None
            and key not in claimed
            and {m.id for m in members} == set(target.line_ids)
            and all(m.synced_version == m.version and m.synced_amount == m.amount for m in members)
        )
        found.append(
            ObservedLine(
                min(m.id for m in members),
                line_item_id,
                sum(m.synced_amount or 0 for m in members),
                ROLLUP_VERSION if in_step else 0,
                key if key not in claimed else f"{key}@{line_item_id}",
            )
        )
        claimed.add(key)
    return tuple(found)


class ModeMismatch(PlanError):
    """The ledger was synced in the other Stripe mode than the configured key's."""


# An intent whose call Stripe answered with a 5xx: that attempt is over (its answer is stored
# under its key); the next attempt of the operation takes a key of its own.
ANSWERED_5XX = "answered_5xx"
# Stripe refused the write after it started (a 4xx it stores under the key): nothing written,
# and the next attempt needs a key of its own (repositories.sync.answered_attempts).
REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class _Intent:
    id: int
    key: str


@dataclass
class _Step:
    """What applying one operation needs to know."""

    account: SyncAccount
    periods: dict[date, PeriodRow]
    lines: dict[int, SyncLine]
    lane: Lane
    outcome: SyncOutcome
    now: datetime


class SyncService:
    def __init__(
        self,
        database: Database,
        gateway: StripePort,
        catalog: Catalog,
        clock: Clock,
        *,
        guard: CallGuard | None = None,
        delete_zero_total: bool = False,
        changes: Changes | None = None,
        leases: Leases | None = None,
        lease_wait: float = 10.0,
        namespace: str | None = None,
        stripe_mode: Mode | None = None,
        inherit_discounts: bool = True,
        statement_url: str | None = None,
    ) -> None:
        self.changes = changes
        # The template of each invoice's link to its detailed statement ({account}, {period}).
        self.statement_url = statement_url
        # The installation's namespace (core.installation): configured, or the database's own
        # (read at first use: the database may be migrated after this is built).
        self._namespace = namespace
        self.stripe_mode = stripe_mode
        self._mode_checked = False
        # BILLSYNC_STRIPE_DISCOUNTS: whether a customer's coupon applies to its usage invoices.
        self.inherit_discounts = inherit_discounts
        self.leases = leases
        # How long a sync someone waits on (on demand, a closing cycle) waits for the account's
        # lease held by another worker; background syncs skip a busy account at once.
        self.lease_wait = lease_wait
        self.database = database
        self.gateway = gateway
        self.catalog = catalog
        self.clock = clock
        self.guard = guard or NoGuard()
        self.delete_zero_total = delete_zero_total

    @property
    def namespace(self) -> str:
        if self._namespace is None:
            with self.database.read() as connection:
                self._namespace = installation_repository.get(connection).namespace
        return self._namespace

    def check_mode(self) -> None:
        """Refuse to sync a ledger tied to the other Stripe mode than the key's (its objects do
        not exist there); tie a ledger to the key's mode at its first sync."""
        if self._mode_checked or self.stripe_mode is None:
            return
        with self.database.transaction() as connection:
            tied = installation_repository.record_mode(connection, self.stripe_mode)
        problem = mode_conflict(tied, self.stripe_mode)
        if problem is not None:
            raise ModeMismatch(problem)
        self._mode_checked = True

    def key(
        self,
        kind: str,
        scope: str,
        lines: list[tuple[int, int]] | None = None,
        items: list[str | None] | None = None,
    ) -> str:
        """An idempotency key of this installation (core.sync_plan.idempotency_key)."""
        rolled = [item for item in items or () if item is not None]
        return idempotency_key(kind, scope, lines or (), namespace=self.namespace, items=rolled)

    def metadata(self, **values: str) -> dict[str, str]:
        """Metadata of an object billsync creates: what it is, and whose (the namespace)."""
        return {**values, NAMESPACE_KEY: self.namespace} if self.namespace else values

    # --- reading state ------------------------------------------------------------------

    def describe(self, line: SyncLine) -> str:
        """The line's text on the invoice (core.invoice_text)."""
        return invoice_text.line_text(self.catalog, line)

    def describe_item(self, item: Item, members: list[SyncLine]) -> str:
        """A roll-up item's text on the invoice (core.invoice_text)."""
        return invoice_text.item_text(self.catalog, item, members)

    def rollup(self, lines: list[SyncLine]) -> Rollup:
        """The items of a period's invoice (core.rollup): its lines, or their roll-up."""
        try:
            return invoice_text.invoice_items(self.catalog, lines)
        except RollupError as error:
            raise PlanError(str(error)) from None

    def _states(
        self, connection: Connection, account: SyncAccount, *, closing_only: bool = False
    ) -> tuple[list[PeriodState], dict[date, PeriodRow], dict[int, SyncLine]]:
        """The account's periods to sync, as the plan sees them. ``closing_only`` (the closing
        lane): the periods past their end only — a month-end sync completes or finalizes them
        and leaves the new period's draft to its interval, so that closing N accounts costs N
        calls per endpoint (``update_lines``, then ``finalize``) and not also the new
        drafts' creations on the closing lane's priority."""
        periods = {
            p.start: p
            for p in repository.periods_to_sync(connection, account.id)
            if not closing_only or p.status is not PeriodStatus.OPEN
        }
        left_out = problem_repository.lines_left_out(connection, account.id)
        every = repository.lines_of(connection, account.id, list(periods))
        all_lines = [line for line in every if line.id not in left_out]
        states: list[PeriodState] = []
        for start, period in periods.items():
            mine = [line for line in all_lines if line.period_start == start]
            # Stripe's line period end is inclusive ("This value is inclusive",
            # docs.stripe.com/api/invoices/add_lines): the period's last second, so that
            # neighbouring invoices do not overlap by one.
            bounds = (_unix(period.start), _unix(period.end) - 1)
            rollup = self.rollup(mine)
            by_id = {line.id: line for line in mine}
            desired = tuple(self._desired(item, by_id, bounds) for item in rollup.items)
            observed = _observed(
                [line for line in every if line.period_start == start], rollup, by_id
            )
            states.append(
                PeriodState(
                    start,
                    account.currency,
                    desired,
                    observed,
                    period.stripe_invoice_id,
                    finalize=period.finalize_requested_at is not None,
                    delete_if_empty=self.delete_zero_total,
                )
            )
        return states, periods, {line.id: line for line in all_lines}

    def _desired(
        self, item: Item, lines: dict[int, SyncLine], bounds: tuple[int, int]
    ) -> DesiredLine:
        members = [lines[line_id] for line_id in item.line_ids]
        if item.key is None:
            line = members[0]
            return DesiredLine(line.id, line.amount, self.describe(line), line.version, *bounds)
        return DesiredLine(
            item.representative,
            item.amount,
            self.describe_item(item, members),
            ROLLUP_VERSION,
            *bounds,
            key=item.key,
            members=tuple((line.id, line.version) for line in members),
        )

    def plan_account(self, account_id: str) -> list[Operation]:
        """The operations the next sync would make (``billsync sync --dry-run``)."""
        with self.database.read() as connection:
            account = repository.get_account(connection, account_id)
            if account is None:
                return []
            states, _, _ = self._states(connection, account)
        return plan(states, has_customer=account.stripe_customer_id is not None)

    # --- syncing ------------------------------------------------------------------------

    @sync_run  # every log line and Stripe request of the run carries one sync_id
    def sync_account(self, account_id: str, *, lane: Lane = Lane.INTERVAL) -> SyncOutcome:
        outcome = SyncOutcome(account_id)
        settled: list[PeriodState] | None = None
        try:
            settled = self._sync(account_id, lane, outcome)
        except AccountBusy as busy:
            # Another worker is syncing it now: its run covers these changes, nothing failed.
            outcome.busy = busy.holder or "another thread"
            log.info("sync.account.busy", extra={"account": account_id, "holder": outcome.busy})
            return outcome
        except (StripeFailure, PlanError, LeaseLost) as failure:
            outcome.error = f"{type(failure).__name__}: {failure}"
            log.warning(
                "sync.account.failed", extra={"account": account_id, "error": outcome.error}
            )
        with self.database.transaction() as connection:
            # Still behind? (What arrived during the run, or what a failed run left.) First:
            # it takes the account's ledger lock before any row of it is written, in the
            # order ingest takes them (lock, then rows) — the other order deadlocks with it.
            repository.settle_behind(connection, account_id)
            repository.record_attempt(
                connection, account_id, self.clock.now(), calls=outcome.calls, error=outcome.error
            )
        if self.changes is not None and outcome.calls:
            self.changes.accounts_changed([account_id])
        if settled is None:  # the run failed part-way: read what is still behind
            with self.database.read() as connection:
                account = repository.get_account(connection, account_id)
                if account is not None:
                    settled, _, _ = self._states(connection, account)
        outcome.pending_lines = sum(
            len(line.versions)
            for state in settled or ()
            for line in state.desired
            if (line.item, line.version, line.amount)
            not in {(o.item, o.version, o.amount) for o in state.observed}
        )
        return outcome

    def ensure_customer(self, account_id: str, *, lane: Lane = Lane.ON_DEMAND) -> str:
        """The account's Stripe customer, created now when no sync has needed one yet (an
        account with no usage whose owner opens the Customer Portal). The key is the one the
        sync plan uses, so a sync creating it at the same moment gets the same customer."""
        with self.database.read() as connection:
            account = repository.get_account(connection, account_id)
        if account is None:
            raise PlanError(f"account {account_id} does not exist")
        if account.stripe_customer_id is None:
            self.check_mode()
        if account.stripe_customer_id is not None:
            return account.stripe_customer_id
        step = _Step(account, {}, {}, lane, SyncOutcome(account_id), self.clock.now())
        self._create_customer(step, CreateCustomer())
        with self.database.read() as connection:
            created = repository.get_account(connection, account_id)
        assert created is not None
        assert created.stripe_customer_id is not None
        return created.stripe_customer_id

    def _call(
        self,
        step: _Step | tuple[SyncOutcome, Lane],
        call: Callable[[], T],
        intent: _Intent | None = None,
    ) -> T:
        outcome, lane = (step.outcome, step.lane) if isinstance(step, _Step) else step
        try:
            with self.guard.call(lane, endpoint_of(call)):
                if self.leases is not None:
                    # After the budget's wait, which can be long: the call goes out under a
                    # lease renewed just now (or not at all).
                    self.leases.check(outcome.account_id)
                outcome.calls += 1
                return call()
        except StripeAmbiguous as failure:
            if intent is not None and failure.answered:
                with self.database.transaction() as connection:  # that attempt is over
                    repository.settle_intent(
                        connection, intent.id, ANSWERED_5XX, self.clock.now(), failure.message
                    )
            raise

    def _sync(self, account_id: str, lane: Lane, outcome: SyncOutcome) -> list[PeriodState]:
        """Under the account's lease (sync.leases): one process syncs an account at a time."""
        if self.leases is None:
            return self._sync_held(account_id, lane, outcome)
        with self.database.read() as connection:
            if repository.get_account(connection, account_id) is None:
                raise PlanError(f"account {account_id} does not exist")
        wait = self.lease_wait if lane <= Lane.CLOSING else 0.0
        with self.leases.hold(account_id, wait=wait) as generation:
            started = unix_now()
            try:
                return self._sync_held(account_id, lane, outcome)
            finally:
                # The run's span under the lease: operators (and the multi-worker test) can
                # check that no two runs of one account ever overlap.
                log.info(
                    "sync.account.run",
                    extra={
                        "account": account_id, "owner": self.leases.owner,
                        "generation": generation, "lane": lane, "calls": outcome.calls,
                        "started": round(started, 6), "ended": round(unix_now(), 6),
                    },
                )  # fmt: skip

    def _sync_held(self, account_id: str, lane: Lane, outcome: SyncOutcome) -> list[PeriodState]:
        """Push one snapshot of the account: read its lines once, apply the plan, done. Usage
        that arrives meanwhile is the next sync's work — an account whose usage never stops is
        synced once per window like any other, never chased. A call of unknown outcome (or a
        line Stripe no longer has) is read back and the snapshot planned once more. Returns the
        account's states read after the run (what is still behind)."""
        self.check_mode()
        with self.database.read() as connection:
            pending = repository.pending_intents(connection, account_id)
        if pending:
            # A previous run died between a call and its record: look before writing again.
            self._recover(account_id, lane, outcome)
        while True:
            with self.database.read() as connection:
                account = repository.get_account(connection, account_id)
                if account is None:
                    raise PlanError(f"account {account_id} does not exist")
                states, periods, lines = self._states(
                    connection, account, closing_only=lane is Lane.CLOSING
                )
            operations = plan(states, has_customer=account.stripe_customer_id is not None)
            try:
                snapshot = _Step(account, periods, lines, lane, outcome, self.clock.now())
                self._apply_snapshot(snapshot, operations)
            except (StripeAmbiguous, StripeRejected) as failure:
                if isinstance(failure, StripeRejected) and not failure.missing:
                    raise  # Stripe refused what we sent: a bug or drift, not a read away
                if outcome.recovered:
                    raise  # twice in one run: Stripe is struggling, try later
                # Unknown outcome, or a line Stripe no longer has: read, then plan again.
                self._recover(account_id, lane, outcome)
                outcome.recovered = True
                continue
            break
        if not operations:
            return states
        with self.database.read() as connection:
            account = repository.get_account(connection, account_id)
            assert account is not None
            after, _, _ = self._states(connection, account)
        return after

    def _apply_snapshot(self, snapshot: _Step, operations: list[Operation]) -> None:
        account, periods = snapshot.account, snapshot.periods
        for operation in operations:
            step = _Step(
                account, periods, snapshot.lines, snapshot.lane, snapshot.outcome,
                self.clock.now(),
            )  # fmt: skip
            self._apply(step, operation)
            snapshot.outcome.operations.append(operation)
            if isinstance(operation, AddLines | UpdateLines | RemoveLines):
                continue  # line operations learn no id the next operation needs
            # Ids learnt by this operation (customer, invoice) are needed by the next.
            with self.database.read() as connection:
                refreshed = repository.get_account(connection, account.id)
                assert refreshed is not None
                account = refreshed
                periods = {p.start: p for p in repository.periods_to_sync(connection, account.id)}

    def _apply(
        self,
        step: _Step,
        operation: Operation,
    ) -> None:
        handler = {
            CreateCustomer: self._create_customer,
            CreateInvoice: self._create_invoice,
            AddLines: self._add_lines,
            UpdateLines: self._update_lines,
            RemoveLines: self._remove_lines,
            FinalizeInvoice: self._finalize,
            DeleteInvoice: self._delete,
            CloseWithoutInvoice: self._close_without_invoice,
        }[type(operation)]
        handler(step, operation)  # type: ignore[operator]

    def _intent(
        self,
        step: _Step,
        start: date | None,
        name: str,
        key: str,
        payload: dict[str, Any],
        *,
        renewable: bool = True,
        reused: bool = False,
    ) -> _Intent:
        """Record the write before making it; its idempotency key is ``key``, or, when Stripe
        answered an earlier attempt with a 5xx it stores under the key and replays for 24 h,
        ``key:retry-N`` — that attempt is over and was read back (``_recover``) before this
        one is planned, so the new key cannot write twice. Not ``renewable``: a create that
        recovery cannot find by reading (the customer) keeps its key. ``reused``: a line write
        whose same key was applied before is another write of the same lines (added, removed,
        added again — e.g. an invoice rolled up, then back to its lines): Stripe would replay
        the first answer for 24 hours, so it takes a key of its own too."""
        with self.database.transaction() as connection:
            if renewable:
                answered = repository.answered_attempts(
                    connection, step.account.id, key, applied=reused
                )
                if answered:
                    key = f"{key}:retry-{answered}"
            intent = repository.record_intent(
                connection, step.account.id, start, name, key, payload, step.now
            )
        return _Intent(intent, key)

    def _create_customer(self, step: _Step, _operation: CreateCustomer) -> None:
        account = step.account
        key = self.key("customer", account.id)
        intent = self._intent(step, None, "create_customer", key, {}, renewable=False)
        customer_id = self._call(
            step,
            partial(
                self.gateway.create_customer,
                name=account.name,
                email=account.email,
                metadata=self.metadata(billsync_account=account.id),
                idempotency_key=intent.key,
            ),
            intent,
        )
        with self.database.transaction() as connection:
            repository.set_customer(connection, account.id, customer_id, step.now)
            repository.settle_intent(connection, intent.id, "applied", step.now)

    def _create_invoice(self, step: _Step, operation: CreateInvoice) -> None:
        account, start = step.account, operation.period_start
        period = step.periods[start]
        assert account.stripe_customer_id is not None
        scope = _scope(account.id, start)
        key = self.key("invoice", scope)
        intent = self._intent(step, start, "create_invoice", key, {})
        invoice = self._call(
            step,
            partial(
                self.gateway.create_draft_invoice,
                customer=account.stripe_customer_id,
                currency=account.currency,
                # The period's days, both included (its end is the next period's first day).
                description=f"Usage {start.isoformat()} – {_last_day(period.end).isoformat()}",
                metadata=self.metadata(billsync_account=account.id, billsync_period=scope),
                idempotency_key=intent.key,
                inherit_discounts=self.inherit_discounts,
                statement_url=self.statement_link(account.id, start),
            ),
            intent,
        )
        with self.database.transaction() as connection:
            repository.set_invoice(connection, account.id, start, invoice.id, step.now)
            repository.settle_intent(connection, intent.id, "applied", step.now)
            record_totals(connection, account.id, start, invoice, step.now)

    def statement_link(self, account_id: str, start: date) -> str | None:
        """The address of the period's detailed statement, for its invoice."""
        if self.statement_url is None:
            return None
        return self.statement_url.replace("{account}", quote(account_id, safe="")).replace(
            "{period}", start.isoformat()
        )

    def _invoice_of(self, step: _Step, start: date) -> str:
        invoice_id = step.periods[start].stripe_invoice_id
        assert invoice_id is not None, "the plan creates the draft before touching its lines"
        return invoice_id

    def _item_metadata(self, account_id: str, start: date, line: DesiredLine) -> dict[str, str]:
        """A line's metadata (``_metadata``), or a roll-up item's: its key and line count —
        no ``billsync_line_id``, so that nothing reads it as one ledger line."""
        if line.key is None:
            return _metadata(account_id, start, line.line_id, line.version, self.namespace)
        found = {
            ROLLUP_METADATA: line.key,
            "billsync_lines": str(len(line.members)),
            "billsync_account": account_id,
            "billsync_period": _scope(account_id, start),
        }
        if self.namespace:
            found[NAMESPACE_KEY] = self.namespace
        return found

    def _members(
        self, step: _Step, item: DesiredLine, line_item_id: str, invoice_item_id: str | None
    ) -> list[Confirmation]:
        """Stripe holds the roll-up item ``line_item_id`` at ``item``'s amount: each of its
        lines is in Stripe, at its own amount and version, within it."""
        return [
            Confirmation(
                line_id,
                line_item_id,
                invoice_item_id,
                step.lines[line_id].amount,
                version,
                rollup_key=item.key,
            )
            for line_id, version in item.members
        ]

    def _release_others(
        self,
        connection: Connection,
        step: _Step,
        start: date,
        items: Iterable[tuple[str, str | None]],
        rolled: dict[str, DesiredLine],
    ) -> None:
        """Lines confirmed earlier in a roll-up item that no longer carries them (left out of
        the draft since, or moved to another item): Stripe's item no longer counts them."""
        ids = {item for item, _ in items}
        carried = {line_id for line in rolled.values() for line_id, _ in line.members}
        stale = repository.lines_in_items(connection, step.account.id, start, ids, carried)
        repository.forget_lines(connection, stale)

    def _add_lines(self, step: _Step, operation: AddLines) -> None:
        start = operation.period_start
        invoice_id = self._invoice_of(step, start)
        versions = [pair for line in operation.lines for pair in line.versions]
        key = self.key("add", invoice_id, versions, [line.key for line in operation.lines])
        new = [
            NewLine(
                line.line_id,
                line.amount,
                line.description,
                line.period_start,
                line.period_end,
                self._item_metadata(step.account.id, start, line),
            )
            for line in operation.lines
        ]
        intent = self._intent(
            step, start, "add_lines", key, {"lines": [i for i, _ in versions]}, reused=True
        )
        result = self._call(
            step,
            partial(self.gateway.add_lines, invoice_id, new, idempotency_key=intent.key),
            intent,
        )
        wanted = {line.line_id for line in operation.lines if line.key is None}
        rolled = {line.key: line for line in operation.lines if line.key is not None}
        if not result.lines_complete:
            # The response embeds only an invoice's first lines: read the rest once.
            result = self._call(
                step, partial(self.gateway.get_invoice, invoice_id, with_lines=True)
            )
        confirmed = [c for c in _confirmations(result, self.namespace) if c.line_id in wanted]
        added: dict[str, tuple[str, str | None]] = {}
        for remote in result.lines:
            rollup_key = remote.metadata.get(ROLLUP_METADATA)
            if rollup_key in rolled and is_ours(remote.metadata, self.namespace):
                added.setdefault(rollup_key, (remote.line_item_id, remote.invoice_item_id))
        for rollup_key, (item, invoice_item) in added.items():
            confirmed += self._members(step, rolled[rollup_key], item, invoice_item)
        with self.database.transaction() as connection:
            self._release_others(connection, step, start, added.values(), rolled)
            repository.confirm_lines(connection, confirmed, step.now)
            repository.settle_intent(connection, intent.id, "applied", step.now)
            record_totals(connection, step.account.id, start, result, step.now)

    def _update_lines(self, step: _Step, operation: UpdateLines) -> None:
        start = operation.period_start
        invoice_id = self._invoice_of(step, start)
        versions = [pair for line, _ in operation.changes for pair in line.versions]
        key = self.key("update", invoice_id, versions, [line.key for line, _ in operation.changes])
        changes = [
            LineChange(
                item,
                line.amount,
                line.description,
                self._item_metadata(step.account.id, start, line),
            )
            for line, item in operation.changes
        ]
        intent = self._intent(
            step, start, "update_lines", key, {"lines": [i for i, _ in versions]}, reused=True
        )
        result = self._call(
            step,
            partial(self.gateway.update_lines, invoice_id, changes, idempotency_key=intent.key),
            intent,
        )
        confirmed: list[Confirmation] = []
        rolled = {line.key: line for line, _ in operation.changes if line.key is not None}
        for line, item in operation.changes:
            if line.key is None:
                confirmed.append(Confirmation(line.line_id, item, None, line.amount, line.version))
            else:
                confirmed += self._members(step, line, item, None)
        with self.database.transaction() as connection:
            self._release_others(
                connection, step, start,
                [(item, None) for line, item in operation.changes if line.key is not None],
                rolled,
            )  # fmt: skip
            repository.confirm_lines(connection, confirmed, step.now)
            repository.settle_intent(connection, intent.id, "applied", step.now)
            record_totals(connection, step.account.id, start, result, step.now)

    def _remove_lines(self, step: _Step, operation: RemoveLines) -> None:
        start = operation.period_start
        invoice_id = self._invoice_of(step, start)
        items = list(operation.line_item_ids)
        key = idempotency_key_for_ids("remove", invoice_id, items, namespace=self.namespace)
        intent = self._intent(step, start, "remove_lines", key, {"line_items": items})
        self._call(
            step,
            partial(self.gateway.remove_lines, invoice_id, items, idempotency_key=intent.key),
            intent,
        )
        gone = [i for i, line in step.lines.items() if line.stripe_line_item_id in items]
        with self.database.transaction() as connection:
            repository.forget_lines(connection, gone)
            repository.settle_intent(connection, intent.id, "applied", step.now)

    def _finalize(self, step: _Step, operation: FinalizeInvoice) -> None:
        start = operation.period_start
        invoice_id = self._invoice_of(step, start)
        key = self.key("finalize", invoice_id)
        intent = self._intent(step, start, "finalize", key, {})
        try:
            finalized = self._call(
                step,
                partial(
                    self.gateway.finalize, invoice_id, auto_advance=True, idempotency_key=intent.key
                ),
                intent,
            )
        except StripeRejected as refusal:
            if not refusal.missing:
                self._finalization_refused(step, start, invoice_id, intent, refusal)
            raise
        with self.database.transaction() as connection:
            repository.mark_finalized(connection, step.account.id, start, step.now)
            problem = problem_repository.find(connection, finalization_failed(invoice_id))
            if problem is not None and problem.resolved_at is None:
                problem_repository.resolve(connection, problem.id, "finalized", step.now)
            repository.settle_intent(connection, intent.id, "applied", step.now)
            # The balance Stripe applied, or an amount under its minimum charge carried.
            record_totals(connection, step.account.id, start, finalized, step.now)
        step.outcome.finalized.append(start)

    def _finalization_refused(
        self, step: _Step, start: date, invoice_id: str, intent: _Intent, refusal: StripeRejected
    ) -> None:
        """Stripe refused to finalize (e.g. a customer's tax location it cannot use): the
        attempt is over and wrote nothing, but Stripe stores its answer under the key and
        replays it for 24 hours (docs.stripe.com/api/idempotent_requests), so the next attempt
        — once someone fixed the cause — takes a key of its own. Support sees why (the same
        problem an ``invoice.finalization_failed`` event raises); the sync fails and is
        retried with back-off."""
        with self.database.transaction() as connection:
            repository.settle_intent(
                connection, intent.id, REFUSED, step.now, f"{refusal.code}: {refusal.message}"
            )
            problem_repository.report(
                connection,
                NewProblem(
                    kind="finalization_failed",
                    fingerprint=finalization_failed(invoice_id),
                    detail=f"Stripe refused to finalize invoice {invoice_id}: {refusal.message}"
                    + (f" ({refusal.code})" if refusal.code else ""),
                    account_id=step.account.id,
                    period_start=start,
                    stripe_object_id=invoice_id,
                ),
                step.now,
            )

    def _delete(self, step: _Step, operation: DeleteInvoice) -> None:
        """A zero-total period under the "delete" rule: no invoice at all."""
        start = operation.period_start
        invoice_id = self._invoice_of(step, start)
        key = self.key("delete", invoice_id)
        intent = self._intent(step, start, "delete_invoice", key, {})
        self._call(
            step, partial(self.gateway.delete_draft, invoice_id, idempotency_key=intent.key), intent
        )
        mine = [i for i, line in step.lines.items() if line.period_start == start]
        with self.database.transaction() as connection:
            _record_deleted(connection, step.account.id, start, mine, step.now)
            repository.settle_intent(connection, intent.id, "applied", step.now)
        step.outcome.finalized.append(start)

    def _close_without_invoice(self, step: _Step, operation: CloseWithoutInvoice) -> None:
        """Nothing to bill, no draft in Stripe: the period ends here, without a call."""
        start = operation.period_start
        mine = [i for i, line in step.lines.items() if line.period_start == start]
        with self.database.transaction() as connection:
            _record_deleted(connection, step.account.id, start, mine, step.now)
        step.outcome.finalized.append(start)

    # --- recovery -------------------------------------------------------------------------

    def _read_back(
        self,
        step: tuple[SyncOutcome, Lane],
        invoice_id: str,
        start: date,
        *,
        deleting: bool,
        lines: list[int],
    ) -> RemoteInvoice | None:
        """The invoice as Stripe holds it; None when it was ours to delete and is gone."""
        try:
            return self._call(step, partial(self.gateway.get_invoice, invoice_id, with_lines=True))
        except StripeRejected as failure:
            if not (failure.missing and deleting):
                raise
        # Our delete went through and its answer was lost: Stripe ignores idempotency keys on
        # DELETE and answers a repeat (or a read) "no such invoice"
        # (docs.stripe.com/api/idempotent_requests) — a deleted draft is the result.
        outcome = step[0]
        with self.database.transaction() as connection:
            _record_deleted(connection, outcome.account_id, start, lines, self.clock.now())
        outcome.finalized.append(start)
        return None

    def _found(
        self, remote: RemoteInvoice, mine: list[SyncLine], left_out: set[int]
    ) -> tuple[dict[int, Confirmation], list[str], list[str]]:
        """What a draft read back says of the period's lines: the confirmations of those it
        holds (as their own items, or in the roll-up item the ledger makes of them now), the
        copies of a line (duplicates), and the roll-up items the ledger no longer makes
        (orphans: written before a crash at another level) — both to remove. A line found in a
        roll-up item is confirmed at its recorded version only if it was confirmed in that
        very item; otherwise at version 0, so that the next sync rewrites the item's amount
        (absolute, so that is always safe)."""
        ids = {line.id for line in mine}
        seen: dict[int, Confirmation] = {}
        duplicates: list[str] = []
        for confirmation in _confirmations(remote, self.namespace):
            if confirmation.line_id in seen and confirmation.line_item_id is not None:
                duplicates.append(confirmation.line_item_id)
            elif confirmation.line_id in ids:
                seen[confirmation.line_id] = confirmation
        wanted = {
            item.key: item
            for item in self.rollup([line for line in mine if line.id not in left_out]).items
            if item.key is not None
        }
        by_id = {line.id: line for line in mine}
        orphans: list[str] = []
        for remote_line in remote.lines:
            key = remote_line.metadata.get(ROLLUP_METADATA)
            if key is None or not is_ours(remote_line.metadata, self.namespace):
                continue
            item = wanted.pop(key, None)
            if item is None:  # another level's item, or a second copy of one
                orphans.append(remote_line.line_item_id)
                continue
            for line_id in item.line_ids:
                line = by_id[line_id]
                own = seen.get(line_id)
                if own is not None and own.rollup_key is None and own.line_item_id is not None:
                    orphans.append(own.line_item_id)  # its own item too: the roll-up carries it
                same = line.stripe_line_item_id == remote_line.line_item_id
                same = same and line.rollup_key == key
                seen[line_id] = Confirmation(
                    line_id, remote_line.line_item_id, remote_line.invoice_item_id,
                    (line.synced_amount or 0) if same else 0, line.synced_version if same else 0,
                    rollup_key=key,
                )  # fmt: skip
        return seen, duplicates, orphans

    def _recover(self, account_id: str, lane: Lane, outcome: SyncOutcome) -> None:
        """Make observed state what Stripe really holds: adopt drafts created before a crash,
        confirm lines found by their metadata, forget lines Stripe does not have, and remove
        duplicates (a line found twice)."""
        now = self.clock.now()
        with self.database.read() as connection:
            account = repository.get_account(connection, account_id)
            assert account is not None
            periods = repository.periods_to_sync(connection, account_id)
            lines = repository.lines_of(connection, account_id, [p.start for p in periods])
            deleting = {
                start
                for _, operation, start in repository.pending_intents(connection, account_id)
                if operation == "delete_invoice"
            }
            left_out = problem_repository.lines_left_out(connection, account_id)
        for period in periods:
            invoice_id = period.stripe_invoice_id
            scope = _scope(account_id, period.start)
            if invoice_id is None and account.stripe_customer_id is not None:
                customer = account.stripe_customer_id
                drafts = self._call(
                    (outcome, lane),
                    partial(
                        self.gateway.find_draft_invoices,
                        customer=customer,
                        metadata_key="billsync_period",
                        value=scope,
                    ),
                )
                # Only a draft of this installation's: another's is never adopted.
                drafts = [draft for draft in drafts if is_ours(draft.metadata, self.namespace)]
                if drafts:
                    invoice_id = drafts[0].id
                    with self.database.transaction() as connection:
                        repository.set_invoice(
                            connection, account_id, period.start, invoice_id, now
                        )
            if invoice_id is None:
                continue
            remote = self._read_back(
                (outcome, lane), invoice_id, period.start, deleting=period.start in deleting,
                lines=[line.id for line in lines if line.period_start == period.start],
            )  # fmt: skip
            if remote is None:
                continue
            mine = [line for line in lines if line.period_start == period.start]
            seen, duplicates, orphans = self._found(remote, mine, left_out)
            on_invoice = {line.line_item_id for line in remote.lines}
            missing = [line for line in mine if line.id not in seen]
            with self.database.transaction() as connection:
                gone = {
                    line.stripe_line_item_id
                    for line in missing
                    if line.stripe_line_item_id is not None
                    and line.stripe_line_item_id not in on_invoice
                }
                # Our own removal whose answer was lost (it timed out and Stripe went on, or
                # it was still running when the draft was read before): nobody else's doing.
                ours = repository.items_removed_by_us(connection, account_id, period.start, gone)
                for line in missing:
                    if (
                        line.stripe_line_item_id in gone
                        and line.stripe_line_item_id not in ours
                        and line.synced_version > 0
                    ):
                        # Stripe held it and no longer does: someone removed it. A person
                        # decides; until then the line stays off the draft.
                        problem_repository.report(
                            connection,
                            NewProblem(
                                kind=problem_repository.REMOVED_IN_STRIPE,
                                fingerprint=problem_repository.removed_line_fingerprint(
                                    account_id, period.start, line.id
                                ),
                                account_id=account_id,
                                period_start=period.start,
                                line_id=line.id,
                                stripe_object_id=line.stripe_invoice_item_id,
                                ledger_amount=line.amount,
                                stripe_amount=None,
                                detail=f"line {line.id} ({line.key}) is no longer on invoice "
                                f"{invoice_id}: removed in Stripe",
                            ),
                            now,
                        )
                repository.forget_lines(connection, [line.id for line in missing])
                repository.confirm_lines(connection, list(seen.values()), now)
            if (duplicates or orphans) and remote.status == "draft":
                extra = duplicates + orphans
                key = idempotency_key_for_ids("dedupe", invoice_id, extra, namespace=self.namespace)
                remove = partial(self.gateway.remove_lines, invoice_id, extra, idempotency_key=key)
                self._call((outcome, lane), remove)
            if remote.status != "draft" and period.status is not PeriodStatus.FINALIZED:
                with self.database.transaction() as connection:
                    repository.mark_finalized(connection, account_id, period.start, now)
        with self.database.transaction() as connection:
            repository.settle_pending(connection, account_id, "recovered", now)
