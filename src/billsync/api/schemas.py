"""Request and response bodies of the HTTP API (pydantic; named XCreate / XRead)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from billsync.core.text import SAFE_TEXT_PATTERN
from billsync.services.accounts import EMAIL_PATTERN


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


class AccountRead(BaseModel):
    id: str
    name: str
    email: str | None
    currency: str
    billing_anchor_day: int
    stripe_customer_id: str | None
    created_at: datetime


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


class PeriodLinesRead(BaseModel):
    account: str
    period: PeriodRead
    currency: str
    lines: list[LineRead]
    total: int


class MetricRead(BaseModel):
    id: str
    unit: str
    description: str
    decimals: int
    group_by: list[str]
    allow_negative: bool
    prices: dict[str, list[TierRead]]


class CatalogRead(BaseModel):
    currencies: list[str]
    metrics: list[MetricRead]
