"""HTTP endpoints for accounts and their lines."""

from __future__ import annotations

from datetime import date, datetime

from fastapi import APIRouter, Query, Response
from fastapi import Path as ApiPath

from billsync.api.catalog import tiers_read
from billsync.api.deps import BillsyncDep
from billsync.api.idempotency import IdempotencyKey, key_of, replay
from billsync.api.schemas import (
    AccountCreate,
    AccountListRead,
    AccountRead,
    AccountUpdate,
    AlertCreate,
    AlertListRead,
    AlertRead,
    AppliedPriceRead,
    CreditGrantCreate,
    CreditGrantListRead,
    CreditGrantRead,
    CreditUseRead,
    CrossingRead,
    ErrorRead,
    LineRead,
    MetricPriceRead,
    PeriodLinesRead,
    PeriodRead,
    PricesRead,
    PricesUpdate,
    RateCardRead,
    SyncPolicyRead,
    TierRead,
)
from billsync.core.alerts import Alert
from billsync.core.commitment import commitment_on
from billsync.core.money import decimal_text, format_minor
from billsync.core.pricing import NEGOTIATED, AppliedPrice
from billsync.core.text import SAFE_TEXT_PATTERN
from billsync.errors import Conflict, DuplicateRequest
from billsync.repositories import credits as credit_repository
from billsync.repositories.accounts import AccountFilter, AccountRecord
from billsync.repositories.alerts import Crossing, alerts_of, crossings_of
from billsync.repositories.credits import GrantRecord
from billsync.services.accounts import (
    ACCOUNT_ID_PATTERN,
    MAX_PAGE,
    UNCHANGED,
    AccountChanges,
    NewAccount,
)
from billsync.services.lines import PeriodLines, parse_period
from billsync.services.rates import EffectivePrices

router = APIRouter(tags=["accounts"])
ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorRead},
    404: {"model": ErrorRead},
    409: {"model": ErrorRead},
    422: {"model": ErrorRead},
}


def _account_read(record: AccountRecord, default_anchor_day: int, today: date) -> AccountRead:
    schedule = record.schedule(default_anchor_day)
    current = schedule.period_for_date(today).start
    minimum = commitment_on(record.commitments, current)
    applies = [c.effective_from for c in record.commitments if c.effective_from <= current]
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
        minimum_amount=None if minimum is None else format_minor(minimum, record.currency),
        minimum_amount_from=applies[-1] if minimum is not None and applies else None,
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
    today = billsync.clock.now().date()
    return AccountListRead(
        data=[_account_read(record, default, today) for record in page.accounts],
        next=page.next,
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
    return _account_read(record, billsync.settings.billing_anchor_day, billsync.clock.now().date())


@router.get("/accounts/{account_id}", responses=ERRORS)
def get_account(account_id: str, billsync: BillsyncDep) -> AccountRead:
    with billsync.database.read() as connection:
        record = billsync.accounts.get(connection, account_id)
    return _account_read(record, billsync.settings.billing_anchor_day, billsync.clock.now().date())


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
        minimum_amount=body.minimum_amount if "minimum_amount" in given else UNCHANGED,
        minimum_amount_from=body.minimum_amount_from,
    )
    with billsync.database.transaction() as connection:
        record = billsync.accounts.update(
            connection, account_id, changes, actor="api",
            default_anchor_day=billsync.settings.billing_anchor_day,
        )  # fmt: skip
    billsync.bill_cache.forget(frozenset({account_id}))
    return _account_read(record, billsync.settings.billing_anchor_day, billsync.clock.now().date())


def applied_price_read(applied: AppliedPrice) -> AppliedPriceRead:
    return AppliedPriceRead(
        source="negotiated" if applied.source == NEGOTIATED else "catalog",
        effective_from=applied.effective_from,
        label=applied.label,
    )


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
                price=None if line.applied is None else applied_price_read(line.applied),
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


