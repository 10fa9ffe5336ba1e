"""Negotiated rates: an account's own prices, set from a period start on (core.pricing).

``PUT /v1/accounts/{id}/prices``, ``billsync accounts prices ACCOUNT --set …`` and support's
console call :meth:`RateService.set`. A rate card is the account's complete set of negotiated
prices from ``effective_from`` on, in the account's currency, in the catalog's own price shape
per metric; the metrics it leaves out are priced by the catalog. It replaces any card of the
account from that day on; earlier cards keep rating earlier periods.

``effective_from`` is the start of one of the account's periods, the current one or a later
one, and that period must be open: a period that is closing or finalized — its invoice being
made or made — is never re-rated. When the card applies to the current period,
the period's lines are re-rated at once (a new version each, so the next sync puts the new
amounts on the draft invoice) in the same transaction, under the account's ledger lock. The
change is audited as ``account.prices`` with the card and the lines re-rated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import Connection

from billsync.clock import Clock
from billsync.core.catalog import Catalog, CatalogError, Price, parse_price
from billsync.core.folding import ADJUSTMENT_METRIC
from billsync.core.periods import Period, PeriodStatus
from billsync.core.pricing import (
    CATALOG,
    AppliedPrice,
    RateCard,
    applied_price,
    cards_document,
    price_document,
)
from billsync.core.rating import line_amount
from billsync.errors import Conflict, InvalidRequest, NotFound
from billsync.repositories import accounts as account_repository
from billsync.repositories import console as audit
from billsync.repositories import ledger, ledger_bulk
from billsync.repositories import sync as sync_repository
from billsync.repositories.accounts import AccountRecord
from billsync.services.catalog_prices import PricingGuard

MAX_NEGOTIATED = 500  # metrics on one rate card


@dataclass(frozen=True, slots=True)
class MetricPrice:
    metric: str
    applied: AppliedPrice


@dataclass(frozen=True, slots=True)
class EffectivePrices:
    """The prices that rate one of an account's periods, metric by metric."""

    account: AccountRecord
    period: Period
    prices: list[MetricPrice]


@dataclass(frozen=True, slots=True)
class RateChange:
    card: RateCard
    re_rated: int  # lines of the current period whose amount changed


def changeable_from(
    connection: Connection,
    account: AccountRecord,
    default_anchor_day: int,
    now: datetime,
    start: date | None,
    *,
    field: str,
    what: str,
) -> tuple[Period, date]:
    """The account's current period, and the period start a change of its terms (``what``:
    its prices, its minimum) applies from: ``start``, or by default the current period's. It
    must be a start of one of the account's periods, not before the current one, and that
    period open — one closing or finalized keeps what it is being billed with."""
    schedule = account.schedule(default_anchor_day)
    current = schedule.period_for_date(now.date())
    start = start or current.start
    if start < current.start:
        raise Conflict(
            f"{field}: {what} can change from the current period ({current.start}) on, not from "
            f"{start}: earlier periods keep what they were billed with",
            code="period_not_open",
        )
    if schedule.period_for_date(start).start != start:
        raise Conflict(
            f"{field} must be the start of one of the account's periods, e.g. "
            f"{current.start} or {current.end}; {start} is not",
            code="not_a_period_start",
        )
    period = sync_repository.get_period(connection, account.id, start)
    if period is not None and period.status is not PeriodStatus.OPEN:
        raise Conflict(
            f"the period starting {start} is {period.status.value}: its invoice is being made, "
            f"so its {what} cannot change",
            code="period_not_open",
        )
    return current, start


