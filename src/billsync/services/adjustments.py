"""Credits and charges added by support: each becomes a line of the period's invoice."""

from __future__ import annotations

from datetime import date

from billsync.clock import Clock
from billsync.core.money import MAX_STRIPE_AMOUNT
from billsync.core.periods import PeriodStatus, period_for_date, period_starting
from billsync.db.database import Database
from billsync.errors import Conflict, InvalidRequest, NotFound
from billsync.repositories import console as console_repository
from billsync.repositories import ledger
from billsync.repositories import sync as repository
from billsync.repositories.accounts import get_account


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
    ) -> int:
        """Add a credit (amount < 0) or a charge (> 0) in minor units; returns the line id."""
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
        with self.database.transaction() as connection:
            # Adjustments are numbered per period (the line key ``adjustment[n]``) and may
            # create the period: under the account's ledger lock, which ingest also takes to
            # create periods, two at once queue instead of taking the same number.
            ledger.lock_accounts(connection, [account_id])
            account = get_account(connection, account_id)
            if account is None:
                raise NotFound(f"account '{account_id}' does not exist", code="account_not_found")
            anchor = account.billing_anchor_day or self.default_anchor_day
            period = (
                period_starting(period_start)
                if period_start is not None
                else period_for_date(now.date(), anchor)
            )
            existing = repository.get_period(connection, account_id, period.start)
            if existing is None:
                ledger.insert_periods(connection, [(account_id, period)], now)
            elif existing.status is PeriodStatus.FINALIZED:
                raise Conflict(
                    "that period's invoice is finalized: adjust the next period instead",
                    code="period_finalized",
                )
            number = repository.count_adjustments(connection, account_id, period.start) + 1
            kind = "credit" if amount < 0 else "charge"
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
            console_repository.record(
                connection,
                actor=actor,
                action=f"adjustment.{kind}",
                now=now,
                account_id=account_id,
                period_start=period.start,
                reason=reason,
                detail={"amount": amount, "description": description, "line_id": line_id},
            )
        return line_id