def _prices_read(effective: EffectivePrices, re_rated: int | None = None) -> PricesRead:
    return PricesRead(
        account=effective.account.id,
        currency=effective.account.currency,
        period=PeriodRead(start=effective.period.start_at, end=effective.period.end_at),
        prices=[
            MetricPriceRead(
                metric=item.metric,
                source="negotiated" if item.applied.source == NEGOTIATED else "catalog",
                effective_from=item.applied.effective_from,
                label=item.applied.label,
                tiers=tiers_read(item.applied.price),
            )
            for item in effective.prices
        ],
        rate_cards=[
            RateCardRead(
                effective_from=card.effective_from,
                prices={metric: tiers_read(price) for metric, price in card.prices.items()},
                set_at=card.set_at,
                set_by=card.set_by,
            )
            for card in effective.account.rate_cards
        ],
        lines_re_rated=re_rated,
    )


@router.get("/accounts/{account_id}/prices", responses=ERRORS)
def get_prices(
    account_id: str,
    billsync: BillsyncDep,
    period: str = Query(default="current", description="'current' or a date YYYY-MM-DD"),
) -> PricesRead:
    """The prices that rate the account's period — each metric's negotiated rate or catalog
    price version in effect at the period's start — and the account's rate cards."""
    which = parse_period(period)
    with billsync.database.read() as connection:
        account = billsync.accounts.get(connection, account_id)
    return _prices_read(billsync.rates.effective(account, billsync.lines.period_of(account, which)))


@router.put("/accounts/{account_id}/prices", responses=ERRORS)
def put_prices(account_id: str, body: PricesUpdate, billsync: BillsyncDep) -> PricesRead:
    """Set the account's negotiated prices from a period start on (audited as
    ``account.prices`` by ``api``). From the current period: its lines are re-rated at once and
    the next sync puts the new amounts on the draft invoice."""
    with billsync.database.transaction() as connection:
        prices = {
            metric: price if isinstance(price, str) else price.model_dump()
            for metric, price in body.prices.items()
        }
        change = billsync.rates.set(
            connection, account_id, prices, body.effective_from, actor="api", reason=body.reason
        )
        account = billsync.accounts.get(connection, account_id)
    if billsync.ingest.changes is not None:  # the bill's cache, the threshold policy's count
        billsync.ingest.changes.accounts_changed({account_id})
    effective = billsync.rates.effective(
        account, billsync.lines.period_of(account, change.card.effective_from)
    )
    return _prices_read(effective, change.re_rated)


def _grant_read(grant: GrantRecord, now: datetime) -> CreditGrantRead:
    return CreditGrantRead(
        id=grant.id,
        amount=grant.amount,
        remaining=grant.remaining,
        currency=grant.currency,
        expires_at=grant.expires_at,
        expired=grant.expires_at <= now,
        reason=grant.reason,
        created_by=grant.created_by,
        created_at=grant.created_at,
        uses=[CreditUseRead(period_start=start, amount=amount) for start, amount in grant.uses],
    )


