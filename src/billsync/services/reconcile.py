"""The reconciler: read Stripe again, compare it with the ledger, repair what is billsync's own
and surface the rest for a person to decide.

What is compared:

- **Drafts** of periods billsync keeps in step (open, closing, review, held): every line of the
  Stripe draft, matched to ledger lines by ``metadata.billsync_line_id``.
- **Finalized invoices** (finalized within ``finalized_lookback``): the Stripe total against the
  ledger's total for the period.

Each difference is a :class:`DriftItem` of one kind (repairable ones marked *):

- ``missing_in_stripe`` * — a ledger line of a period in review (or held) is not on the draft
  and billsync holds no confirmation of it;
- ``amount_differs`` * — billsync's line shows another amount than billsync pushed (edited in
  Stripe);
- ``duplicate_in_stripe`` * — billsync's line is on the draft more than once;
- ``extra_in_stripe`` — a line that is not one of the period's ledger lines (no billsync
  metadata: added in Stripe);
- ``removed_in_stripe`` — a line billsync had confirmed is gone from the draft;
- ``invoice_voided`` / ``invoice_deleted`` — the period's invoice was voided, or no longer
  exists, in Stripe;
- ``invoice_finalized_in_stripe`` — the draft was finalized in Stripe, not by billsync;
- ``total_differs`` — a finalized invoice's total is not the ledger's total for the period.

Not drift: lines billsync has not pushed yet in an open or closing period, lines whose ledger
amount moved on since the last push (Stripe still shows what billsync pushed), and lines whose
push is in flight (Stripe shows another version than billsync recorded). The sync engine brings
those in step by itself; the report counts them as ``pending_lines``.

Every item is recorded as a problem (``repositories.problems``), keyed by a fingerprint, and
drift problems of an account that are no longer found are closed. With ``repair=True`` the
repairable items are repaired — the line's confirmation is forgotten (or marked as what Stripe
really holds) and the account is synced — then the account is read again: ``repaired`` says
whether the re-check found the item fixed.

Repairs re-send what billsync sent before: the same line ids and versions, so the same
idempotency keys, and Stripe answers a key it has seen in the last 24 hours with the stored
result of the first call instead of writing. A repair therefore syncs through the gateway with
every key suffixed by a token of its own (:class:`_RepairKeys`).

People decide the rest (the console calls these): :meth:`Reconciler.accept_stripe` keeps
Stripe's version and stops reporting it while it stays as accepted; :meth:`Reconciler.
repush_ledger` makes Stripe show the ledger again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import Connection

from billsync.clock import Clock
from billsync.core import drift, line_state
from billsync.core.money import format_minor
from billsync.core.periods import PeriodStatus
from billsync.core.sync_plan import idempotency_key_for_ids
from billsync.db.database import Database
from billsync.errors import Conflict, NotFound
from billsync.repositories import problems as problem_repository
from billsync.repositories import sync as repository
from billsync.repositories.ledger import lock_accounts
from billsync.repositories.problems import NewProblem, ProblemRecord
from billsync.repositories.sync import PeriodRow, SyncLine
from billsync.services.sync import SyncOutcome, SyncService
from billsync.sync.budget import Lane
from billsync.sync.leases import AccountBusy
from billsync.sync.port import (
    EventPage,
    LineChange,
    NewLine,
    RemoteInvoice,
    StripeFailure,
    StripePort,
    StripeRejected,
    endpoint_of,
)

log = logging.getLogger("billsync.reconcile")

T = TypeVar("T")

MISSING = drift.MISSING_IN_STRIPE
AMOUNT = drift.AMOUNT_DIFFERS
DUPLICATE = drift.DUPLICATE_IN_STRIPE
EXTRA = drift.EXTRA_IN_STRIPE
REMOVED = drift.REMOVED_IN_STRIPE
FOREIGN = drift.LINE_OF_ANOTHER_PERIOD
VOIDED = "invoice_voided"
DELETED = "invoice_deleted"
FINALIZED_ELSEWHERE = "invoice_finalized_in_stripe"
TOTAL = "total_differs"
DRIFT_KINDS = (
    MISSING, AMOUNT, DUPLICATE, EXTRA, FOREIGN, REMOVED, VOIDED, DELETED, FINALIZED_ELSEWHERE,
    TOTAL,
)  # fmt: skip
REPAIRABLE = frozenset({MISSING, AMOUNT, DUPLICATE})
# Kinds whose subject is a ledger line, a Stripe line, or the invoice (for the fingerprint).
LINE_KINDS = frozenset({MISSING, AMOUNT, REMOVED})
STRIPE_LINE_KINDS = frozenset({EXTRA, FOREIGN, DUPLICATE})

ACCEPTED = problem_repository.ACCEPTED
ACCEPT_NOTES = {
    EXTRA: ": the line stays on the invoice; billsync never touches lines it did not add",
    FOREIGN: ": the line stays on the invoice; billsync never touches lines it did not add",
    AMOUNT: (
        ": Stripe's amount stays until the ledger line changes; the next push of a change "
        "sets the ledger's amount again"
    ),
    REMOVED: (
        ": the line stays off the invoice until the ledger line changes or the sync engine "
        "recovers this draft, which re-adds it (billsync keeps no exclusion list)"
    ),
    TOTAL: ": the finalized invoice stands as Stripe shows it",
    VOIDED: ": nothing is billed for this period; billsync stopped syncing it",
    DELETED: ": nothing is billed for this period; billsync stopped syncing it",
    FINALIZED_ELSEWHERE: ": Stripe's invoice stands; billsync stopped syncing the period",
}
REPAIRED = "repaired: re-pushed the ledger"
REPUSHED = "re-pushed the ledger"
# Stripe's longest idempotency key.
MAX_KEY = 255
DRAFT_STATUSES = (PeriodStatus.OPEN, PeriodStatus.CLOSING, PeriodStatus.REVIEW, PeriodStatus.HELD)
# A period past its final sync: every ledger line should be on the draft.
COMPLETE_STATUSES = (PeriodStatus.REVIEW, PeriodStatus.HELD)


@dataclass(frozen=True, slots=True)
class DriftItem:
    """One difference between the ledger and Stripe."""

    account: str
    period_start: date
    invoice_id: str | None
    kind: str
    line_id: int | None
    stripe_line_item_id: str | None
    ledger_amount: int | None
    stripe_amount: int | None
    repairable: bool
    repaired: bool
    detail: str
    currency: str = ""
    problem_id: int | None = None

    @property
    def fingerprint(self) -> str:
        if self.kind in (VOIDED, DELETED):
            # As the webhook processor records them: one problem, whoever saw it first.
            return f"{self.kind}:{self.invoice_id}"
        if self.kind in LINE_KINDS:
            subject: object = self.line_id
        elif self.kind in STRIPE_LINE_KINDS:
            subject = self.stripe_line_item_id
        else:
            subject = self.invoice_id
        return f"drift:{self.kind}:{self.account}:{self.period_start.isoformat()}:{subject}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["period_start"] = self.period_start.isoformat()
        data["fingerprint"] = self.fingerprint
        return data


@dataclass(frozen=True, slots=True)
class ReconcileError:
    """An invoice that could not be read, or a repair that failed: nothing is concluded."""

    account: str
    period_start: date | None
    invoice_id: str | None
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "period_start": None if self.period_start is None else self.period_start.isoformat(),
            "invoice_id": self.invoice_id,
            "error": self.error,
        }


@dataclass
class ReconcileReport:
    repair: bool = False
    items: list[DriftItem] = field(default_factory=list)
    accounts: int = 0
    invoices: int = 0
    pending_lines: int = 0  # behind, not drift: the sync engine pushes them by itself
    accepted: int = 0  # drift a person accepted earlier, found again unchanged
    closed: int = 0  # problems closed by this run: repaired, or no longer found
    errors: list[ReconcileError] = field(default_factory=list)

    @property
    def unrepaired(self) -> list[DriftItem]:
        return [item for item in self.items if not item.repaired]

    @property
    def repaired(self) -> list[DriftItem]:
        return [item for item in self.items if item.repaired]

    @property
    def by_kind(self) -> dict[str, int]:
        return dict(sorted(Counter(item.kind for item in self.items).items()))

    @property
    def ok(self) -> bool:
        """Stripe shows the ledger (or what a person accepted), as far as could be read."""
        return not self.unrepaired and not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "repair": self.repair,
            "checked": {"accounts": self.accounts, "invoices": self.invoices},
            "drift": len(self.items),
            "repaired": len(self.repaired),
            "unrepaired": len(self.unrepaired),
            "repairable": sum(1 for item in self.items if item.repairable and not item.repaired),
            "by_kind": self.by_kind,
            "pending_lines": self.pending_lines,
            "accepted": self.accepted,
            "closed": self.closed,
            "errors": [error.to_dict() for error in self.errors],
            "items": [item.to_dict() for item in self.items],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


@dataclass(frozen=True, slots=True)
class Decision:
    """What a person's decision on a drift problem did."""

    problem_id: int
    kind: str
    resolved: bool
    resolution: str | None
    error: str | None = None


