"""The catalog file: the example loads, and every broken catalog is refused with a message that
names the file, the metric and the field at fault."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from billsync.catalog_file import load_catalog
from billsync.config import EXAMPLE_CATALOG
from billsync.core.catalog import Catalog, CatalogError, parse_catalog

pytestmark = pytest.mark.unit  # pure: no database, no network, no process

HEADER = '[catalog]\ncurrencies = ["usd", "eur"]\n'
GOOD_METRIC = """
[[metric]]
id = "good.metric"
unit = "second"
price = { usd = "0.5", eur = "0.4" }
"""


def write(tmp_path: Path, text: str, name: str = "catalog.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def refused(path: Path, *fragments: str) -> str:
    """Load ``path``, expect a CatalogError naming the file and every fragment; return it."""
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    message = str(caught.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# --- the example catalog --------------------------------------------------------------------


def test_example_catalog_loads() -> None:
    catalog = load_catalog(EXAMPLE_CATALOG)
    assert catalog.source == str(EXAMPLE_CATALOG)
    assert catalog.currencies == ("usd", "eur", "jpy")
    assert list(catalog.metrics) == [
        "machine.shared-cpu-1x.seconds",
        "machine.shared-cpu-2x.seconds",
        "machine.performance-1x.seconds",
        "machine.performance-2x.seconds",
        "machine.performance-4x.seconds",
        "volume.gb_hours",
        "bandwidth.egress.na-eu.gb",
        "bandwidth.egress.apac-sa.gb",
        "bandwidth.egress.africa-india.gb",
        "ip.ipv4.hours",
        "volume.snapshots.peak_gb",
    ]
    for metric in catalog.metrics.values():
        assert set(metric.prices) == {"usd", "eur", "jpy"}, metric.id


def test_example_catalog_values_are_exact(example_catalog: Catalog) -> None:
    machine = example_catalog.metrics["machine.shared-cpu-1x.seconds"]
    assert machine.unit == "second"
    assert machine.decimals == 0
    assert machine.group_by == ()
    assert not machine.allow_negative
    assert machine.prices["usd"].is_flat
    assert machine.prices["usd"].tiers[0].unit_price == Decimal("0.00000075")
    assert machine.prices["usd"].tiers[0].up_to is None

    volume = example_catalog.metrics["volume.gb_hours"]
    assert volume.decimals == 6
    usd = volume.prices["usd"]
    assert not usd.is_flat
    assert [tier.up_to for tier in usd.tiers] == [Decimal(2190), None]
    assert [tier.unit_price for tier in usd.tiers] == [Decimal(0), Decimal("0.000205479452")]
    assert usd.marginal_unit_price(Decimal(100)) == Decimal(0)
    assert usd.marginal_unit_price(Decimal(2190)) == Decimal("0.000205479452")

    egress = example_catalog.metrics["bandwidth.egress.na-eu.gb"]
    assert egress.group_by == ("region",)
    assert egress.decimals == 9
    assert egress.prices["jpy"].tiers[0].unit_price == Decimal(3)


def test_minimal_catalog_with_defaults(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, HEADER + GOOD_METRIC))
    metric = catalog.metrics["good.metric"]
    assert metric.description == "good.metric"
    assert metric.decimals == 0
    assert metric.group_by == ()
    assert metric.allow_negative is False
    assert metric.prices["eur"].tiers[0].unit_price == Decimal("0.4")


def test_currency_codes_are_normalized(tmp_path: Path) -> None:
    text = """
[catalog]
currencies = ["USD", " Eur "]

[[metric]]
id = "m"
unit = "call"
price = { USD = "1", eur = "2" }
"""
    catalog = load_catalog(write(tmp_path, text))
    assert catalog.currencies == ("usd", "eur")
    assert set(catalog.metrics["m"].prices) == {"usd", "eur"}


def test_allow_negative_with_flat_price_and_inf_last_tier(tmp_path: Path) -> None:
    text = (
        HEADER
        + """
[[metric]]
id = "credits"
unit = "credit"
allow_negative = true
price = { usd = "1", eur = "1" }

