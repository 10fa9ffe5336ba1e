"""How amounts and quantities read on the customer's page: the currency's symbol and minor unit,
the catalog's display unit (exact, rounded for display only), and the catalog rules for it."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from billsync.core.catalog import Catalog, CatalogError, parse_catalog
from billsync.core.display import (
    display_unit_price,
    format_money,
    format_price,
    in_display_unit,
    shown_quantity,
    unit_label,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        (18498, "usd", "$184.98"),
        (-500, "usd", "\u2212$5.00"),  # a credit: the minus sign, not a hyphen
        (0, "usd", "$0.00"),
        (123456789, "usd", "$1,234,567.89"),
        (1500, "eur", "€15.00"),
        (123456, "jpy", "¥123,456"),  # yen has no minor unit: no decimals
        (-7, "jpy", "\u2212¥7"),
        (1200, "sek", "12.00 SEK"),  # no symbol: the code after the amount
        (5, "USD", "$0.05"),
    ],
)
def test_money_reads_in_its_currency(amount: int, currency: str, text: str) -> None:
    assert format_money(amount, currency) == text


def test_prices_keep_every_significant_digit() -> None:
    assert format_price(Decimal("0.00000075"), "usd") == "$0.00000075"
    assert format_price(Decimal("0.02"), "usd") == "$0.02"
    assert format_price(Decimal("3"), "usd") == "$3.00"
    assert format_price(Decimal("3"), "jpy") == "¥3"
    assert format_price(Decimal("0.41"), "jpy") == "¥0.41"


def test_seconds_read_in_hours_exactly_and_rounded_for_display_only(
    example_catalog: Catalog,
) -> None:
    machine = example_catalog.metrics["machine.shared-cpu-1x.seconds"]
    assert (machine.unit, machine.display_unit, machine.display_per_unit) == (
        "second", "hour", Decimal(3600)
    )  # fmt: skip
    shown = shown_quantity(Decimal(107652), machine)
    assert shown.label == "29.90 hours"  # not "107652 second"
    assert in_display_unit(Decimal(86400), machine) == 24
    assert shown_quantity(Decimal(3600), machine).label == "1.00 hour"
    price, unit = display_unit_price(Decimal("0.00000075"), machine)
    assert (price, unit) == (Decimal("0.0027"), "hour")  # per hour, exact
    # A metric without a display unit reads in its own unit, exact.
    egress = example_catalog.metrics["bandwidth.egress.na-eu.gb"]
    assert shown_quantity(Decimal("133.400000000"), egress).label == "133.4 GB"
    ips = example_catalog.metrics["ip.ipv4.hours"]
    assert shown_quantity(Decimal("1240"), ips).label == "1,240 hours"
    assert unit_label("GB-hour", Decimal(5)) == "GB-hours"
    assert unit_label("GB", Decimal(5)) == "GB"


def test_display_rounds_half_up_to_the_catalogs_decimals() -> None:
    catalog = parse_catalog(
        _document(display_unit="hour", display_per_unit="3600", display_decimals=1), "t.toml"
    )
    metric = catalog.metrics["m"]
    assert shown_quantity(Decimal(180), metric).text == "0.1"  # 0.05 → 0.1
    assert shown_quantity(Decimal(179), metric).text == "0.0"


def _document(**metric: Any) -> dict[str, Any]:
    return {
        "catalog": {"currencies": ["usd"]},
        "metric": [{"id": "m", "unit": "second", "price": {"usd": "0.01"}, **metric}],
    }


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"display_unit": "hour"}, "metric 'm'.display_per_unit: required with display_unit"),
        ({"display_per_unit": "3600"}, "metric 'm'.display_unit: required with display_per_unit"),
        ({"display_unit": "hour", "display_per_unit": "0"}, "must be greater than 0"),
        ({"display_unit": "hour", "display_per_unit": "-60"}, "must be greater than 0"),
        ({"display_unit": "hour", "display_per_unit": "abc"}, "is not a decimal number"),
        ({"display_unit": "hour", "display_per_unit": 3.5}, "must be a decimal string"),
        ({"display_unit": "", "display_per_unit": "60"}, "display_unit: a unit name"),
        ({"display_unit": "h\nour", "display_per_unit": "60"}, "display_unit: a unit name"),
        ({"display_unit": "hour", "display_per_unit": "60", "display_decimals": 9},
         "display_decimals: must be between 0 and 6"),
        ({"display_decimals": 2}, "display_decimals: only with display_unit"),
    ],
)  # fmt: skip
def test_a_display_unit_is_checked(fields: dict[str, Any], fragment: str) -> None:
    with pytest.raises(CatalogError) as refused:
        parse_catalog(_document(**fields), "t.toml")
    assert fragment in str(refused.value)


def test_a_metric_without_a_display_unit_has_none() -> None:
    metric = parse_catalog(_document(), "t.toml").metrics["m"]
    assert (metric.display_unit, metric.display_per_unit) == (None, None)
