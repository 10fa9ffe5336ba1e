"""The catalog: which metrics exist, how their usage groups into lines, and what they cost.

Parsing is pure (a mapping in, frozen dataclasses out); reading the TOML file lives in
:mod:`billsync.catalog_file`. Every error names the source, the metric and the field, and one
parse reports every error of the document (``CatalogError.problems``), not only the first: a
metric's fields, its prices and their tiers are each checked whatever the others hold.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any, ParamSpec, TypeVar

from billsync.core.money import CurrencyError, normalize_currency

METRIC_ID = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,99}$")
DIMENSION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
MAX_PRICE_DECIMALS = 12
MAX_QUANTITY_DECIMALS = 12
MAX_GROUP_BY = 4
MAX_DISPLAY_DECIMALS = 6
DEFAULT_DISPLAY_DECIMALS = 2
T = TypeVar("T")
P = ParamSpec("P")


class CatalogError(ValueError):
    """The catalog is invalid: ``problems`` says where and why, one line each (the message is
    those lines)."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems: tuple[str, ...] = problems


class _Problems:
    """The errors found so far; ``check`` runs a step and keeps its errors instead of
    stopping at the first."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def add(self, problem: str) -> None:
        self.found.append(problem)

    def check(self, step: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T | None:
        try:
            return step(*args, **kwargs)
        except CatalogError as error:
            self.found.extend(error.problems)
            return None

    def raise_any(self) -> None:
        if self.found:
            raise CatalogError(*self.found)


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


class Aggregation(enum.StrEnum):
    """How a metric's events make a line's quantity, over the period and the line's grouping
    (see :mod:`billsync.core.aggregation`)."""

    SUM = "sum"
    """The quantities added up (seconds run, GB sent)."""
    MAX = "max"
    """The largest quantity reported (peak provisioned GB)."""
    UNIQUE_COUNT = "unique_count"
    """How many distinct values of the dimension ``unique_by`` (IPv4 addresses), exactly."""
    LATEST = "latest"
    """The quantity of the latest event by timestamp, ties broken by the greater event id
    (the last reported seat count)."""


@dataclass(frozen=True, slots=True)
class PriceVersion:
    """A metric's prices from ``effective_from`` on: a period starting on or after that day is
    rated with them (until a later version's day)."""

    effective_from: date
    prices: Mapping[str, Price]


@dataclass(frozen=True, slots=True)
class Metric:
    id: str
    unit: str
    description: str
    decimals: int
    group_by: tuple[str, ...]
    allow_negative: bool
    prices: Mapping[str, Price]
    # How people read quantities of the metric (the customer's page): in ``display_unit``,
    # ``display_per_unit`` of the metric's own unit making one (seconds shown in hours: "hour",
    # 3600), rounded to ``display_decimals``. Display only: the ledger, Stripe and the usage
    # export keep ``unit``.
    display_unit: str | None = None
    display_per_unit: Decimal | None = None
    display_decimals: int = DEFAULT_DISPLAY_DECIMALS
    aggregation: Aggregation = Aggregation.SUM
    # The dimension whose distinct values a ``unique_count`` metric counts (None otherwise).
    unique_by: str | None = None
    # Later prices, by ascending ``effective_from``; ``prices`` apply before the first of them.
    price_versions: tuple[PriceVersion, ...] = ()

    def version_on(self, period_start: date) -> date | None:
        """The ``effective_from`` of the price version a period starting on this day is rated
        with; None for the metric's first prices."""
        found = None
        for version in self.price_versions:
            if version.effective_from > period_start:
                break
            found = version.effective_from
        return found

    def prices_on(self, period_start: date) -> Mapping[str, Price]:
        """The prices a period starting on this day is rated with, by currency."""
        prices = self.prices
        for version in self.price_versions:
            if version.effective_from > period_start:
                break
            prices = version.prices
        return prices


@dataclass(frozen=True, slots=True)
class Catalog:
    currencies: tuple[str, ...]
    metrics: Mapping[str, Metric]
    source: str
    # ``[invoice] rollup``: the dimensions each roll-up level keeps besides the metric, finest
    # first, for invoices whose lines do not fit Stripe's 250 items (core.rollup).
    rollup: tuple[tuple[str, ...], ...] = ()


def _decimal(value: object, where: str, what: str = "") -> Decimal:
    """A decimal from a TOML string or integer; ``what`` names the value when ``where`` is
    not its own key (a flat price is ``price.usd``, the unit price of its only tier)."""
    named = f"{where}: {what} " if what else f"{where}: "
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise CatalogError(f'{named}must be a decimal string such as "0.0000008", got {value!r}')
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise CatalogError(f"{named}{value!r} is not a decimal number") from None
    if not number.is_finite():
        raise CatalogError(f"{named}must be finite, got {value!r}")
    return number


def _decimal_places(number: Decimal) -> int:
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


def _unit_price(value: object, where: str, what: str = "") -> Decimal:
    named = f"{where}: {what} " if what else f"{where}: "
    unit_price = _decimal(value, where, what)
    if unit_price < 0:
        raise CatalogError(f"{named}must not be negative")
    if _decimal_places(unit_price) > MAX_PRICE_DECIMALS:
        raise CatalogError(f"{named}at most {MAX_PRICE_DECIMALS} decimal places")
    return unit_price


def _price(raw: object, where: str) -> Price:
    if isinstance(raw, str | int) and not isinstance(raw, bool):
        # A flat price: the file says ``usd = "0.01"``, so errors name ``price.usd`` itself.
        return Price(tiers=(Tier(up_to=None, unit_price=_unit_price(raw, where, "unit_price")),))
    if not isinstance(raw, Mapping):
        raise CatalogError(f"{where}: must be a decimal string or a table with 'tiers'")
    unknown = set(raw) - {"tiers"}
    if unknown:
        raise CatalogError(f"{where}: unknown field(s) {sorted(unknown)}; expected 'tiers'")
    raw_tiers = raw.get("tiers")
    if not isinstance(raw_tiers, list) or not raw_tiers:
        raise CatalogError(f"{where}.tiers: must be a non-empty list of tiers")
    problems = _Problems()
    tiers: list[Tier] = []
    previous: Decimal = Decimal(0)
    for index, raw_tier in enumerate(raw_tiers):
        tier_where = f"{where}.tiers[{index}]"
        if not isinstance(raw_tier, Mapping):
            problems.add(f"{tier_where}: must be a table with 'unit_price' and 'up_to'")
            continue
        unknown = set(raw_tier) - {"unit_price", "up_to"}
        if unknown:
            problems.add(f"{tier_where}: unknown field(s) {sorted(unknown)}")
        unit_price = None
        if "unit_price" not in raw_tier:
            problems.add(f"{tier_where}.unit_price: required")
        else:
            unit_price = problems.check(
                _unit_price, raw_tier["unit_price"], f"{tier_where}.unit_price"
            )
        is_last = index == len(raw_tiers) - 1
        raw_up_to = raw_tier.get("up_to")
        up_to: Decimal | None = None
        if raw_up_to is None or raw_up_to == "inf":
            if not is_last:
                problems.add(f"{tier_where}.up_to: required on every tier but the last")
        elif is_last:
            problems.add(f"{tier_where}.up_to: the last tier must have no limit")
        else:
            up_to = problems.check(_decimal, raw_up_to, f"{tier_where}.up_to")
            if up_to is not None:
                if up_to <= previous:
                    problems.add(
                        f"{tier_where}.up_to: must be greater than the previous limit ({previous})"
                    )
                previous = max(previous, up_to)
        if unit_price is not None:
            tiers.append(Tier(up_to=up_to, unit_price=unit_price))
    problems.raise_any()
    return Price(tiers=tuple(tiers))


def _strings(raw: object, where: str) -> tuple[str, ...]:
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise CatalogError(f"{where}: must be a list of strings")
    if not all(isinstance(item, str) for item in raw):
        raise CatalogError(f"{where}: must be a list of strings")
    return tuple(raw)


_METRIC_FIELDS = {
    "id", "unit", "description", "decimals", "group_by", "allow_negative", "price",
    "display_unit", "display_per_unit", "display_decimals", "aggregation", "unique_by",
    "price_versions",
}  # fmt: skip


def parse_price(raw: object, where: str) -> Price:
    """One price as the catalog writes it (a decimal string, or a table of ``tiers``); a
    :class:`CatalogError` names ``where``."""
    return _price(raw, where)


def _price_versions(
    raw: object,
    where: str,
    currencies: tuple[str, ...] | None,
    allow_negative: bool,
    problems: _Problems,
) -> tuple[PriceVersion, ...]:
    """``[[metric.price_versions]]``: each with ``effective_from`` (a date, later than the one
    before) and a ``price`` table pricing the same currencies."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.add(f"{where}.price_versions: must be a list of tables")
        return ()
    versions: list[PriceVersion] = []
    previous: date | None = None
    for index, item in enumerate(raw):
        at = f"{where}.price_versions[{index}]"
        if not isinstance(item, Mapping):
            problems.add(f"{at}: must be a table with effective_from and price")
            continue
        unknown = set(item) - {"effective_from", "price"}
        if unknown:
            problems.add(f"{at}: unknown field(s) {sorted(unknown)}")
        raw_day = item.get("effective_from")
        day: date | None = None
        if isinstance(raw_day, date):
            day = raw_day  # TOML's own date literal
        elif isinstance(raw_day, str):
            try:
                day = date.fromisoformat(raw_day)
            except ValueError:
                day = None
        if day is None:
            problems.add(f'{at}.effective_from: required, a date such as "2027-01-01"')
        elif previous is not None and day <= previous:
            problems.add(f"{at}.effective_from: must be later than the version before ({previous})")
        prices = _prices(item.get("price"), at, currencies, problems)
        if allow_negative and any(not price.is_flat for price in prices.values()):
            problems.add(f"{at}: allow_negative needs a flat price (tiers need totals ≥ 0)")
        if day is not None:
            previous = day
            versions.append(PriceVersion(day, prices))
    return tuple(versions)


def _aggregation(
    raw: Mapping[str, Any], where: str, group_by: tuple[str, ...], problems: _Problems
) -> tuple[Aggregation, str | None]:
    """``aggregation`` (default ``sum``) and, for ``unique_count``, the ``unique_by`` dimension."""
    raw_aggregation = raw.get("aggregation", Aggregation.SUM.value)
    try:
        aggregation = Aggregation(raw_aggregation)
    except ValueError:
        problems.add(
            f"{where}.aggregation: one of {', '.join(a.value for a in Aggregation)}, "
            f"got {raw_aggregation!r}"
        )
        aggregation = Aggregation.SUM
    unique_by = raw.get("unique_by")
    if aggregation is not Aggregation.UNIQUE_COUNT:
        if unique_by is not None:
            problems.add(f'{where}.unique_by: only with aggregation = "unique_count"')
        return aggregation, None
    if not isinstance(unique_by, str) or not DIMENSION_NAME.fullmatch(unique_by):
        problems.add(
            f"{where}.unique_by: required with unique_count: the dimension whose distinct "
            f'values are counted, e.g. "ip", got {unique_by!r}'
        )
        return aggregation, None
    if unique_by in group_by:
        problems.add(
            f"{where}.unique_by: {unique_by!r} is also in group_by (each line would count 1)"
        )
    return aggregation, unique_by


def _display(
    raw: Mapping[str, Any], where: str, unit: str, problems: _Problems
) -> tuple[str | None, Decimal | None, int]:
    """The optional display unit: ``display_unit`` and ``display_per_unit`` together (how many
    of the metric's ``unit`` make one), ``display_decimals`` with them."""
    display_unit = raw.get("display_unit")
    per_unit = raw.get("display_per_unit")
    decimals = raw.get("display_decimals", DEFAULT_DISPLAY_DECIMALS)
    if display_unit is None and per_unit is None:
        if "display_decimals" in raw:
            problems.add(f"{where}.display_decimals: only with display_unit and display_per_unit")
        return None, None, DEFAULT_DISPLAY_DECIMALS
    if display_unit is None:
        problems.add(f'{where}.display_unit: required with display_per_unit, e.g. "hour"')
    elif (
        not isinstance(display_unit, str)
        or not display_unit.strip()
        or len(display_unit) > 40
        or not display_unit.isprintable()
    ):
        problems.add(f'{where}.display_unit: a unit name of 1–40 printable characters, e.g. "hour"')
        display_unit = None
    factor: Decimal | None = None
    if per_unit is None:
        problems.add(
            f"{where}.display_per_unit: required with display_unit: how many {unit or 'units'} "
            'make one display unit, e.g. "3600" for seconds shown in hours'
        )
    else:
        factor = problems.check(_decimal, per_unit, f"{where}.display_per_unit")
        if factor is not None and factor <= 0:
            problems.add(f"{where}.display_per_unit: must be greater than 0, got {per_unit!r}")
            factor = None
    if isinstance(decimals, bool) or not isinstance(decimals, int):
        problems.add(f"{where}.display_decimals: must be an integer")
        decimals = DEFAULT_DISPLAY_DECIMALS
    elif not 0 <= decimals <= MAX_DISPLAY_DECIMALS:
        problems.add(f"{where}.display_decimals: must be between 0 and {MAX_DISPLAY_DECIMALS}")
    name = display_unit.strip() if isinstance(display_unit, str) else None
    return name, factor, decimals


def _prices(
    raw_prices: object, where: str, currencies: tuple[str, ...] | None, problems: _Problems
) -> dict[str, Price]:
    """A metric's ``price`` table: the valid prices; the errors go to ``problems``."""
    if not isinstance(raw_prices, Mapping):
        problems.add(f"{where}.price: required, a table of currency = price")
        return {}
    prices: dict[str, Price] = {}
    priced: set[str] = set()  # currencies given a price, valid or not
    for currency_code, raw_price in raw_prices.items():
        # Paths name the key as the file writes it (``price.USD``).
        price_where = f"{where}.price.{currency_code}"
        try:
            currency = normalize_currency(str(currency_code))
        except CurrencyError as error:
            problems.add(f"{price_where}: {error}")
            continue
        if currency in priced:
            problems.add(f"{price_where}: {currency} is priced twice")
            continue
        priced.add(currency)
        if currencies is not None and currency not in currencies:
            problems.add(f"{price_where}: currency is not listed in catalog.currencies")
            continue
        price = problems.check(_price, raw_price, price_where)
        if price is not None:
            prices[currency] = price
    missing = [currency for currency in currencies or () if currency not in priced]
    if missing:
        problems.add(f"{where}.price: no price for {', '.join(missing)}")
    return prices


def _metric(raw: object, index: int, currencies: tuple[str, ...] | None, source: str) -> Metric:
    """One ``[[metric]]``, with every error of its fields (``currencies`` is None when the
    header's list is itself wrong: the prices are then checked on their own)."""
    where = f"{source}: metric[{index}]"
    if not isinstance(raw, Mapping):
        raise CatalogError(f"{where}: must be a table")
    problems = _Problems()
    metric_id = raw.get("id")
    if not isinstance(metric_id, str) or not METRIC_ID.fullmatch(metric_id):
        problems.add(
            f"{where}.id: required; lower-case letters, digits, '.', '_' or '-' "
            f"(at most 100 characters), got {metric_id!r}"
        )
        metric_id = ""
    else:
        where = f"{source}: metric '{metric_id}'"
    unknown = set(raw) - _METRIC_FIELDS
    if unknown:
        problems.add(f"{where}: unknown field(s) {sorted(unknown)}")
    unit = raw.get("unit")
    if not isinstance(unit, str) or not unit.strip():
        problems.add(f'{where}.unit: required, e.g. "second" or "GB"')
        unit = ""
    description = raw.get("description", metric_id)
    if not isinstance(description, str):
        problems.add(f"{where}.description: must be a string")
        description = metric_id
    decimals = raw.get("decimals", 0)
    if isinstance(decimals, bool) or not isinstance(decimals, int):
        problems.add(f"{where}.decimals: must be an integer")
        decimals = 0
    elif not 0 <= decimals <= MAX_QUANTITY_DECIMALS:
        problems.add(f"{where}.decimals: must be between 0 and {MAX_QUANTITY_DECIMALS}")
    group_by = problems.check(_strings, raw.get("group_by", []), f"{where}.group_by") or ()
    if len(group_by) > MAX_GROUP_BY:
        problems.add(f"{where}.group_by: at most {MAX_GROUP_BY} dimensions")
    for name in group_by:
        if not DIMENSION_NAME.fullmatch(name):
            problems.add(f"{where}.group_by: {name!r} is not a valid dimension name")
    if len(set(group_by)) != len(group_by):
        problems.add(f"{where}.group_by: lists a dimension twice")
    allow_negative = raw.get("allow_negative", False)
    if not isinstance(allow_negative, bool):
        problems.add(f"{where}.allow_negative: must be true or false")
        allow_negative = False
    prices = _prices(raw.get("price"), where, currencies, problems)
    if allow_negative and any(not price.is_flat for price in prices.values()):
        problems.add(f"{where}: allow_negative needs a flat price (tiers need totals ≥ 0)")
    display_unit, display_per_unit, display_decimals = _display(raw, where, unit, problems)
    aggregation, unique_by = _aggregation(raw, where, group_by, problems)
    versions = _price_versions(
        raw.get("price_versions"), where, currencies, allow_negative, problems
    )
    if allow_negative and aggregation is not Aggregation.SUM:
        problems.add(f"{where}: allow_negative is for sums only (aggregation is {aggregation})")
    problems.raise_any()
    return Metric(
        id=metric_id,
        unit=unit.strip(),
        description=description,
        decimals=decimals,
        group_by=group_by,
        allow_negative=allow_negative,
        prices=prices,
        display_unit=display_unit,
        display_per_unit=display_per_unit,
        display_decimals=display_decimals,
        aggregation=aggregation,
        unique_by=unique_by,
        price_versions=versions,
    )


def parse_catalog(data: Mapping[str, Any], source: str) -> Catalog:
    """Validate a decoded catalog document (the TOML's tables) into a :class:`Catalog`; a
    :class:`CatalogError` lists every problem found."""
    problems = _Problems()
    unknown = set(data) - {"catalog", "metric", "invoice"}
    if unknown:
        problems.add(f"{source}: unknown table(s) {sorted(unknown)}")
    currencies: tuple[str, ...] | None = None
    header = data.get("catalog")
    if not isinstance(header, Mapping):
        problems.add(f"{source}: missing [catalog] table with 'currencies'")
    else:
        unknown = set(header) - {"currencies"}
        if unknown:
            problems.add(f"{source}: catalog: unknown field(s) {sorted(unknown)}")
        currencies = problems.check(_currencies, header, source)
    raw_metrics = data.get("metric")
    if not isinstance(raw_metrics, list) or not raw_metrics:
        problems.add(f"{source}: define at least one [[metric]]")
        raw_metrics = []
    metrics: dict[str, Metric] = {}
    for index, raw_metric in enumerate(raw_metrics):
        metric = problems.check(_metric, raw_metric, index, currencies, source)
        if metric is None:
            continue
        if metric.id in metrics:
            problems.add(f"{source}: metric '{metric.id}' is defined twice")
        metrics[metric.id] = metric
    rollup = problems.check(_rollup, data.get("invoice", {}), metrics, source) or ()
    problems.raise_any()
    assert currencies is not None
    return Catalog(currencies=currencies, metrics=metrics, source=source, rollup=rollup)


def _rollup(raw: object, metrics: Mapping[str, Metric], source: str) -> tuple[tuple[str, ...], ...]:
    """``[invoice] rollup = [["region"], []]``: each level the dimensions it keeps besides the
    metric, finest first — each keeps a subset of the one before, and every dimension named
    is one some metric groups by (a typo would silently roll everything up)."""
    where = f"{source}: invoice"
    if not isinstance(raw, Mapping):
        raise CatalogError(f"{where}: must be a table")
    unknown = set(raw) - {"rollup"}
    if unknown:
        raise CatalogError(f"{where}: unknown field(s) {sorted(unknown)}")
    levels = raw.get("rollup", [])
    if not isinstance(levels, list):
        raise CatalogError(f'{where}.rollup: must be a list of levels, e.g. [["region"], []]')
    grouped_by = {name for metric in metrics.values() for name in metric.group_by}
    found: list[tuple[str, ...]] = []
    for index, level in enumerate(levels):
        dimensions = _strings(level, f"{where}.rollup[{index}]")
        strange = sorted(set(dimensions) - grouped_by)
        if strange:
            raise CatalogError(
                f"{where}.rollup[{index}]: {strange} is not a group_by dimension of any metric"
            )
        if found and not set(dimensions) < set(found[-1]):
            raise CatalogError(
                f"{where}.rollup[{index}]: each level keeps fewer dimensions than the one "
                f"before it (finest first); {list(dimensions)} does not come after "
                f"{list(found[-1])}"
            )
        found.append(dimensions)
    return tuple(found)


def _currencies(header: Mapping[str, Any], source: str) -> tuple[str, ...]:
    raw_currencies = _strings(header.get("currencies", []), f"{source}: catalog.currencies")
    if not raw_currencies:
        raise CatalogError(f"{source}: catalog.currencies: list at least one currency")
    problems = _Problems()
    currencies = []
    for code in raw_currencies:
        try:
            currencies.append(normalize_currency(code))
        except CurrencyError as error:
            problems.add(f"{source}: catalog.currencies: {error}")
    twice = sorted({code for code in currencies if currencies.count(code) > 1})
    if twice:
        problems.add(f"{source}: catalog.currencies: lists {', '.join(twice)} twice")
    problems.raise_any()
    return tuple(currencies)