[[metric]]
id = "tiered"
unit = "call"
[metric.price.usd]
tiers = [{ up_to = 10, unit_price = "0" }, { up_to = "inf", unit_price = "0.1" }]
[metric.price.eur]
tiers = [{ up_to = "10", unit_price = "0" }, { unit_price = "0.1" }]
"""
    )
    catalog = load_catalog(write(tmp_path, text))
    assert catalog.metrics["credits"].allow_negative
    tiers = catalog.metrics["tiered"].prices["usd"].tiers
    assert [tier.up_to for tier in tiers] == [Decimal(10), None]


# --- broken metrics: file, metric and field are all named ------------------------------------


def metric_case(body: str) -> str:
    return HEADER + GOOD_METRIC + "\n[[metric]]\n" + body


BROKEN_METRICS = [
    pytest.param(
        'id = "bad.metric"\nunit = "s"\ncolour = "red"\nprice = { usd = "1", eur = "1" }\n',
        ["'bad.metric'", "colour"],
        id="unknown-field",
    ),
    pytest.param(
        'id = "bad.metric"\nprice = { usd = "1", eur = "1" }\n',
        ["'bad.metric'", "unit"],
        id="missing-unit",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "  "\nprice = { usd = "1", eur = "1" }\n',
        ["'bad.metric'", "unit"],
        id="blank-unit",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\ndescription = 5\nprice = { usd = "1", eur = "1" }\n',
        ["'bad.metric'", "description"],
        id="description-not-text",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\ndecimals = 13\nprice = { usd = "1", eur = "1" }\n',
        ["'bad.metric'", "decimals"],
        id="decimals-too-many",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\ndecimals = -1\nprice = { usd = "1", eur = "1" }\n',
        ["'bad.metric'", "decimals"],
        id="decimals-negative",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\ndecimals = true\nprice = { usd = "1", eur = "1" }\n',
        ["'bad.metric'", "decimals"],
        id="decimals-bool",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\ngroup_by = "region"\nprice = { usd = "1", eur = "1" }\n',
        ["'bad.metric'", "group_by"],
        id="group-by-not-list",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\ngroup_by = ["Region"]\nprice = { usd = "1", eur = "1" }\n',
        ["'bad.metric'", "group_by", "Region"],
        id="group-by-bad-name",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\ngroup_by = ["region\\n"]\n'
        'price = { usd = "1", eur = "1" }\n',
        ["'bad.metric'", "group_by"],
        id="group-by-name-trailing-newline",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\ngroup_by = ["a", "a"]\nprice = { usd = "1", eur = "1" }\n',
        ["'bad.metric'", "group_by"],
        id="group-by-twice",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\ngroup_by = ["a", "b", "c", "d", "e"]\n'
        'price = { usd = "1", eur = "1" }\n',
        ["'bad.metric'", "group_by"],
        id="group-by-too-many",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\nallow_negative = "yes"\nprice = { usd = "1", eur = "1" }\n',
        ["'bad.metric'", "allow_negative"],
        id="allow-negative-not-bool",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\n',
        ["'bad.metric'", "price"],
        id="missing-price",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\n[metric.price.usd]\n'
        'tiers = [{ up_to = "100", unit_price = "1" }, { up_to = "100", unit_price = "0.5" },'
        ' { unit_price = "0.1" }]\n'
        '[metric.price.eur]\ntiers = [{ unit_price = "1" }]\n',
        ["'bad.metric'", "price.usd.tiers[1].up_to"],
        id="tier-up-to-not-increasing",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\n[metric.price.usd]\n'
        'tiers = [{ up_to = "100", unit_price = "1" }, { up_to = "50", unit_price = "0.5" },'
        ' { unit_price = "0.1" }]\n'
        '[metric.price.eur]\ntiers = [{ unit_price = "1" }]\n',
        ["'bad.metric'", "price.usd.tiers[1].up_to"],
        id="tier-up-to-decreasing",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\n[metric.price.usd]\n'
        'tiers = [{ up_to = "0", unit_price = "1" }, { unit_price = "0.1" }]\n'
        '[metric.price.eur]\ntiers = [{ unit_price = "1" }]\n',
        ["'bad.metric'", "price.usd.tiers[0].up_to"],
        id="tier-up-to-zero",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\n[metric.price.usd]\n'
        'tiers = [{ up_to = "100", unit_price = "1" }, { up_to = "200", unit_price = "0.5" }]\n'
        '[metric.price.eur]\ntiers = [{ unit_price = "1" }]\n',
        ["'bad.metric'", "price.usd.tiers[1].up_to", "last tier"],
        id="last-tier-with-up-to",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\n[metric.price.usd]\n'
        'tiers = [{ unit_price = "1" }, { unit_price = "0.5" }]\n'
        '[metric.price.eur]\ntiers = [{ unit_price = "1" }]\n',
        ["'bad.metric'", "price.usd.tiers[0].up_to"],
        id="middle-tier-without-up-to",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\n[metric.price.usd]\ntiers = []\n'
        '[metric.price.eur]\ntiers = [{ unit_price = "1" }]\n',
        ["'bad.metric'", "price.usd.tiers"],
        id="no-tiers",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\n[metric.price.usd]\n'
        'tiers = [{ unit_price = "1", discount = "2" }]\n'
        '[metric.price.eur]\ntiers = [{ unit_price = "1" }]\n',
        ["'bad.metric'", "price.usd.tiers[0]", "discount"],
        id="tier-unknown-field",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\n[metric.price.usd]\ntiers = [{ up_to = "5" }]\n'
        '[metric.price.eur]\ntiers = [{ unit_price = "1" }]\n',
        ["'bad.metric'", "price.usd.tiers[0].unit_price"],
        id="tier-without-unit-price",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\nprice = { usd = "0.0000000000001", eur = "1" }\n',
        ["'bad.metric'", "price.usd", "unit_price", "12 decimal"],
        id="price-13-decimals",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\nprice = { usd = "1E-13", eur = "1" }\n',
        ["'bad.metric'", "price.usd", "unit_price", "12 decimal"],
        id="price-13-decimals-exponent",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\nprice = { usd = "-0.01", eur = "1" }\n',
        ["'bad.metric'", "price.usd", "unit_price", "negative"],
        id="negative-price",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\nprice = { usd = 0.02, eur = "1" }\n',
        ["'bad.metric'", "price.usd"],
        id="price-as-float",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\nprice = { usd = "twelve", eur = "1" }\n',
        ["'bad.metric'", "price.usd", "unit_price", "twelve"],
        id="price-not-a-number",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\nprice = { usd = "NaN", eur = "1" }\n',
        ["'bad.metric'", "price.usd", "unit_price"],
        id="price-nan",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\nprice = { usd = "Infinity", eur = "1" }\n',
        ["'bad.metric'", "price.usd", "unit_price"],
        id="price-infinite",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\nprice = { usd = "1", eur = "1", gbp = "1" }\n',
        ["'bad.metric'", "price.gbp", "not listed"],
        id="currency-not-listed",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\nprice = { usd = "1", eur = "1", kwd = "1" }\n',
        ["'bad.metric'", "price.kwd", "three-decimal"],
        id="three-decimal-currency-price",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\nprice = { usd = "1", eur = "1", dollars = "1" }\n',
        ["'bad.metric'", "price.dollars"],
        id="currency-code-invalid",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\nprice = { usd = "1" }\n',
        ["'bad.metric'", "price", "eur"],
        id="missing-price-for-listed-currency",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\nprice = { usd = "1", USD = "2", eur = "1" }\n',
        ["'bad.metric'", "price", "usd"],
        id="currency-priced-twice",
    ),
    pytest.param(
        'id = "bad.metric"\nunit = "s"\nallow_negative = true\n[metric.price.usd]\n'
        'tiers = [{ up_to = "10", unit_price = "0" }, { unit_price = "1" }]\n'
        '[metric.price.eur]\ntiers = [{ unit_price = "1" }]\n',
        ["'bad.metric'", "allow_negative"],
        id="allow-negative-with-tiers",
    ),
]


@pytest.mark.parametrize(("body", "fragments"), BROKEN_METRICS)
def test_broken_metric_is_refused(tmp_path: Path, body: str, fragments: list[str]) -> None:
    refused(write(tmp_path, metric_case(body)), *fragments)


@pytest.mark.parametrize(
    "bad_id",
    [
        pytest.param("Upper.Case", id="upper-case"),
        pytest.param("has space", id="space"),
        pytest.param("-leading-dash", id="leading-dash"),
        pytest.param(".leading-dot", id="leading-dot"),
        pytest.param("", id="empty"),
        pytest.param("a" * 101, id="too-long"),
        pytest.param("ünicode", id="non-ascii"),
        pytest.param("trailing-newline\n", id="trailing-newline"),
    ],
)
def test_bad_metric_id_is_refused(tmp_path: Path, bad_id: str) -> None:
    escaped = bad_id.replace("\n", "\\n")
    path = write(
        tmp_path, metric_case(f'id = "{escaped}"\nunit = "s"\nprice = {{ usd = "1", eur = "1" }}\n')
    )
    # The metric has no usable id: it is named by its position (the second [[metric]]).
    refused(path, "metric[1]", ".id", repr(bad_id))


def test_missing_metric_id_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, metric_case('unit = "s"\nprice = { usd = "1", eur = "1" }\n'))
    refused(path, "metric[1]", ".id", "required")


def test_duplicate_metric_is_refused(tmp_path: Path) -> None:
    message = refused(write(tmp_path, HEADER + GOOD_METRIC + GOOD_METRIC), "'good.metric'")
    assert "twice" in message


def test_error_in_a_tier_names_metric_and_tier(tmp_path: Path) -> None:
    text = (
        HEADER
        + """
