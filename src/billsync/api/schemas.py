"""Request and response bodies of the HTTP API (pydantic; named XCreate / XRead)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from billsync.core.policy import MAX_INTERVAL_SECONDS, MAX_THRESHOLD
from billsync.core.text import SAFE_TEXT_PATTERN
from billsync.services.accounts import EMAIL_PATTERN, NAME_PATTERN


def _not_a_boolean(value: object) -> object:
    """JSON's true and false are not numbers (Pydantic's lax mode would read true as 1);
    20.0 is, as JSON Schema's ``integer`` says."""
    if isinstance(value, bool):
        raise ValueError("a whole number is expected, not true or false")
    return value


WholeNumber = Annotated[int, BeforeValidator(_not_a_boolean)]


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code.")
    message: str = Field(description="What is wrong and what to do about it.")


class ErrorRead(BaseModel):
    error: ErrorDetail


class AccountCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        description="The platform's own customer id.",
        min_length=1,
        max_length=255,
        json_schema_extra={"pattern": r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,254}$"},  # the service's
    )
    name: str | None = Field(
        default=None,
        max_length=255,
        json_schema_extra={"pattern": SAFE_TEXT_PATTERN},  # checked by the service
    )
    email: str | None = Field(
        default=None,
        max_length=320,
        json_schema_extra={"pattern": EMAIL_PATTERN},  # checked by the service
    )
    currency: str = Field(description="ISO 4217 code the account is billed in, e.g. usd.")
    billing_anchor_day: int | None = Field(
        default=None, ge=1, le=28, description="Day of month periods start (UTC)."
    )

    @field_validator("billing_anchor_day", mode="before")
    @classmethod
    def _anchor_day(cls, value: object) -> object:
        return _not_a_boolean(value)


def _present_fields(data: object, not_null: tuple[str, ...], numbers: tuple[str, ...]) -> object:
    """A JSON body's fields that may be left out but not sent as null, and whole numbers that
    are not true or false (as ``_not_a_boolean``; a validator on the model keeps each field's
    bounds in the published schema)."""
    if isinstance(data, dict):
        for field in not_null:
            if field in data and data[field] is None:
                raise ValueError(f"{field} cannot be null: leave it out to keep it as it is")
        for field in numbers:
            _not_a_boolean(data.get(field))
    return data


class SyncPolicyRead(BaseModel):
    """An account's own sync policy: what it sets overrides BILLSYNC_SYNC_POLICY, its interval
    and its threshold (null: the default's)."""

    policy: Literal["interval", "threshold", "on_demand", "cycle_end"] | None = None
    interval_seconds: int | None = None
    threshold: int | None = None


class SyncPolicyUpdate(BaseModel):
    """An account's own sync policy: what it sets overrides BILLSYNC_SYNC_POLICY, its interval
    and its threshold; a field left out keeps the default's."""

    model_config = ConfigDict(extra="forbid")

    policy: Literal["interval", "threshold", "on_demand", "cycle_end"] | SkipJsonSchema[None] = None
    interval_seconds: (
        Annotated[int, Field(ge=1, le=MAX_INTERVAL_SECONDS)] | SkipJsonSchema[None]
    ) = Field(default=None, description="The interval policy's window, in seconds.")
    threshold: Annotated[int, Field(ge=1, le=MAX_THRESHOLD)] | SkipJsonSchema[None] = Field(
        default=None, description="Minor units behind before a threshold sync."
    )

    @model_validator(mode="before")
    @classmethod
    def _fields(cls, data: object) -> object:
        return _present_fields(
            data, ("policy", "interval_seconds", "threshold"), ("interval_seconds", "threshold")
        )


class AccountRead(BaseModel):
    id: str
    name: str
    email: str | None
    currency: str
    billing_anchor_day: int = Field(description="The day of the month future periods start on.")
    billing_anchor_from: date | None = Field(
        default=None,
        description="The date billing_anchor_day applies from, when it was changed: earlier "
        "periods keep the anchor day they had.",
    )
    sync_policy: SyncPolicyRead | None = Field(
        default=None, description="The account's own sync policy; null: the default."
    )
    stripe_customer_id: str | None
    created_at: datetime
    minimum_amount: str | None = Field(
        default=None,
        description="The minimum commitment of the current period, in the account's currency "
        "(a decimal string); null: none.",
    )
    minimum_amount_from: date | None = Field(
        default=None, description="The period start that minimum applies from."
    )