@dataclass
class _Check:
    """One account read against Stripe."""

    currency: str
    items: list[DriftItem] = field(default_factory=list)
    in_step: set[int] = field(default_factory=set)  # on the draft once, at the ledger's amount
    pending: int = 0
    invoices: int = 0
    errors: list[ReconcileError] = field(default_factory=list)
    checked: set[date] = field(default_factory=set)  # periods whose invoice was read
    # Per line, the amount difference a person accepted: (the ledger's amount then, Stripe's).
    accepted: dict[int, tuple[int, int]] = field(default_factory=dict)

    def fixed(self, item: DriftItem) -> bool:
        """Whether ``item`` (found by an earlier check) is gone in this one."""
        if item.period_start not in self.checked:
            return False
        if item.fingerprint in {found.fingerprint for found in self.items}:
            return False
        return item.line_id is None or item.line_id in self.in_step


class _RepairKeys:
    """The gateway, with every idempotency key suffixed by the repair's own token: a repair
    re-sends the writes billsync made before, which Stripe would otherwise answer from its
    idempotency store (the first call's result) without writing anything."""

    def __init__(self, gateway: StripePort, token: str) -> None:
        self._gateway = gateway
        self._suffix = f":repair-{token}"

    def _key(self, key: str) -> str:
        if len(key) + len(self._suffix) <= MAX_KEY:
            return key + self._suffix
        return f"billsync:{hashlib.sha256(key.encode()).hexdigest()[:40]}{self._suffix}"

    def create_customer(
        self, *, name: str, email: str | None, metadata: Mapping[str, str], idempotency_key: str
    ) -> str:
        return self._gateway.create_customer(
            name=name, email=email, metadata=metadata, idempotency_key=self._key(idempotency_key)
        )

    def create_draft_invoice(
        self,
        *,
        customer: str,
        currency: str,
        description: str,
        metadata: Mapping[str, str],
        idempotency_key: str,
        inherit_discounts: bool = True,
        statement_url: str | None = None,
    ) -> RemoteInvoice:
        return self._gateway.create_draft_invoice(
            customer=customer, currency=currency, description=description, metadata=metadata,
            idempotency_key=self._key(idempotency_key), inherit_discounts=inherit_discounts,
            statement_url=statement_url,
        )  # fmt: skip

    def find_draft_invoices(
        self, *, customer: str, metadata_key: str, value: str
    ) -> list[RemoteInvoice]:
        return self._gateway.find_draft_invoices(
            customer=customer, metadata_key=metadata_key, value=value
        )

    def list_invoices(self, *, customer: str) -> list[RemoteInvoice]:
        return self._gateway.list_invoices(customer=customer)

    def get_invoice(self, invoice_id: str, *, with_lines: bool) -> RemoteInvoice:
        return self._gateway.get_invoice(invoice_id, with_lines=with_lines)

    def add_lines(
        self, invoice_id: str, lines: Sequence[NewLine], *, idempotency_key: str
    ) -> RemoteInvoice:
        return self._gateway.add_lines(
            invoice_id, lines, idempotency_key=self._key(idempotency_key)
        )

    def update_lines(
        self, invoice_id: str, changes: Sequence[LineChange], *, idempotency_key: str
    ) -> RemoteInvoice:
        return self._gateway.update_lines(
            invoice_id, changes, idempotency_key=self._key(idempotency_key)
        )

    def remove_lines(
        self, invoice_id: str, line_item_ids: Sequence[str], *, idempotency_key: str
    ) -> RemoteInvoice:
        return self._gateway.remove_lines(
            invoice_id, line_item_ids, idempotency_key=self._key(idempotency_key)
        )

    def finalize(
        self, invoice_id: str, *, auto_advance: bool, idempotency_key: str
    ) -> RemoteInvoice:
        return self._gateway.finalize(
            invoice_id, auto_advance=auto_advance, idempotency_key=self._key(idempotency_key)
        )

    def delete_draft(self, invoice_id: str, *, idempotency_key: str) -> None:
        self._gateway.delete_draft(invoice_id, idempotency_key=self._key(idempotency_key))

    def create_portal_session(self, *, customer: str, return_url: str | None) -> str:
        return self._gateway.create_portal_session(customer=customer, return_url=return_url)

    def list_events(self, *, created_gte: int, starting_after: str | None = None) -> EventPage:
        return self._gateway.list_events(created_gte=created_gte, starting_after=starting_after)


