"""The catalog: which metrics exist, how their usage groups into lines, and what they cost.

Parsing is pure (a mapping in, frozen dataclasses out); reading the TOML file lives in
:mod:`billsync.catalog_file`. Every error names the source, the metric and the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from billsync.core.money import CurrencyError, normalize_currency

METRIC_ID = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,99}$")
DIMENSION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
MAX_PRICE_DECIMALS = 12
MAX_QUANTITY_DECIMALS = 12
MAX_GROUP_BY = 4


class CatalogError(ValueError):
    """The catalog is invalid; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Tier:
    """Units up to ``up_to`` (inclusive, cumulative; ``None`` = no limit) cost ``unit_price``."""

    up_to: Decimal | None
    unit_price: Decimal


@dataclass(frozen=True, slots=True)
class Price:
    """Graduated price in one currency; a flat price is a single unlimited tier."""

    tiers: tuple[Tier, ...]

    @property
    def is_flat(self) -> bool:
        return len(self.tiers) == 1

    def marginal_unit_price(self, quantity: Decimal) -> Decimal:
        """The unit price the next unit of usage is charged at."""
        for tier in self.tiers:
            if tier.up_to is None or quantity < tier.up_to:
                return tier.unit_price
        return self.tiers[-1].unit_price


@dataclass(frozen=True, slots=True)
class Metric:
    id: str
    unit: str
    description: str
    decimals: int
    group_by: tuple[str, ...]
    allow_negative: bool
    prices: Mapping[str, Price]


@dataclass(frozen=True, slots=True)
class Catalog:
    currencies: tuple[str, ...]
    metrics: Mapping[str, Metric]
    source: str