class AccountUpdate(BaseModel):
    """``PATCH /v1/accounts/{id}``: the fields given change; the others stay as they are."""

    model_config = ConfigDict(extra="forbid")

    name: (
        Annotated[
            str,
            Field(min_length=1, max_length=255, json_schema_extra={"pattern": NAME_PATTERN}),
        ]
        | SkipJsonSchema[None]
    ) = None  # the pattern is checked by the service
    email: str | None = Field(
        default=None,
        max_length=320,
        description="null removes it.",
        json_schema_extra={"pattern": EMAIL_PATTERN},  # checked by the service
    )
    sync_policy: SyncPolicyUpdate | None = Field(
        default=None, description="The account's own sync policy; null: back to the default."
    )
    billing_anchor_day: Annotated[int, Field(ge=1, le=28)] | SkipJsonSchema[None] = Field(
        default=None,
        description="For future periods: the current period keeps its dates and the next one "
        "ends on the new day.",
    )
    minimum_amount: str | None = Field(
        default=None,
        pattern=r"^[0-9]{1,6}(\.[0-9]{1,2})?$",
        description='A minimum commitment per period, e.g. "500.00" in the account\'s currency: '
        "a period that used less is topped up to it when it closes. null removes it.",
    )
    minimum_amount_from: date | None = Field(
        default=None,
        description="The start of the account's period the minimum applies from: the current "
        "one (the default) or a later one.",
    )

    @model_validator(mode="before")
    @classmethod
    def _fields(cls, data: object) -> object:
        return _present_fields(data, ("name", "billing_anchor_day"), ("billing_anchor_day",))


class AccountListRead(BaseModel):
    data: list[AccountRead]
    next: str | None = Field(
        description="Pass it as 'cursor' for the next page; null on the last page."
    )


class UsageEventCreate(BaseModel):
    """One usage increment (documentation of the wire format; validated per event)."""

    id: str = Field(description="Producer-chosen unique id; re-sending it is a no-op.")
    account: str
    metric: str = Field(description="A metric id from GET /v1/catalog.")
    quantity: str | float | int = Field(description="Decimal string (exact) or JSON number.")
    timestamp: datetime = Field(description="RFC 3339 with an offset, e.g. 2026-11-26T10:00:00Z.")
    dimensions: dict[str, str] = Field(default_factory=dict)


class UsageBatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[UsageEventCreate]


class UsageResult(BaseModel):
    id: str | None
    status: Literal["accepted", "duplicate", "rejected"]
    error: ErrorDetail | None


class UsageBatchRead(BaseModel):
    accepted: int
    duplicates: int
    rejected: int
    results: list[UsageResult]


class TierRead(BaseModel):
    up_to: str | None
    unit_price: str


class PeriodRead(BaseModel):
    start: datetime
    end: datetime


class AppliedPriceRead(BaseModel):
    source: Literal["catalog", "negotiated"] = Field(
        description="The catalog's price, or the account's negotiated rate."
    )
    effective_from: date | None = Field(
        description="The first day of the catalog's price version or of the account's rate "
        "card; null for the catalog's first prices."
    )
    label: str = Field(description='e.g. "negotiated rate from 2026-12-01"')


class LineRead(BaseModel):
    key: str
    metric: str
    description: str
    dimensions: dict[str, str]
    late_from: date | None = Field(description="Set on late usage: the period it belonged to.")
    quantity: str
    unit: str
    unit_price: str = Field(description="Price of the next unit (the current tier's price).")
    tiers: list[TierRead] | None
    amount: int = Field(description="Minor units of the currency, rounded once per line.")
    version: int
    event_count: int
    price: AppliedPriceRead | None = Field(
        default=None,
        description="Which price rates the line: the one in effect at the start of the period "
        "its usage happened in. Null for an adjustment.",
    )


class PeriodLinesRead(BaseModel):
    account: str
    period: PeriodRead
    currency: str
    lines: list[LineRead]
    total: int


class PriceVersionRead(BaseModel):
    effective_from: date
    prices: dict[str, list[TierRead]]


class MetricRead(BaseModel):
    id: str
    unit: str
    description: str
    decimals: int
    group_by: list[str]
    allow_negative: bool
    prices: dict[str, list[TierRead]]
    aggregation: Literal["sum", "max", "unique_count", "latest"] = Field(
        description="How the metric's events make a line's quantity over the period: their sum, "
        "the largest, the number of distinct values of `unique_by`, or the latest by timestamp."
    )
    unique_by: str | None = Field(
        default=None, description="The dimension a unique_count metric counts distinct values of."
    )
    price_versions: list[PriceVersionRead] = Field(
        default_factory=list,
        description="Later prices: a period starting on or after effective_from is rated with "
        "them (`prices` above apply before the first).",
    )


class CatalogRead(BaseModel):
    currencies: list[str]
    metrics: list[MetricRead]


class TierIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    up_to: str | None = Field(
        default=None, max_length=40, description="Cumulative, inclusive; none on the last tier."
    )
    unit_price: str = Field(max_length=40)


class TieredPriceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tiers: list[TierIn] = Field(min_length=1, max_length=50)


class PricesUpdate(BaseModel):
    """``PUT /v1/accounts/{id}/prices``: the account's negotiated prices from a period on."""

    model_config = ConfigDict(extra="forbid")

    prices: dict[
        Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.\-]{0,99}$")],
        Annotated[str, Field(max_length=40)] | TieredPriceIn,
    ] = Field(
        description="Per metric id, the price per unit in the account's currency, as the "
        'catalog writes it: "0.01" (flat) or {"tiers": [{"up_to": "1000", "unit_price": '
        '"0.02"}, {"unit_price": "0.01"}]}. Metrics left out are priced by the catalog; {} '
        "returns the account to the catalog's prices.",
        max_length=500,
    )
    effective_from: date | None = Field(
        default=None,
        description="The start of the account's period from which the prices apply: the "
        "current one (its lines are re-rated at once) or a later one. Default: the current.",
    )
    reason: str | None = Field(default=None, max_length=500, description="Kept in the audit log.")


class MetricPriceRead(BaseModel):
    metric: str
    source: Literal["catalog", "negotiated"]
    effective_from: date | None
    label: str
    tiers: list[TierRead]


class RateCardRead(BaseModel):
    effective_from: date
    prices: dict[str, list[TierRead]]
    set_at: datetime | None
    set_by: str | None


class PricesRead(BaseModel):
    account: str
    currency: str
    period: PeriodRead = Field(description="The period whose prices are listed.")
    prices: list[MetricPriceRead] = Field(description="Every metric's price for that period.")
    rate_cards: list[RateCardRead] = Field(description="The account's negotiated rate cards.")
    lines_re_rated: int | None = Field(
        default=None, description="PUT only: the current period's lines whose amount changed."
    )


class CreditGrantCreate(BaseModel):
    """``POST /v1/accounts/{id}/credit-grants``: prepaid credit for the account."""

    model_config = ConfigDict(extra="forbid")

    amount: str = Field(
        pattern=r"^[0-9]{1,6}(\.[0-9]{1,2})?$",
        description='In the account\'s currency, e.g. "100.00": drawn down when its periods close.',
    )
    currency: str = Field(min_length=3, max_length=3, description="The account's currency.")
    expires_at: datetime = Field(
        description="Periods that begin before it may draw on the grant; later ones may not."
    )
    reason: str | None = Field(default=None, max_length=500, description="Kept in the audit log.")


class CreditUseRead(BaseModel):
    period_start: date
    amount: int


class CreditGrantRead(BaseModel):
    id: int
    amount: int = Field(description="Minor units, as granted.")
    remaining: int = Field(description="Minor units not drawn yet.")
    currency: str
    expires_at: datetime
    expired: bool = Field(description="Past its expiry: later periods do not draw on it.")
    reason: str | None
    created_by: str
    created_at: datetime
    uses: list[CreditUseRead] = Field(description="What each period drew from it.")


class CreditGrantListRead(BaseModel):
    data: list[CreditGrantRead]
    balance: int = Field(description="What is left to draw on, of the grants not expired yet.")


class AlertCreate(BaseModel):
    """``POST /v1/accounts/{id}/alerts``: one of ``amount``, ``percent_of_commitment`` or
    ``budget`` with ``percents``; ``grouping`` limits it to the lines of those dimension
    values (a budget per app)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=200)
    amount: str | None = Field(
        default=None,
        pattern=r"^[0-9]{1,6}(\.[0-9]{1,2})?$",
        description="A threshold on the period's spend, in the account's currency.",
    )
    percent_of_commitment: int | None = Field(
        default=None, ge=1, le=1000, description="A percentage of the period's commitment."
    )
    budget: str | None = Field(
        default=None,
        pattern=r"^[0-9]{1,6}(\.[0-9]{1,2})?$",
        description="A budget per period, told at each of ``percents``.",
    )
    percents: list[Annotated[int, Field(ge=1, le=1000)]] | None = Field(
        default=None, max_length=10, description="e.g. [50, 80, 100]"
    )
    grouping: dict[str, Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        default=None, max_length=4, description='e.g. {"app": "web"}'
    )


class CrossingRead(BaseModel):
    period_start: date
    threshold_label: str
    threshold: int
    spent: int
    crossed_at: datetime
    event_id: str
    webhook: Literal["pending", "delivered", "failed"]
    attempts: int
    last_error: str | None


class AlertRead(BaseModel):
    id: int
    name: str | None
    amount: int | None
    percent_of_commitment: int | None
    budget: int | None
    percents: list[int]
    grouping: dict[str, str]
    crossings: list[CrossingRead]


class AlertListRead(BaseModel):
    data: list[AlertRead]