def _gone(failure: StripeFailure) -> bool:
    return isinstance(failure, StripeRejected) and (failure.missing)


class Reconciler:
    def __init__(
        self,
        database: Database,
        gateway: StripePort,
        sync: SyncService,
        clock: Clock,
        *,
        finalized_lookback: timedelta = timedelta(days=62),
        lane: Lane = Lane.INTERVAL,
    ) -> None:
        self.database = database
        self.gateway = gateway
        self.sync = sync
        self.clock = clock
        self.finalized_lookback = finalized_lookback
        self.lane = lane

    # --- reconciling --------------------------------------------------------------------

    def reconcile(
        self, account_id: str | None = None, *, repair: bool, lane: Lane | None = None
    ) -> ReconcileReport:
        """Compare one account (or every account with invoices or open drift problems) with
        Stripe, record what differs, and with ``repair`` fix what is billsync's own."""
        lane = self.lane if lane is None else lane
        report = ReconcileReport(repair=repair)
        for target in self._targets(account_id):
            self._reconcile_account(target, repair=repair, lane=lane, report=report)
        log.info(
            "reconcile.done",
            extra={
                "accounts": report.accounts,
                "drift": len(report.items),
                "repaired": len(report.repaired),
                "errors": len(report.errors),
            },
        )
        return report

    def _targets(self, account_id: str | None) -> list[str]:
        with self.database.read() as connection:
            if account_id is not None:
                if repository.get_account(connection, account_id) is None:
                    raise NotFound(f"no account '{account_id}'", code="account_not_found")
                return [account_id]
            periods = repository.periods_with_status(
                connection, [*DRAFT_STATUSES, PeriodStatus.FINALIZED]
            )
            targets = {period.account_id for period in periods if self._in_scope(period)}
            targets |= {
                problem.account_id
                for problem in problem_repository.open_problems(connection)
                if problem.kind in DRIFT_KINDS and problem.account_id is not None
            }
        return sorted(targets)

    def _reconcile_account(
        self, account_id: str, *, repair: bool, lane: Lane, report: ReconcileReport
    ) -> None:
        check = self._check(account_id, lane)
        items, accepted, closed = self._record(account_id, check)
        report.accounts += 1
        report.invoices += check.invoices
        report.accepted += accepted
        report.closed += closed
        errors = list(check.errors)
        to_repair = [item for item in items if item.repairable]
        if repair and to_repair:
            error = self._repair(account_id, to_repair, lane)
            check = self._check(account_id, lane)
            errors = list(check.errors)
            if error is not None:
                errors.append(ReconcileError(account_id, None, None, error))
            items = [
                replace(item, repaired=item.repairable and check.fixed(item)) for item in items
            ]
            now = self.clock.now()
            with self.database.transaction() as connection:
                for item in items:
                    if item.repaired and item.problem_id is not None:
                        problem_repository.resolve(connection, item.problem_id, REPAIRED, now)
            report.closed += sum(1 for item in items if item.repaired)
            found, _, closed = self._record(account_id, check)
            known = {item.fingerprint for item in items}
            items += [item for item in found if item.fingerprint not in known]  # new meanwhile
            report.closed += closed
        report.pending_lines += check.pending
        report.errors += errors
        report.items += items

    # --- comparing --------------------------------------------------------------------

    def _call(self, lane: Lane, call: Callable[[], T]) -> T:
        """A Stripe call through the process's rate budget and circuit breaker."""
        with self.sync.guard.call(lane, endpoint_of(call)):
            return call()

    def _read(self, invoice_id: str, lane: Lane, *, with_lines: bool) -> RemoteInvoice | None:
        """The invoice, or None when Stripe says it does not exist."""
        try:
            return self._call(
                lane, partial(self.gateway.get_invoice, invoice_id, with_lines=with_lines)
            )
        except StripeFailure as failure:
            if _gone(failure):
                return None
            raise

    def _in_scope(self, period: PeriodRow) -> bool:
        """Periods with an invoice: drafts, and invoices finalized within the look-back."""
        if period.stripe_invoice_id is None:
            return False
        if period.status is not PeriodStatus.FINALIZED or period.finalized_at is None:
            return True
        return period.finalized_at >= self.clock.now() - self.finalized_lookback

    def _check(self, account_id: str, lane: Lane) -> _Check:
        with self.database.read() as connection:
            account = repository.get_account(connection, account_id)
            periods = [
                period
                for period in repository.periods_with_status(
                    connection, [*DRAFT_STATUSES, PeriodStatus.FINALIZED], account_id=account_id
                )
                if self._in_scope(period)
            ]
            lines = repository.lines_of(connection, account_id, [p.start for p in periods])
            accepted = problem_repository.accepted_amounts(connection, account_id)
        check = _Check(currency=account.currency if account is not None else "", accepted=accepted)
        for period in periods:
            mine = [line for line in lines if line.period_start == period.start]
            try:
                if period.status is PeriodStatus.FINALIZED:
                    self._check_finalized(period, mine, lane, check)
                else:
                    self._check_draft(period, mine, lane, check)
                check.checked.add(period.start)
            except StripeFailure as failure:
                check.errors.append(
                    ReconcileError(
                        account_id,
                        period.start,
                        period.stripe_invoice_id,
                        f"{type(failure).__name__}: {failure}",
                    )
                )
        return check

    def _item(
        self,
        check: _Check,
        period: PeriodRow,
        kind: str,
        detail: str,
        *,
        line: SyncLine | None = None,
        stripe_line: str | None = None,
        ledger_amount: int | None = None,
        stripe_amount: int | None = None,
        invoice_id: str | None = None,
    ) -> None:
        check.items.append(
            DriftItem(
                account=period.account_id,
                period_start=period.start,
                invoice_id=invoice_id or period.stripe_invoice_id,
                kind=kind,
                line_id=None if line is None else line.id,
                stripe_line_item_id=stripe_line,
                ledger_amount=ledger_amount,
                stripe_amount=stripe_amount,
                repairable=kind in REPAIRABLE,
                repaired=False,
                detail=detail,
                currency=check.currency,
            )
        )

    def _money(self, check: _Check, amount: int | None) -> str:
        return "-" if amount is None else format_minor(amount, check.currency)

    def _check_finalized(
        self, period: PeriodRow, mine: list[SyncLine], lane: Lane, check: _Check
    ) -> None:
        invoice_id = period.stripe_invoice_id
        assert invoice_id is not None
        ledger_total = sum(line.amount for line in mine)
        remote = self._read(invoice_id, lane, with_lines=False)
        if remote is None:
            self._item(
                check, period, DELETED,
                f"the finalized invoice {invoice_id} does not exist in Stripe",
                ledger_amount=ledger_total,
            )  # fmt: skip
            return
        check.invoices += 1
        if remote.status == "void":
            self._item(
                check, period, VOIDED,
                f"the finalized invoice was voided in Stripe (billsync never voids); the "
                f"ledger's lines total {self._money(check, ledger_total)}",
                ledger_amount=ledger_total, stripe_amount=remote.total,
            )  # fmt: skip
        elif remote.total + remote.discount != _charged(mine, check.accepted):
            # A coupon is Stripe's, not drift; nor is an amount a person accepted for a line
            # (core.line_state: Stripe charges its own amount for it).
            self._item(
                check, period, TOTAL,
                f"the finalized invoice ({remote.status}) totals "
                f"{self._money(check, remote.total)}; the ledger's lines total "
                f"{self._money(check, ledger_total)}",
                ledger_amount=ledger_total, stripe_amount=remote.total,
            )  # fmt: skip

    def _check_draft(
        self, period: PeriodRow, mine: list[SyncLine], lane: Lane, check: _Check
    ) -> None:
        invoice_id = period.stripe_invoice_id
        assert invoice_id is not None
        ledger_total = sum(line.amount for line in mine)
        remote = self._read(invoice_id, lane, with_lines=True)
        if remote is None:
            self._item(
                check, period, DELETED,
                f"the draft {invoice_id} no longer exists in Stripe (deleted) while the period "
                f"is {period.status.value}",
                ledger_amount=ledger_total,
            )  # fmt: skip
            return
        check.invoices += 1
        if remote.status == "void":
            self._item(
                check, period, VOIDED,
                f"the invoice was voided in Stripe while the period is {period.status.value}; "
                f"the ledger's lines total {self._money(check, ledger_total)}",
                ledger_amount=ledger_total, stripe_amount=remote.total,
            )  # fmt: skip
            return
        if remote.status != "draft":
            if period.finalize_requested_at is None:
                self._item(
                    check, period, FINALIZED_ELSEWHERE,
                    f"the draft was finalized in Stripe ({remote.status}, total "
                    f"{self._money(check, remote.total)}) while the period is "
                    f"{period.status.value}; the ledger's lines total "
                    f"{self._money(check, ledger_total)}",
                    ledger_amount=ledger_total, stripe_amount=remote.total,
                )  # fmt: skip
            # else: billsync's own finalization, not recorded yet; the sync engine records it.
            return
        self._compare_lines(period, mine, remote, check)

    def _compare_lines(
        self, period: PeriodRow, mine: list[SyncLine], remote: RemoteInvoice, check: _Check
    ) -> None:
        """The draft against the ledger (core.drift, the comparison verify makes too)."""
        namespace = self.sync.namespace
        compared = drift.compare_lines(
            [
                drift.OurLine(line.id, line.amount, line.version, line.synced_version,
                              line.synced_amount, line.stripe_line_item_id, line.rollup_key)
                for line in mine
            ],
            [
                drift.their_line(r.line_item_id, r.amount, r.metadata, r.description or "",
                                 namespace)
                for r in remote.lines
            ],
            complete=period.status in COMPLETE_STATUSES, final=False,
        )  # fmt: skip
        check.pending += compared.pending
        check.in_step |= compared.in_step
        ledger = {line.id: line for line in mine}
        for difference in compared.differences:
            self._report(period, difference, ledger, check)

    def _report(
        self,
        period: PeriodRow,
        difference: drift.LineDifference,
        ledger: dict[int, SyncLine],
        check: _Check,
    ) -> None:
        money = partial(self._money, check)
        line = None if difference.line is None else drift.as_item(ledger, difference.line)
        stripe = difference.stripe
        kind = difference.kind
        if kind in (EXTRA, FOREIGN):
            assert stripe is not None
            what = (
                f"billsync line {stripe.line_id}" if kind == FOREIGN
                else f"written by the billsync installation {stripe.namespace!r}"
                if stripe.namespace != self.sync.namespace
                else "no billsync metadata"
            )  # fmt: skip
            self._item(
                check, period, kind,
                f"{stripe.line_item_id} ({stripe.description or 'no description'}, "
                f"{money(stripe.amount)}) is not a line of this period's ledger ({what}): "
                "added in Stripe",
                stripe_line=stripe.line_item_id, stripe_amount=stripe.amount,
            )  # fmt: skip
            return
        assert line is not None
        if kind == DUPLICATE:
            assert stripe is not None
            self._item(
                check, period, DUPLICATE,
                f"{line.key} is on the draft {difference.copies} times: {stripe.line_item_id} "
                f"({money(stripe.amount)}) is an extra copy",
                line=line, stripe_line=stripe.line_item_id,
                ledger_amount=line.amount, stripe_amount=stripe.amount,
            )  # fmt: skip
        elif kind == REMOVED:
            self._item(
                check, period, REMOVED,
                f"{line.key} ({money(line.synced_amount)}) was on the draft as "
                f"{line.stripe_line_item_id} and is gone: removed in Stripe; the ledger has "
                f"{money(line.amount)}",
                line=line, stripe_line=line.stripe_line_item_id, ledger_amount=line.amount,
            )  # fmt: skip
        elif kind == MISSING:
            self._item(
                check, period, MISSING,
                f"{line.key} ({money(line.amount)}) is not on the draft, although the period "
                f"is in {period.status.value}",
                line=line, ledger_amount=line.amount,
            )  # fmt: skip
        else:
            assert stripe is not None
            self._item(
                check, period, AMOUNT,
                f"{line.key}: Stripe shows {money(stripe.amount)}, billsync pushed "
                f"{money(line.synced_amount)} (version {line.synced_version}) and the ledger "
                f"has {money(line.amount)}: edited in Stripe",
                line=line, stripe_line=stripe.line_item_id,
                ledger_amount=line.amount, stripe_amount=stripe.amount,
            )  # fmt: skip

    # --- recording ----------------------------------------------------------------------

    def _record(self, account_id: str, check: _Check) -> tuple[list[DriftItem], int, int]:
        """Record the check's items as problems and close the account's drift problems that
        were not found again. Returns the items (with their problem ids; drift a person
        accepted and that is unchanged is left out), how many were accepted, how many closed."""
        now = self.clock.now()
        items: list[DriftItem] = []
        accepted = 0
        present: set[str] = set()
        with self.database.transaction() as connection:
            for item in check.items:
                earlier = problem_repository.find(connection, item.fingerprint)
                if earlier is not None and _still_accepted(earlier, item):
                    accepted += 1
                    continue
                present.add(item.fingerprint)
                problem_id = problem_repository.report(
                    connection,
                    NewProblem(
                        kind=item.kind,
                        fingerprint=item.fingerprint,
                        detail=item.detail,
                        account_id=item.account,
                        period_start=item.period_start,
                        stripe_object_id=(
                            item.invoice_id
                            if item.kind not in LINE_KINDS | STRIPE_LINE_KINDS
                            else item.stripe_line_item_id
                        ),
                        line_id=item.line_id,
                        ledger_amount=item.ledger_amount,
                        stripe_amount=item.stripe_amount,
                        repairable=item.repairable,
                    ),
                    now,
                )
                items.append(replace(item, problem_id=problem_id))
            # What was not read (Stripe failed, or a finalized period past the look-back) is not
            # known to be fixed: its problems stay open.
            present |= {
                problem.fingerprint
                for problem in problem_repository.open_problems(connection, account_id)
                if problem.kind in DRIFT_KINDS and problem.period_start not in check.checked
            }
            closed = problem_repository.resolve_missing(
                connection,
                kinds=DRIFT_KINDS,
                account_id=account_id,
                still_present=present,
                now=now,
            )
        return items, accepted, closed

    # --- repairing ----------------------------------------------------------------------

    def _repush(self, account_id: str, lane: Lane) -> SyncOutcome:
        """Sync the account with idempotency keys of its own (see :class:`_RepairKeys`)."""
        sync = self.sync
        service = SyncService(
            sync.database, _RepairKeys(self.gateway, uuid.uuid4().hex[:16]), sync.catalog,
            sync.clock, guard=sync.guard, delete_zero_total=sync.delete_zero_total,
            leases=sync.leases, lease_wait=sync.lease_wait,
        )  # fmt: skip
        return service.sync_account(account_id, lane=lane)

    def _remove(self, invoice_id: str, line_item_ids: Sequence[str], lane: Lane) -> None:
        """Take lines off a draft (billsync's extra copies, or a line a person wants gone)."""
        key = idempotency_key_for_ids(
            "reconcile-remove", invoice_id, line_item_ids, namespace=self.sync.namespace
        )
        try:
            self._call(
                lane,
                partial(self.gateway.remove_lines, invoice_id, line_item_ids, idempotency_key=key),
            )
        except StripeFailure as failure:
            if not _gone(failure):
                raise

    def _repair(self, account_id: str, items: Sequence[DriftItem], lane: Lane) -> str | None:
        """Make Stripe show the ledger for billsync's own lines, under the account's lease (no
        worker syncs it meanwhile). Returns an error, if any."""
        leases = self.sync.leases
        if leases is None:
            return self._repair_held(account_id, items, lane)
        try:
            with leases.hold(account_id, wait=self.sync.lease_wait):
                return self._repair_held(account_id, items, lane)
        except AccountBusy as busy:
            return f"not repaired now: {busy}; try again once that sync is done"

    def _repair_held(self, account_id: str, items: Sequence[DriftItem], lane: Lane) -> str | None:
        try:
            copies: dict[str, list[str]] = {}
            for item in items:
                if item.kind == DUPLICATE and item.invoice_id and item.stripe_line_item_id:
                    copies.setdefault(item.invoice_id, []).append(item.stripe_line_item_id)
            for invoice_id, line_item_ids in copies.items():
                self._remove(invoice_id, line_item_ids, lane)
        except StripeFailure as failure:
            return f"removing duplicate lines failed: {type(failure).__name__}: {failure}"
        resync = [item for item in items if item.kind in (MISSING, AMOUNT)]
        if not resync:
            return None
        with self.database.transaction() as connection:
            repository.forget_lines(
                connection, [i.line_id for i in resync if i.kind == MISSING and i.line_id]
            )
            for item in resync:
                if item.kind == AMOUNT:
                    _mark_edited(connection, item)
        outcome = self._repush(account_id, lane)
        return None if outcome.ok else f"re-push failed: {outcome.error}"

    # --- what a person decides ----------------------------------------------------------
    # ``services.support`` takes each decision in its own transaction, with the audit entry:
    # the steps below that receive a connection run in that transaction. ``accept_stripe`` and
    # ``repush_ledger`` are the same decisions for callers that keep no audit.

    def open_problem(self, connection: Connection, problem_id: int) -> ProblemRecord:
        """The drift problem a person decides on, still open, about an account period."""
        problem = problem_repository.get(connection, problem_id)
        if problem is None or problem.kind not in DRIFT_KINDS:
            raise NotFound(f"no drift problem {problem_id}", code="problem_not_found")
        if problem.resolved_at is not None:
            raise _resolved(problem)
        if problem.account_id is None or problem.period_start is None:
            raise Conflict(f"problem {problem_id} names no account period", code="not_drift")
        return problem

    def accept(self, connection: Connection, problem: ProblemRecord, now: datetime) -> Decision:
        """Keep what Stripe shows. Lines: billsync leaves the line as Stripe has it and stops
        reporting it while it stays as accepted (a change on either side reports it again).
        Invoices voided, deleted or finalized in Stripe: billsync stops syncing the period."""
        if problem.kind not in ACCEPT_NOTES:
            raise Conflict(
                f"{problem.kind} is billsync's own line: repair it (re-push the ledger)",
                code="not_acceptable",
            )
        assert problem.account_id is not None
        assert problem.period_start is not None
        if problem.kind == AMOUNT and problem.line_id is not None:
            named = [
                line
                for line in repository.lines_of(
                    connection, problem.account_id, [problem.period_start]
                )
                if line.id == problem.line_id
            ]
            if named and named[0].rollup_key is not None:
                # Stripe's amount for an item of many lines says nothing of each line's: the
                # ledger cannot keep it line by line (core.rollup).
                raise Conflict(
                    "the edited item rolls up many ledger lines: Stripe's amount cannot be "
                    "kept for each of them — re-push the ledger, or correct it with an "
                    "adjustment",
                    code="rolled_up_item",
                )
        resolution = (ACCEPTED + ACCEPT_NOTES[problem.kind])[:200]
        period = repository.get_period(connection, problem.account_id, problem.period_start)
        if problem.kind in (VOIDED, DELETED, FINALIZED_ELSEWHERE) and period is not None:
            # The account's ledger lock before its rows, the order ingest keeps (the period
            # stops taking usage here if it was still open).
            lock_accounts(connection, [problem.account_id])
            if problem.kind == DELETED:
                repository.set_invoice(
                    connection, problem.account_id, problem.period_start, None, now
                )
            if period.status is not PeriodStatus.FINALIZED:
                repository.mark_finalized(connection, problem.account_id, problem.period_start, now)
        if not problem_repository.resolve(connection, problem.id, resolution, now):
            raise _resolved(problem)  # another person decided meanwhile
        log.info("reconcile.accepted", extra={"problem": problem.id, "kind": problem.kind})
        return Decision(problem.id, problem.kind, True, resolution)

    def repush(self, connection: Connection, problem: ProblemRecord, now: datetime) -> Repush:
        """Make Stripe show the ledger again, the decision: billsync's side is set to push the
        line again (a removed or missing line is forgotten, an edited one marked as what Stripe
        holds, a voided or deleted invoice's period put on a new draft). :meth:`carry_out`
        then calls Stripe, after the transaction."""
        account_id, start = problem.account_id, problem.period_start
        assert account_id is not None
        assert start is not None
        if problem.kind in (TOTAL, FINALIZED_ELSEWHERE):
            raise Conflict(
                "the invoice is finalized in Stripe and can no longer be changed: void it in "
                "Stripe first, then re-push the ledger onto a new draft",
                code="invoice_finalized",
            )
        period = repository.get_period(connection, account_id, start)
        if period is None or period.status is PeriodStatus.FINALIZED:
            raise Conflict(
                f"the period {start} of {account_id} is finalized in billsync",
                code="period_finalized",
            )
        # The engine leaves removed lines out while the problem is open: the decision is taken
        # now, and reported again if carrying it out fails.
        if problem.kind == REMOVED and not problem_repository.resolve(
            connection, problem.id, REPUSHED, now
        ):
            raise _resolved(problem)
        if problem.kind in (MISSING, REMOVED) and problem.line_id is not None:
            repository.forget_lines(connection, [problem.line_id])
        elif problem.kind == AMOUNT:
            _mark_edited(connection, _subject(problem))
        elif problem.kind in (VOIDED, DELETED):
            lines = repository.lines_of(connection, account_id, [start])
            repository.set_invoice(connection, account_id, start, None, now)
            repository.forget_lines(connection, [line.id for line in lines])
        return Repush(problem, period.stripe_invoice_id)

    def carry_out(self, repush: Repush) -> Decision:
        """Take the lines billsync did not add off the draft, or sync the account; resolves the
        problem once Stripe is read back fixed."""
        problem = repush.problem
        account_id = problem.account_id
        assert account_id is not None
        lane = Lane.ON_DEMAND
        error: str | None = None
        try:
            if problem.kind in (EXTRA, DUPLICATE):
                if repush.invoice_id and problem.stripe_object_id:
                    self._remove(repush.invoice_id, [problem.stripe_object_id], lane)
            else:
                error = self._repush(account_id, lane).error
        except StripeFailure as failure:
            error = f"{type(failure).__name__}: {failure}"
        if error is not None:
            return Decision(problem.id, problem.kind, False, None, error)
        check = self._check(account_id, lane)
        if not check.fixed(_subject(problem)):
            return Decision(
                problem.id, problem.kind, False, None, "Stripe still differs after re-pushing"
            )
        with self.database.transaction() as connection:
            problem_repository.resolve(connection, problem.id, REPUSHED, self.clock.now())
        self._record(account_id, check)
        log.info("reconcile.repushed", extra={"problem": problem.id, "kind": problem.kind})
        return Decision(problem.id, problem.kind, True, REPUSHED)

    def accept_stripe(self, problem_id: int) -> Decision:
        """Keep what Stripe shows (see :meth:`accept`)."""
        with self.database.transaction() as connection:
            problem = self.open_problem(connection, problem_id)
            return self.accept(connection, problem, self.clock.now())

    def repush_ledger(self, problem_id: int) -> Decision:
        """Make Stripe show the ledger again (see :meth:`repush`)."""
        with self.database.transaction() as connection:
            problem = self.open_problem(connection, problem_id)
            repush = self.repush(connection, problem, self.clock.now())
        return self.carry_out(repush)