def _decimal(value: object, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise CatalogError(f'{where}: must be a decimal string such as "0.0000008", got {value!r}')
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise CatalogError(f"{where}: {value!r} is not a decimal number") from None
    if not number.is_finite():
        raise CatalogError(f"{where}: must be finite, got {value!r}")
    return number


def _decimal_places(number: Decimal) -> int:
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


def _price(raw: object, where: str) -> Price:
    if isinstance(raw, str | int) and not isinstance(raw, bool):
        raw = {"tiers": [{"unit_price": raw}]}
    if not isinstance(raw, Mapping):
        raise CatalogError(f"{where}: must be a decimal string or a table with 'tiers'")
    unknown = set(raw) - {"tiers"}
    if unknown:
        raise CatalogError(f"{where}: unknown field(s) {sorted(unknown)}; expected 'tiers'")
    raw_tiers = raw.get("tiers")
    if not isinstance(raw_tiers, list) or not raw_tiers:
        raise CatalogError(f"{where}.tiers: must be a non-empty list of tiers")
    tiers: list[Tier] = []
    previous: Decimal = Decimal(0)
    for index, raw_tier in enumerate(raw_tiers):
        tier_where = f"{where}.tiers[{index}]"
        if not isinstance(raw_tier, Mapping):
            raise CatalogError(f"{tier_where}: must be a table with 'unit_price' and 'up_to'")
        unknown = set(raw_tier) - {"unit_price", "up_to"}
        if unknown:
            raise CatalogError(f"{tier_where}: unknown field(s) {sorted(unknown)}")
        if "unit_price" not in raw_tier:
            raise CatalogError(f"{tier_where}.unit_price: required")
        unit_price = _decimal(raw_tier["unit_price"], f"{tier_where}.unit_price")
        if unit_price < 0:
            raise CatalogError(f"{tier_where}.unit_price: must not be negative")
        if _decimal_places(unit_price) > MAX_PRICE_DECIMALS:
            raise CatalogError(
                f"{tier_where}.unit_price: at most {MAX_PRICE_DECIMALS} decimal places"
            )
        is_last = index == len(raw_tiers) - 1
        raw_up_to = raw_tier.get("up_to")
        up_to: Decimal | None
        if raw_up_to is None or raw_up_to == "inf":
            if not is_last:
                raise CatalogError(f"{tier_where}.up_to: required on every tier but the last")
            up_to = None
        else:
            if is_last:
                raise CatalogError(f"{tier_where}.up_to: the last tier must have no limit")
            up_to = _decimal(raw_up_to, f"{tier_where}.up_to")
            if up_to <= previous:
                raise CatalogError(
                    f"{tier_where}.up_to: must be greater than the previous limit ({previous})"
                )
            previous = up_to
        tiers.append(Tier(up_to=up_to, unit_price=unit_price))
    return Price(tiers=tuple(tiers))


def _strings(raw: object, where: str) -> tuple[str, ...]:
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise CatalogError(f"{where}: must be a list of strings")
    if not all(isinstance(item, str) for item in raw):
        raise CatalogError(f"{where}: must be a list of strings")
    return tuple(raw)


_METRIC_FIELDS = {
    "id", "unit", "description", "decimals", "group_by", "allow_negative", "price",
}  # fmt: skip


def _metric(raw: object, index: int, currencies: tuple[str, ...], source: str) -> Metric:
    where = f"{source}: metric[{index}]"
    if not isinstance(raw, Mapping):
        raise CatalogError(f"{where}: must be a table")
    metric_id = raw.get("id")
    if not isinstance(metric_id, str) or not METRIC_ID.fullmatch(metric_id):
        raise CatalogError(
            f"{where}.id: required; lower-case letters, digits, '.', '_' or '-' "
            f"(at most 100 characters), got {metric_id!r}"
        )
    where = f"{source}: metric '{metric_id}'"
    unknown = set(raw) - _METRIC_FIELDS
    if unknown:
        raise CatalogError(f"{where}: unknown field(s) {sorted(unknown)}")
    unit = raw.get("unit")
    if not isinstance(unit, str) or not unit.strip():
        raise CatalogError(f'{where}.unit: required, e.g. "second" or "GB"')
    description = raw.get("description", metric_id)
    if not isinstance(description, str):
        raise CatalogError(f"{where}.description: must be a string")
    decimals = raw.get("decimals", 0)
    if isinstance(decimals, bool) or not isinstance(decimals, int):
        raise CatalogError(f"{where}.decimals: must be an integer")
    if not 0 <= decimals <= MAX_QUANTITY_DECIMALS:
        raise CatalogError(f"{where}.decimals: must be between 0 and {MAX_QUANTITY_DECIMALS}")
    group_by = _strings(raw.get("group_by", []), f"{where}.group_by")
    if len(group_by) > MAX_GROUP_BY:
        raise CatalogError(f"{where}.group_by: at most {MAX_GROUP_BY} dimensions")
    for name in group_by:
        if not DIMENSION_NAME.fullmatch(name):
            raise CatalogError(f"{where}.group_by: {name!r} is not a valid dimension name")
    if len(set(group_by)) != len(group_by):
        raise CatalogError(f"{where}.group_by: lists a dimension twice")
    allow_negative = raw.get("allow_negative", False)
    if not isinstance(allow_negative, bool):
        raise CatalogError(f"{where}.allow_negative: must be true or false")
    raw_prices = raw.get("price")
    if not isinstance(raw_prices, Mapping):
        raise CatalogError(f"{where}.price: required, a table of currency = price")
    prices: dict[str, Price] = {}
    for currency_code, raw_price in raw_prices.items():
        try:
            currency = normalize_currency(str(currency_code))
        except CurrencyError as error:
            raise CatalogError(f"{where}.price.{currency_code}: {error}") from None
        if currency in prices:
            raise CatalogError(f"{where}.price.{currency_code}: {currency} is priced twice")
        if currency not in currencies:
            raise CatalogError(
                f"{where}.price.{currency_code}: currency is not listed in catalog.currencies"
            )
        prices[currency] = _price(raw_price, f"{where}.price.{currency}")
    missing = [currency for currency in currencies if currency not in prices]
    if missing:
        raise CatalogError(f"{where}.price: no price for {', '.join(missing)}")
    if allow_negative and any(not price.is_flat for price in prices.values()):
        raise CatalogError(f"{where}: allow_negative needs a flat price (tiers need totals ≥ 0)")
    return Metric(
        id=metric_id,
        unit=unit.strip(),
        description=description,
        decimals=decimals,
        group_by=group_by,
        allow_negative=allow_negative,
        prices=prices,
    )


def parse_catalog(data: Mapping[str, Any], source: str) -> Catalog:
    """Validate a decoded catalog document (the TOML's tables) into a :class:`Catalog`."""
    unknown = set(data) - {"catalog", "metric"}
    if unknown:
        raise CatalogError(f"{source}: unknown table(s) {sorted(unknown)}")
    header = data.get("catalog")
    if not isinstance(header, Mapping):
        raise CatalogError(f"{source}: missing [catalog] table with 'currencies'")
    unknown = set(header) - {"currencies"}
    if unknown:
        raise CatalogError(f"{source}: catalog: unknown field(s) {sorted(unknown)}")
    raw_currencies = _strings(header.get("currencies", []), f"{source}: catalog.currencies")
    if not raw_currencies:
        raise CatalogError(f"{source}: catalog.currencies: list at least one currency")
    try:
        currencies = tuple(normalize_currency(code) for code in raw_currencies)
    except CurrencyError as error:
        raise CatalogError(f"{source}: catalog.currencies: {error}") from None
    twice = sorted({code for code in currencies if currencies.count(code) > 1})
    if twice:
        raise CatalogError(f"{source}: catalog.currencies: lists {', '.join(twice)} twice")
    raw_metrics = data.get("metric")
    if not isinstance(raw_metrics, list) or not raw_metrics:
        raise CatalogError(f"{source}: define at least one [[metric]]")
    metrics: dict[str, Metric] = {}
    for index, raw_metric in enumerate(raw_metrics):
        metric = _metric(raw_metric, index, currencies, source)
        if metric.id in metrics:
            raise CatalogError(f"{source}: metric '{metric.id}' is defined twice")
        metrics[metric.id] = metric
    return Catalog(currencies=currencies, metrics=metrics, source=source)
