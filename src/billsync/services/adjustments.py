"""Credits and charges added by support: each becomes a line of the invoice of the period it is
made for.

The period is chosen: named by the caller (the period under dispute), or by default the oldest
one not finalized. A period whose invoice can still change takes adjustments — open, closing,
review, held — until its finalization is requested (an approval, or its review window over):
from then on its final sync may have read its lines already, and a line added after it would
never reach the invoice. A credit never makes an invoice negative: it is refused when it is
larger than what the period's invoice totals.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import Connection

from billsync.clock import Clock
from billsync.core.display import format_money
from billsync.core.money import MAX_STRIPE_AMOUNT
from billsync.core.periods import PeriodStatus
from billsync.core.request_keys import RequestKey
from billsync.db.database import Database
from billsync.errors import Conflict, InvalidRequest, NotFound
from billsync.repositories import adjustments as adjustment_repository
from billsync.repositories import console as console_repository
from billsync.repositories import ledger
from billsync.repositories import sync as repository
from billsync.repositories.accounts import AccountRecord, get_account
from billsync.repositories.sync import PeriodRow

# The periods whose invoice support can still change (one definition: the console's form lists
# these, and the service refuses the others).
ADJUSTABLE = (PeriodStatus.OPEN, PeriodStatus.CLOSING, PeriodStatus.REVIEW, PeriodStatus.HELD)


@dataclass(frozen=True, slots=True)
class Added:
    """An adjustment line, the period it is on, and its audit entry."""

    line_id: int
    amount: int  # minor units: negative for a credit
    currency: str
    period_start: date
    period_status: PeriodStatus
    entry_id: int

    @property
    def kind(self) -> str:
        return "credit" if self.amount < 0 else "charge"


class Adjustments:
    def __init__(self, database: Database, clock: Clock, default_anchor_day: int) -> None:
        self.database = database
        self.clock = clock
        self.default_anchor_day = default_anchor_day

    def add(
        self,
        account_id: str,
        *,
        amount: int,
        description: str,
        actor: str,
        reason: str,
        period_start: date | None = None,
        request: RequestKey | None = None,
    ) -> Added:
        """Add a credit (amount < 0) or a charge (> 0) in minor units to the invoice of the
        period starting ``period_start`` (default: the account's oldest period not finalized,
        or the current one when it has none). The line and its audit entry commit together."""
        if amount == 0 or abs(amount) > MAX_STRIPE_AMOUNT:
            raise InvalidRequest(
                f"an adjustment is a non-zero amount of at most {MAX_STRIPE_AMOUNT:,} minor "
                "units either way (Stripe's largest amount on one line); split a larger one",
                code="invalid_amount",
            )
        description = description.strip()
        if not description or len(description) > 200:
            raise InvalidRequest("describe the adjustment for the invoice (1–200 characters)")
        now = self.clock.now()
        kind = "credit" if amount < 0 else "charge"
        with self.database.transaction() as connection:
            # Adjustments are numbered per period (the line key ``adjustment[n]``) and may
            # create the period: under the account's ledger lock, which ingest also takes to
            # create periods, two at once queue instead of taking the same number.
            ledger.lock_accounts(connection, [account_id])
            account = get_account(connection, account_id)
            if account is None:
                raise NotFound(f"account '{account_id}' does not exist", code="account_not_found")
            period = self._period(connection, account, period_start)
            if not adjustment_repository.reserve_period(
                connection, account_id, period.start, ADJUSTABLE, now
            ):
                raise _not_adjustable(account_id, period)
            total = adjustment_repository.period_total(connection, account_id, period.start)
            if amount < 0 and total + amount < 0:
                raise InvalidRequest(
                    f"a credit of {format_money(-amount, account.currency)} is more than the "
                    f"invoice of the period starting {period.start} "
                    f"({format_money(total, account.currency)}): credit at most "
                    f"{format_money(max(total, 0), account.currency)} there — an invoice is "
                    "never negative; credit the rest on a later period",
                    code="credit_exceeds_invoice",
                )
            number = repository.count_adjustments(connection, account_id, period.start) + 1
            line_id = repository.add_adjustment_line(
                connection,
                account_id=account_id,
                period_start=period.start,
                key=f"adjustment[{number}]",
                description=f"{kind.title()}: {description}",
                amount=amount,
                currency=account.currency,
                now=now,
            )
            entry = console_repository.record(
                connection,
                actor=actor,
                action=f"adjustment.{kind}",
                now=now,
                account_id=account_id,
                period_start=period.start,
                reason=reason,
                detail={
                    "amount": amount,
                    "description": description,
                    "line_id": line_id,
                    "period": period.start.isoformat(),
                    "period_status": period.status.value,
                },
                request=request,
            )
        return Added(line_id, amount, account.currency, period.start, period.status, entry)

    def _period(
        self, connection: Connection, account: AccountRecord, start: date | None
    ) -> PeriodRow:
        """The period the adjustment is for, created when it is the current one and has no row
        yet (an account with no usage this period)."""
        account_id = account.id
        unfinished = repository.periods_with_status(connection, ADJUSTABLE, account_id=account_id)
        if start is None and unfinished:
            return unfinished[0]  # the oldest not finalized
        schedule = account.schedule(self.default_anchor_day)
        current = schedule.period_for_date(self.clock.now().date())
        wanted = current.start if start is None else start
        found = repository.get_period(connection, account_id, wanted)
        if found is None and wanted == current.start:
            ledger.insert_periods(connection, [(account_id, current)], self.clock.now())
            found = repository.get_period(connection, account_id, wanted)
        if found is None:
            open_ones = ", ".join(f"{p.start} ({p.status.value})" for p in unfinished) or "none"
            raise NotFound(
                f"account '{account_id}' has no billing period starting {wanted}; the periods "
                f"not finalized: {open_ones}",
                code="period_not_found",
            )
        return found


def _not_adjustable(account_id: str, period: PeriodRow) -> Conflict:
    if period.status is PeriodStatus.FINALIZED:
        return Conflict(
            f"the invoice of the period starting {period.start} is finalized: lower it with a "
            "credit note, or adjust a later period",
            code="period_finalized",
        )
    if period.finalize_requested_at is not None:
        return Conflict(
            f"the period starting {period.start} is being finalized (approved, or its review "
            "is over): its invoice can no longer change; once Stripe has finalized it, lower it "
            "with a credit note",
            code="period_finalizing",
        )
    return Conflict(
        f"the period starting {period.start} of '{account_id}' changed meanwhile: look again, "
        "then retry",
        code="period_changed",
    )