@dataclass(frozen=True)
class Repush:
    """A decision to re-push the ledger, taken: what carrying it out needs."""

    problem: ProblemRecord
    invoice_id: str | None


def _resolved(problem: ProblemRecord) -> Conflict:
    return Conflict(
        f"problem {problem.id} is already resolved"
        + (f" ({problem.resolution})" if problem.resolution else ""),
        code="problem_resolved",
    )


def _charged(mine: Sequence[SyncLine], accepted: Mapping[int, tuple[int, int]]) -> int:
    """What Stripe charges for these lines: each line's amount, or Stripe's amount a person
    accepted for it (``core.line_state.charged``)."""
    return sum(
        line_state.charged(
            line_state.line_sync(
                line.amount, line.version, line.synced_version, line.synced_amount,
                accepted=accepted.get(line.id),
            )
        )
        for line in mine
    )  # fmt: skip


def _still_accepted(earlier: ProblemRecord, item: DriftItem) -> bool:
    """A person accepted Stripe's version of this very difference, and neither side moved."""
    return (
        earlier.resolved_at is not None
        and (earlier.resolution or "").startswith(ACCEPTED)
        and earlier.ledger_amount == item.ledger_amount
        and earlier.stripe_amount == item.stripe_amount
    )


def _mark_edited(connection: Connection, item: DriftItem) -> None:
    assert item.line_id is not None
    assert item.stripe_line_item_id is not None
    assert item.stripe_amount is not None
    repository.mark_stripe_holds(
        connection, item.line_id, item.stripe_line_item_id, item.stripe_amount
    )


def _subject(problem: ProblemRecord) -> DriftItem:
    """The drift item a problem was recorded from (enough of it for its fingerprint)."""
    assert problem.account_id is not None
    assert problem.period_start is not None
    kind = problem.kind
    return DriftItem(
        account=problem.account_id,
        period_start=problem.period_start,
        invoice_id=problem.stripe_object_id if kind not in LINE_KINDS | STRIPE_LINE_KINDS else None,
        kind=kind,
        line_id=problem.line_id,
        stripe_line_item_id=problem.stripe_object_id
        if kind in LINE_KINDS | STRIPE_LINE_KINDS
        else None,
        ledger_amount=problem.ledger_amount,
        stripe_amount=problem.stripe_amount,
        repairable=problem.repairable,
        repaired=False,
        detail=problem.detail,
    )
