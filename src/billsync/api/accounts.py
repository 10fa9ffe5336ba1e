"""HTTP endpoints for accounts and their lines."""

from __future__ import annotations

from fastapi import APIRouter, Query

from billsync.api.deps import BillsyncDep
from billsync.api.schemas import (
    AccountCreate,
    AccountListRead,
    AccountRead,
    AccountUpdate,
    ErrorRead,
    LineRead,
    PeriodLinesRead,
    PeriodRead,
    SyncPolicyRead,
    TierRead,
)
from billsync.core.money import decimal_text
from billsync.core.text import SAFE_TEXT_PATTERN
from billsync.repositories.accounts import AccountFilter, AccountRecord
from billsync.services.accounts import (
    ACCOUNT_ID_PATTERN,
    MAX_PAGE,
    UNCHANGED,
    AccountChanges,
    NewAccount,
)
from billsync.services.lines import PeriodLines, parse_period

router = APIRouter(tags=["accounts"])
ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorRead},
    404: {"model": ErrorRead},
    409: {"model": ErrorRead},
    422: {"model": ErrorRead},
}


def _account_read(record: AccountRecord, default_anchor_day: int) -> AccountRead:
    schedule = record.schedule(default_anchor_day)
    return AccountRead(
        id=record.id,
        name=record.name,
        email=record.email,
        currency=record.currency,
        billing_anchor_day=schedule.anchor_day,
        billing_anchor_from=schedule.applies_from(),
        sync_policy=None if record.sync_policy is None else SyncPolicyRead(**record.sync_policy),
        stripe_customer_id=record.stripe_customer_id,
        created_at=record.created_at,
    )


@router.get("/accounts", responses=ERRORS)
def list_accounts(
    billsync: BillsyncDep,
    *,
    limit: int = Query(default=100, ge=1, le=MAX_PAGE, description="Accounts per page."),
    cursor: str | None = Query(
        default=None,
        max_length=255,
        pattern=ACCOUNT_ID_PATTERN,
        description="The 'next' of the previous page: the page starts after that account.",
    ),
    name: str | None = Query(
        default=None,
        min_length=1,
        max_length=255,
        pattern=SAFE_TEXT_PATTERN,
        description="Accounts whose name starts with this (exact case; indexed).",
    ),
    email: str | None = Query(
        default=None,
        min_length=1,
        max_length=320,
        pattern=SAFE_TEXT_PATTERN,
        description="This exact email (indexed).",
    ),
    customer: str | None = Query(
        default=None,
        min_length=1,
        max_length=255,
        pattern=SAFE_TEXT_PATTERN,
        description="This exact Stripe customer id, cus_… (indexed).",
    ),
) -> AccountListRead:
    """Accounts in id order, a page at a time: keyset pagination, so every page costs the same
    however far it is."""
    wanted = AccountFilter(name_prefix=name, email=email, customer=customer)
    with billsync.database.read() as connection:
        page = billsync.accounts.list(connection, wanted, cursor=cursor, limit=limit)
    default = billsync.settings.billing_anchor_day
    return AccountListRead(
        data=[_account_read(record, default) for record in page.accounts], next=page.next
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


@router.patch("/accounts/{account_id}", responses=ERRORS)
def update_account(account_id: str, body: AccountUpdate, billsync: BillsyncDep) -> AccountRead:
    """Change the fields given (audited as ``account.update`` by ``api``). A new
    billing_anchor_day applies to future periods: the current period keeps its dates, and the
    next one ends on the new day."""
    given = body.model_fields_set
    policy = body.sync_policy
    changes = AccountChanges(
        name=body.name if "name" in given and body.name is not None else UNCHANGED,
        email=body.email if "email" in given else UNCHANGED,
        sync_policy=(None if policy is None else policy.model_dump(exclude_none=True))
        if "sync_policy" in given
        else UNCHANGED,
        billing_anchor_day=body.billing_anchor_day
        if "billing_anchor_day" in given and body.billing_anchor_day is not None
        else UNCHANGED,
    )
    with billsync.database.transaction() as connection:
        record = billsync.accounts.update(
            connection, account_id, changes, actor="api",
            default_anchor_day=billsync.settings.billing_anchor_day,
        )  # fmt: skip
    billsync.bill_cache.forget(frozenset({account_id}))
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
