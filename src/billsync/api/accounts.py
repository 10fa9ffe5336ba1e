"""HTTP endpoints for accounts and their lines."""

from __future__ import annotations

from fastapi import APIRouter, Query

from billsync.api.deps import BillsyncDep
from billsync.api.schemas import (
    AccountCreate,
    AccountRead,
    ErrorRead,
    LineRead,
    PeriodLinesRead,
    PeriodRead,
    TierRead,
)
from billsync.core.money import decimal_text
from billsync.repositories.accounts import AccountRecord
from billsync.services.accounts import NewAccount
from billsync.services.lines import PeriodLines, parse_period

router = APIRouter(tags=["accounts"])
ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorRead},
    404: {"model": ErrorRead},
    409: {"model": ErrorRead},
    422: {"model": ErrorRead},
}


def _account_read(record: AccountRecord, default_anchor_day: int) -> AccountRead:
    return AccountRead(
        id=record.id,
        name=record.name,
        email=record.email,
        currency=record.currency,
        billing_anchor_day=record.billing_anchor_day or default_anchor_day,
        stripe_customer_id=record.stripe_customer_id,
        created_at=record.created_at,
    )


@router.post("/accounts", status_code=201, responses=ERRORS)
def create_account(body: AccountCreate, billsync: BillsyncDep) -> AccountRead:
    with billsync.database.transaction() as connection:
        record = billsync.accounts.create(
            connection,
            NewAccount(
                id=body.id,
                currency=body.currency,
                name=body.name,
                email=body.email,
                billing_anchor_day=body.billing_anchor_day,
            ),
        )
    return _account_read(record, billsync.settings.billing_anchor_day)


@router.get("/accounts/{account_id}", responses=ERRORS)
def get_account(account_id: str, billsync: BillsyncDep) -> AccountRead:
    with billsync.database.read() as connection:
        record = billsync.accounts.get(connection, account_id)
    return _account_read(record, billsync.settings.billing_anchor_day)


def lines_read(view: PeriodLines) -> PeriodLinesRead:
    return PeriodLinesRead(
        account=view.account,
        period=PeriodRead(start=view.period.start_at, end=view.period.end_at),
        currency=view.currency,
        lines=[
            LineRead(
                key=line.key,
                metric=line.metric,
                description=line.description,
                dimensions=line.dimensions,
                late_from=line.late_from,
                quantity=decimal_text(line.quantity),
                unit=line.unit,
                unit_price=decimal_text(line.unit_price),
                tiers=None
                if line.tiers is None
                else [
                    TierRead(
                        up_to=None if tier.up_to is None else decimal_text(tier.up_to),
                        unit_price=decimal_text(tier.unit_price),
                    )
                    for tier in line.tiers
                ],
                amount=line.amount,
                version=line.version,
                event_count=line.event_count,
            )
            for line in view.lines
        ],
        total=view.total,
    )


@router.get("/accounts/{account_id}/lines", responses=ERRORS)
def get_lines(
    account_id: str,
    billsync: BillsyncDep,
    period: str = Query(default="current", description="'current' or a date YYYY-MM-DD"),
) -> PeriodLinesRead:
    which = parse_period(period)
    with billsync.database.read() as connection:
        account = billsync.accounts.get(connection, account_id)
        view = billsync.lines.period_lines(connection, account, which)
    return lines_read(view)
