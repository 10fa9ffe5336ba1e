"""The billing period lifecycle: open → closing → review → finalized (held stops the clock).

- **open**: the period is running; syncs keep its draft current per the account's policy.
- **closing**: the period ended; usage still arriving within the grace window lands on it.
- **review**: grace is over: the period takes no more usage (what arrives for it now is late
  usage on the next period), its final state is pushed to Stripe's draft, and once the draft is
  complete the review window starts; support may hold, adjust or approve until it ends.

The moment a period stops taking usage (end of grace, approve now, hold) is one conditional
status change taken under the account's ledger lock, the one ingest holds while it places
usage (``repositories.sync.transition``): every accepted event is either on the period before
that moment, and so in the final sync's snapshot, or on the next period as a late line.
Every status change is conditional on the status it expects, never read-then-write.
- **held**: a person stopped the clock; release restarts it with the time that was left.
- **finalized**: billsync asked Stripe to finalize (``auto_advance=true``: Stripe collects);
  Stripe is the truth from here. Usage for it arriving later lands on the next open period.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import Connection

from billsync.clock import Clock
from billsync.core.line_state import is_pending
from billsync.core.periods import PeriodStatus
from billsync.db.database import Database
from billsync.errors import Conflict, NotFound
from billsync.repositories import commitments, credits
from billsync.repositories import sync as repository
from billsync.repositories.sync import PeriodRow
from billsync.services.sync import SyncService
from billsync.sync.lanes import CLOSING

log = logging.getLogger("billsync.lifecycle")


@dataclass(frozen=True)
class LifecycleSettings:
    grace: timedelta = timedelta(hours=1)
    review_window: timedelta = timedelta(hours=1)


@dataclass
class AdvanceReport:
    closing: list[tuple[str, date]] = field(default_factory=list)
    review: list[tuple[str, date]] = field(default_factory=list)
    finalized: list[tuple[str, date]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def _end(period: PeriodRow) -> datetime:
    return datetime.combine(period.end, time(), tzinfo=UTC)


class LifecycleService:
    def __init__(
        self,
        database: Database,
        clock: Clock,
        sync: SyncService,
        settings: LifecycleSettings | None = None,
    ) -> None:
        self.database = database
        self.clock = clock
        self.sync = sync
        self.settings = settings or LifecycleSettings()

    def advance(
        self, now: datetime | None = None, *, limit: int = 500, sync: bool = True
    ) -> AdvanceReport:
        """Run the transitions that are due at ``now`` (default: the clock), at most ``limit``
        periods per step: each step reads only the periods that are due (by status and date),
        not every open period.

        ``sync=False`` (the scheduler): only the state changes — stop usage, start a review
        window once the draft is complete, request the finalize. The syncs they call for are
        the workers' (every worker claims accounts with a period to complete or finalize, in
        the closing lane, ``repositories.sync.due_for_closing``), paced by the budget, instead
        of one after the other in the tick. ``sync=True`` (``billsync periods advance``, tests):
        each sync runs here, and the report says what happened."""
        now = now or self.clock.now()
        report = AdvanceReport()
        with self.database.transaction() as connection:
            report.closing += repository.start_closing(connection, now.date(), now, limit)
            credits.expire_due(connection, now)  # prepaid credit past its expiry: audited
        if not sync:
            self._advance_states(now, limit, report)
            return report
        with self.database.read() as connection:
            closing = repository.closing_due(connection, (now - self.settings.grace).date(), limit)
        for period in closing:
            if _end(period) + self.settings.grace <= now:
                self._stop_usage(period, now, report, inline=sync)
        with self.database.read() as connection:
            in_review = repository.reviews_due(connection, now, limit)
        for period in in_review:
            if period.review_ends_at is None:
                self._complete_draft(period, now, report, inline=sync)
            else:
                self._finalize(
                    period.account_id, period.start, now, report,
                    requested=period.finalize_requested_at, inline=sync,
                )  # fmt: skip
        return report

    def _advance_states(self, now: datetime, limit: int, report: AdvanceReport) -> None:
        """The scheduler's step: a few set-based statements, whatever the number of periods
        at the month's end (a tick stays cheap when 100,000 periods close at once)."""
        ended_by = (now - self.settings.grace).date()
        with self.database.transaction() as connection:
            stopped = repository.stop_usage_due(connection, ended_by, now, limit)
            # Their usage is final: minimum commitments are topped up, then prepaid credit
            # drawn down (core.commitment, core.credits).
            book_closing_lines(connection, stopped, now)
            # Drafts Stripe already holds whole start their window now; the others once the
            # closing lane has pushed them (``drafts_completed``).
            report.review += repository.start_windows_in_step(
                connection, [account_id for account_id, _ in stopped],
                now + self.settings.review_window, now,
            )  # fmt: skip
        with self.database.transaction() as connection:
            repository.request_finalize_due(connection, now, limit)

    def drafts_completed(self, account_id: str) -> list[date]:
        """After a sync of the account: the review window of each of its periods in review
        whose draft Stripe now holds whole starts now. Returns those periods."""
        now = self.clock.now()
        with self.database.read() as connection:
            waiting = [
                period
                for period in repository.periods_with_status(
                    connection, [PeriodStatus.REVIEW], account_id=account_id
                )
                if period.review_ends_at is None
            ]
        started = []
        for period in waiting:
            if not self._in_step(account_id, period.start):
                continue
            with self.database.transaction() as connection:
                if repository.start_review_window(
                    connection, account_id, period.start, now + self.settings.review_window, now
                ):
                    started.append(period.start)
        return started

    def _in_step(self, account_id: str, start: date) -> bool:
        with self.database.read() as connection:
            period = repository.get_period(connection, account_id, start)
            lines = repository.lines_of(connection, account_id, [start])
        if period is None:
            return False
        if not lines:
            return True
        return period.stripe_invoice_id is not None and not any(
            is_pending(line.version, line.synced_version, line.amount, line.synced_amount)
            for line in lines
        )

    def _stop_usage(
        self, period: PeriodRow, now: datetime, report: AdvanceReport, *, inline: bool
    ) -> None:
        """Grace is over: the period takes no more usage, then its draft is completed."""
        with self.database.transaction() as connection:
            stopped = repository.transition(
                connection, period.account_id, period.start, [PeriodStatus.CLOSING],
                to=PeriodStatus.REVIEW, now=now, review_ends_at=None,
            )  # fmt: skip
            if stopped:
                book_closing_lines(connection, [(period.account_id, period.start)], now)
        if stopped:
            self._complete_draft(period, now, report, inline=inline)

    def _complete_draft(
        self, period: PeriodRow, now: datetime, report: AdvanceReport, *, inline: bool
    ) -> None:
        """Push the period's final state; once Stripe's draft holds all of it, the review
        window starts. A failure is retried at the next tick."""
        if not inline:
            if not self._in_step(period.account_id, period.start):
                return  # a worker pushes it (closing lane); a later tick starts the window
        else:
            outcome = self.sync.sync_account(period.account_id, lane=CLOSING)
            if not outcome.ok or not self._in_step(period.account_id, period.start):
                report.failed.append((period.account_id, outcome.error or "draft not complete yet"))
                return
        with self.database.transaction() as connection:
            started = repository.start_review_window(
                connection, period.account_id, period.start, now + self.settings.review_window,
                now,
            )  # fmt: skip
        if started:
            report.review.append((period.account_id, period.start))

    def _finalize(
        self,
        account_id: str,
        start: date,
        now: datetime,
        report: AdvanceReport,
        *,
        requested: datetime | None = None,
        inline: bool = True,
    ) -> None:
        if requested is None:
            with self.database.transaction() as connection:
                repository.update_period(
                    connection, account_id, start, now, finalize_requested_at=now
                )
                repository.mark_behind(connection, [account_id])
        if not inline:
            return  # a worker finalizes it (closing lane)
        outcome = self.sync.sync_account(account_id, lane=CLOSING)
        if start in outcome.finalized:
            report.finalized.append((account_id, start))
        else:
            report.failed.append((account_id, outcome.error or "not finalized"))

    # --- what support does -----------------------------------------------------------
    # ``services.support`` takes each decision in its own transaction, with the audit entry:
    # the ``*_period`` steps receive that transaction. ``hold``, ``release`` and
    # ``approve_now`` are the same steps for callers that keep no audit (tests, scripts).

    def hold_period(
        self, connection: Connection, account_id: str, start: date, now: datetime
    ) -> None:
        """Stop the clock: the period will not finalize until released."""
        period = _period_in(connection, account_id, start)
        if period.status not in (PeriodStatus.OPEN, PeriodStatus.CLOSING, PeriodStatus.REVIEW):
            raise Conflict(f"a {period.status} period cannot be held", code="period_not_holdable")
        if period.finalize_requested_at is not None:
            raise Conflict(
                "the period was approved and is being finalized: it can no longer be held",
                code="period_not_holdable",
            )
        remaining = None
        if period.review_ends_at is not None:
            remaining = max(0, int((period.review_ends_at - now).total_seconds()))
        held = repository.transition(
            connection, account_id, start, [period.status], to=PeriodStatus.HELD, now=now,
            not_finalizing=True, held_from=period.status.value,
            hold_remaining_seconds=remaining, review_ends_at=None,
        )  # fmt: skip
        if not held:
            raise _changed_meanwhile(account_id, start)

    def release_period(
        self, connection: Connection, account_id: str, start: date, now: datetime
    ) -> None:
        """Restart the clock where it stopped."""
        period = _period_in(connection, account_id, start)
        if period.status is not PeriodStatus.HELD:
            raise Conflict("only a held period can be released", code="period_not_held")
        back = PeriodStatus(period.held_from or PeriodStatus.REVIEW.value)
        review_ends_at = None
        if back is PeriodStatus.REVIEW:
            left = period.hold_remaining_seconds
            review_ends_at = now + (
                timedelta(seconds=left) if left is not None else self.settings.review_window
            )
        released = repository.transition(
            connection, account_id, start, [PeriodStatus.HELD], to=back, now=now,
            held_from=None, hold_remaining_seconds=None, review_ends_at=review_ends_at,
        )  # fmt: skip
        if not released:
            raise _changed_meanwhile(account_id, start)
        if back is PeriodStatus.REVIEW:
            book_closing_lines(connection, [(account_id, start)], now)

    def approve_period(
        self, connection: Connection, account_id: str, start: date, now: datetime
    ) -> None:
        """Approve now (closing, review or held periods), the decision: the period stops taking
        usage (under the account's ledger lock) and its finalization is requested. The final
        sync, :meth:`finalize_approved`, runs after the transaction.

        Support's credits and charges: one added before this decision is in the final sync's
        snapshot — that sync pushes every line still pending to the draft before it asks Stripe
        to finalize — so the finalized invoice carries it; from this decision on, the period
        takes none (``services.adjustments`` reserves the period's row, which this transition
        updates, and refuses a period whose finalization is requested)."""
        period = _period_in(connection, account_id, start)
        approvable = (PeriodStatus.REVIEW, PeriodStatus.HELD, PeriodStatus.CLOSING)
        if period.status not in approvable:
            raise Conflict(
                f"a {period.status} period cannot be approved", code="period_not_approvable"
            )
        stopped = repository.transition(
            connection, account_id, start, approvable, to=PeriodStatus.REVIEW, now=now,
            held_from=None, hold_remaining_seconds=None, review_ends_at=now,
            finalize_requested_at=now,
        )  # fmt: skip
        if not stopped:
            raise _changed_meanwhile(account_id, start)
        book_closing_lines(connection, [(account_id, start)], now)
        repository.mark_behind(connection, [account_id])

    def finalize_approved(self, account_id: str, start: date) -> bool:
        """The final sync of an approved period: it reads everything the period holds and
        finalizes (usage accepted meanwhile is late usage on the next period, never lost
        between the two). Returns whether Stripe finalized it; if not, a worker retries."""
        report = AdvanceReport()
        now = self.clock.now()
        self._finalize(account_id, start, now, report, requested=now)
        return bool(report.finalized)

    def hold(self, account_id: str, start: date) -> None:
        with self.database.transaction() as connection:
            self.hold_period(connection, account_id, start, self.clock.now())

    def release(self, account_id: str, start: date) -> None:
        with self.database.transaction() as connection:
            self.release_period(connection, account_id, start, self.clock.now())

    def approve_now(self, account_id: str, start: date) -> bool:
        """Finalize now: returns whether Stripe finalized it."""
        with self.database.transaction() as connection:
            self.approve_period(connection, account_id, start, self.clock.now())
        return self.finalize_approved(account_id, start)


def book_closing_lines(
    connection: Connection, periods: list[tuple[str, date]], now: datetime
) -> None:
    """The lines a period gets when its usage becomes final, in this order: the top-up to the
    account's minimum commitment, then the prepaid credit drawn against the whole (each once;
    in the transaction that moves the periods to review)."""
    commitments.book_top_ups(connection, periods, now)
    credits.draw_credits(connection, periods, now)


def _period_in(connection: Connection, account_id: str, start: date) -> PeriodRow:
    period = repository.get_period(connection, account_id, start)
    if period is None:
        raise NotFound(
            f"account '{account_id}' has no billing period starting {start}",
            code="period_not_found",
        )
    return period


def _changed_meanwhile(account_id: str, start: date) -> Conflict:
    return Conflict(
        f"the {start} period of '{account_id}' changed meanwhile: look again, then retry",
        code="period_changed",
    )