[[metric]]
id = "storage"
unit = "GB"
[metric.price.usd]
tiers = [
    { up_to = "10", unit_price = "0" },
    { up_to = "5", unit_price = "1" },
    { unit_price = "2" },
]
[metric.price.eur]
tiers = [{ unit_price = "1" }]
"""
    )
    message = refused(write(tmp_path, text), "metric 'storage'", "price.usd.tiers[1].up_to")
    assert "10" in message  # the previous limit it must exceed


# --- broken headers and files -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        pytest.param(GOOD_METRIC, ["[catalog]"], id="no-catalog-table"),
        pytest.param("[catalog]\n" + GOOD_METRIC, ["catalog.currencies"], id="no-currencies"),
        pytest.param(
            "[catalog]\ncurrencies = []\n" + GOOD_METRIC, ["catalog.currencies"], id="empty"
        ),
        pytest.param(
            '[catalog]\ncurrencies = "usd"\n' + GOOD_METRIC,
            ["catalog.currencies"],
            id="currencies-not-list",
        ),
        pytest.param(
            '[catalog]\ncurrencies = ["usd", "dollar"]\n' + GOOD_METRIC,
            ["catalog.currencies", "dollar"],
            id="currency-code-invalid",
        ),
        pytest.param(
            '[catalog]\ncurrencies = ["usd", "kwd"]\n' + GOOD_METRIC,
            ["catalog.currencies", "kwd", "three-decimal"],
            id="three-decimal-currency",
        ),
        pytest.param(
            '[catalog]\ncurrencies = ["usd", "eur", "USD"]\n' + GOOD_METRIC,
            ["catalog.currencies", "usd"],
            id="currency-listed-twice",
        ),
        pytest.param(
            '[catalog]\ncurrencies = ["usd", "eur"]\ncurrency = "jpy"\n' + GOOD_METRIC,
            ["catalog", "currency"],
            id="unknown-catalog-field",
        ),
        pytest.param(HEADER, ["[[metric]]"], id="no-metrics"),
        pytest.param(HEADER + "[plans]\nx = 1\n" + GOOD_METRIC, ["plans"], id="unknown-table"),
        pytest.param("metric = 5\n" + HEADER, ["[[metric]]"], id="metric-not-array"),
        pytest.param(
            HEADER + "[[metric\n" + GOOD_METRIC, ["not valid TOML", "line"], id="invalid-toml"
        ),
        pytest.param(
            HEADER + 'price = { usd = "1", usd = "2" }\n', ["not valid TOML"], id="toml-dup-key"
        ),
    ],
)
def test_broken_catalog_file_is_refused(tmp_path: Path, text: str, fragments: list[str]) -> None:
    refused(write(tmp_path, text), *fragments)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    refused(tmp_path / "nowhere.toml", "cannot read")


def test_directory_is_refused(tmp_path: Path) -> None:
    refused(tmp_path, "cannot read")


def test_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes((HEADER + GOOD_METRIC).encode() + b"\n# prix en \xe9t\xe9\n")
    refused(path)


# --- parse_catalog on decoded documents --------------------------------------------------------


def document(**metric: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"id": "api.calls", "unit": "call", "price": {"usd": "0.001"}}
    base.update(metric)
    return {"catalog": {"currencies": ["usd"]}, "metric": [base]}


def test_parse_catalog_accepts_a_document() -> None:
    catalog = parse_catalog(document(), "inline")
    assert catalog.source == "inline"
    assert catalog.metrics["api.calls"].prices["usd"].tiers[0].unit_price == Decimal("0.001")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"unit": None}, "unit", id="unit-null"),
        pytest.param({"decimals": 1.5}, "decimals", id="decimals-float"),
        pytest.param({"group_by": [1]}, "group_by", id="group-by-not-strings"),
        pytest.param({"price": "0.001"}, "price", id="price-not-table"),
        pytest.param({"price": {"usd": True}}, "price.usd", id="price-bool"),
        pytest.param({"price": {"usd": ["1"]}}, "price.usd", id="price-list"),
        pytest.param({"price": {"usd": {"tier": []}}}, "price.usd", id="price-table-typo"),
        pytest.param(
            {"price": {"usd": {"tiers": ["1"]}}}, "price.usd.tiers[0]", id="tier-not-table"
        ),
        pytest.param(
            {
                "price": {
                    "usd": {"tiers": [{"up_to": True, "unit_price": "1"}, {"unit_price": "1"}]}
                }
            },
            "price.usd.tiers[0].up_to",
            id="up-to-bool",
        ),
    ],
)
def test_parse_catalog_errors_name_source_metric_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(CatalogError) as caught:
        parse_catalog(document(**changes), "inline.toml")
    message = str(caught.value)
    assert message.startswith("inline.toml: "), message
    assert "'api.calls'" in message, message
    assert field in message, message


def test_parse_catalog_metric_not_a_table() -> None:
    with pytest.raises(CatalogError, match=r"^inline\.toml: metric\[0\]: must be a table"):
        parse_catalog({"catalog": {"currencies": ["usd"]}, "metric": ["api.calls"]}, "inline.toml")