class RateService:
    def __init__(self, catalog: Catalog, clock: Clock, default_anchor_day: int) -> None:
        self.catalog = catalog
        self.clock = clock
        self.default_anchor_day = default_anchor_day
        self.pricing = PricingGuard(catalog)

    def effective(self, account: AccountRecord, period: Period) -> EffectivePrices:
        prices = []
        for metric in self.catalog.metrics.values():
            applied = applied_price(metric, account.rate_cards, account.currency, period.start)
            if applied is not None:
                prices.append(MetricPrice(metric.id, applied))
        return EffectivePrices(account, period, prices)

    def _checked_prices(self, raw: Mapping[str, object], currency: str) -> dict[str, Price]:
        if len(raw) > MAX_NEGOTIATED:
            raise InvalidRequest(
                f"at most {MAX_NEGOTIATED} metrics on a rate card, got {len(raw)}",
                code="invalid_prices",
            )
        prices: dict[str, Price] = {}
        problems: list[str] = []
        for metric_id, raw_price in raw.items():
            metric = self.catalog.metrics.get(metric_id)
            if metric is None:
                problems.append(f"prices.{metric_id}: no such metric in the catalog")
                continue
            try:
                price = parse_price(raw_price, f"prices.{metric_id}")
            except CatalogError as error:
                problems.extend(error.problems)
                continue
            if metric.allow_negative and not price.is_flat:
                problems.append(
                    f"prices.{metric_id}: the metric allows negative usage: a flat price only"
                )
                continue
            prices[metric_id] = price
        if problems:
            raise InvalidRequest(
                "; ".join(problems) + f" (prices are per unit, in {currency.upper()}, "
                'as the catalog writes them: "0.01" or {"tiers": [...]})',
                code="invalid_prices",
            )
        return prices

    def set(
        self,
        connection: Connection,
        account_id: str,
        raw_prices: Mapping[str, object],
        effective_from: date | None,
        *,
        actor: str,
        reason: str | None = None,
    ) -> RateChange:
        """Set the account's negotiated prices from ``effective_from`` (default: the current
        period's start) on; re-rate the current period's lines if it is that period."""
        # The ledger lock first, as ingest takes it: no batch rates a line of this account
        # with the old prices after this transaction commits.
        ledger.lock_accounts(connection, [account_id])
        account = account_repository.lock_account(connection, account_id)
        if account is None:
            raise NotFound(f"account '{account_id}' does not exist", code="account_not_found")
        prices = self._checked_prices(raw_prices, account.currency)
        now = self.clock.now()
        current, start = changeable_from(
            connection, account, self.default_anchor_day, now, effective_from,
            field="effective_from", what="prices",
        )  # fmt: skip
        card = RateCard(start, prices, now, actor)
        cards = (*[c for c in account.rate_cards if c.effective_from < start], card)
        account_repository.update_account(
            connection, account_id, now, rate_cards=cards_document(cards)
        )
        updated = account_repository.get_account(connection, account_id)
        assert updated is not None
        re_rated = self._re_rate(connection, updated, start, now) if start == current.start else 0
        audit.record(
            connection, actor=actor, action="account.prices", now=now, account_id=account_id,
            period_start=start, reason=reason,
            detail={
                "effective_from": start.isoformat(),
                "prices": {m: price_document(p) for m, p in prices.items()},
                "lines_re_rated": re_rated,
            },
        )  # fmt: skip
        return RateChange(card, re_rated)

    def _re_rate(
        self, connection: Connection, account: AccountRecord, start: date, now: datetime
    ) -> int:
        """Re-rate the period's own usage lines with the prices now in effect; returns how many
        changed. Its late lines carry usage of earlier periods, rated with their prices: they
        do not change."""
        changes: list[ledger.LineChange] = []
        from_catalog: set[tuple[str, str, date]] = set()
        for line in ledger.lines_of_period(connection, account.id, start):
            metric = self.catalog.metrics.get(line.metric)
            if line.metric == ADJUSTMENT_METRIC or line.late_from is not None or metric is None:
                continue
            applied = applied_price(metric, account.rate_cards, line.currency, start)
            if applied is None:
                continue
            if applied.source == CATALOG:
                from_catalog.add((line.metric, line.currency, start))
            amount = line_amount(line.quantity, applied.price, line.currency)
            if amount != line.amount:
                changes.append(
                    ledger.LineChange(
                        line.id, line.quantity, amount, line.version + 1, line.event_count
                    )
                )
        self.pricing.check(connection, from_catalog)  # this process's catalog is the applied
        if changes:
            ledger_bulk.update_lines(connection, changes, now)
            sync_repository.mark_behind(connection, [account.id])
        return len(changes)