@router.post("/accounts/{account_id}/credit-grants", status_code=201, responses=ERRORS)
def create_credit_grant(
    account_id: str,
    body: CreditGrantCreate,
    billsync: BillsyncDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> CreditGrantRead:
    """Grant the account prepaid credit (audited as ``credit_grant.created`` by ``api``): its
    periods draw it down when they close, the grant expiring first first. With an
    ``Idempotency-Key``, a request sent again grants nothing more and answers with the grant
    the first one made (``Idempotent-Replayed: true``)."""
    request = key_of(idempotency_key, f"credit_grant:{account_id}", body.model_dump(mode="json"))
    try:
        with billsync.database.transaction() as connection:
            grant = billsync.credits.grant(
                connection, account_id, amount=body.amount, currency=body.currency,
                expires_at=body.expires_at, reason=body.reason, actor="api", request=request,
            )  # fmt: skip
    except DuplicateRequest as duplicate:
        assert request is not None
        prior = replay(billsync, duplicate, request, response)
        with billsync.database.read() as connection:
            grants = credit_repository.grants_of(connection, account_id)
        return _grant_read(next(g for g in grants if g.id == prior.detail["grant"]),
                           billsync.clock.now())  # fmt: skip
    if billsync.ingest.changes is not None:
        billsync.ingest.changes.accounts_changed({account_id})
    return _grant_read(grant, billsync.clock.now())


@router.get("/accounts/{account_id}/credit-grants", responses=ERRORS)
def list_credit_grants(account_id: str, billsync: BillsyncDep) -> CreditGrantListRead:
    """The account's grants, what each period drew from them, and the balance left."""
    now = billsync.clock.now()
    with billsync.database.read() as connection:
        billsync.accounts.get(connection, account_id)  # 404 for an unknown account
        grants = credit_repository.grants_of(connection, account_id)
    return CreditGrantListRead(
        data=[_grant_read(grant, now) for grant in grants],
        balance=credit_repository.balance(grants, now),
    )


def _alert_read(alert: Alert, crossings: list[Crossing]) -> AlertRead:
    return AlertRead(
        id=alert.id,
        name=alert.name,
        amount=alert.amount,
        percent_of_commitment=alert.percent_of_commitment,
        budget=alert.budget,
        percents=list(alert.percents),
        grouping=dict(alert.grouping),
        crossings=[
            CrossingRead(
                period_start=c.period_start,
                threshold_label=c.threshold_label,
                threshold=c.threshold,
                spent=c.spent,
                crossed_at=c.crossed_at,
                event_id=c.event_id,
                webhook=c.state,
                attempts=c.attempts,
                last_error=c.last_error,
            )
            for c in crossings
            if c.alert_id == alert.id
        ],
    )


@router.post("/accounts/{account_id}/alerts", status_code=201, responses=ERRORS)
def create_alert(
    account_id: str,
    body: AlertCreate,
    billsync: BillsyncDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> AlertRead:
    """A spend alert or budget (audited as ``alert.created`` by ``api``): each threshold the
    period's spend reaches is sent once to BILLSYNC_PLATFORM_WEBHOOK_URL, signed. With an
    ``Idempotency-Key``, a request sent again creates no second alert and answers with the
    first's (``Idempotent-Replayed: true``; 409 ``alert_deleted`` if it was deleted since)."""
    request = key_of(idempotency_key, f"alert:{account_id}", body.model_dump(mode="json"))
    try:
        with billsync.database.transaction() as connection:
            alert = billsync.alerts.create(
                connection, account_id, name=body.name, amount=body.amount,
                percent_of_commitment=body.percent_of_commitment, budget=body.budget,
                percents=body.percents, grouping=body.grouping, actor="api", request=request,
            )  # fmt: skip
    except DuplicateRequest as duplicate:
        assert request is not None
        prior = replay(billsync, duplicate, request, response)
        with billsync.database.read() as connection:
            first = [a for a in alerts_of(connection, account_id) if a.id == prior.detail["alert"]]
            crossings = crossings_of(connection, account_id)
        if not first:
            raise Conflict(
                f"this request created alert {prior.detail['alert']}, which was deleted since",
                code="alert_deleted",
            ) from None
        return _alert_read(first[0], crossings)
    return _alert_read(alert, [])


@router.get("/accounts/{account_id}/alerts", responses=ERRORS)
def list_alerts(account_id: str, billsync: BillsyncDep) -> AlertListRead:
    """The account's alerts, each with the thresholds crossed and their webhooks' state."""
    with billsync.database.read() as connection:
        billsync.accounts.get(connection, account_id)  # 404 for an unknown account
        crossings = crossings_of(connection, account_id)
        alerts = alerts_of(connection, account_id)
    return AlertListRead(data=[_alert_read(alert, crossings) for alert in alerts])


@router.delete("/accounts/{account_id}/alerts/{alert_id}", status_code=204, responses=ERRORS)
def delete_alert(
    account_id: str,
    billsync: BillsyncDep,
    alert_id: int = ApiPath(ge=1, le=2**63 - 1, description="The alert's id."),
) -> None:
    """Remove an alert and its record of crossings (audited as ``alert.deleted``)."""
    with billsync.database.transaction() as connection:
        billsync.alerts.delete(connection, account_id, alert_id, actor="api")
