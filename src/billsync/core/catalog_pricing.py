"""A catalog's pricing, and what changes when another one replaces it.

A period is rated with the prices in effect at its start (core.pricing). The catalog is a file
each process loads: a new one can price a period that has already begun differently — a price
version from a day on or before an open period's start, or an edited price. Such a change is
applied to the ledger once (services.catalog_prices): the open periods it touches are re-rated,
and it is refused when it would touch a period that is closing or finalized (those bill at the
prices they had: a new price belongs in a version from a later period start).

The *pricing document* is what rating depends on, and nothing else (names, units and display
do not price anything): per metric, its versions in order — the first from the beginning
(``"from": null``), each with its prices by currency in the catalog's own shape::

    {"app.cpu.seconds": {"versions": [
        {"from": null, "prices": {"usd": {"tiers": [{"up_to": null, "unit_price": "0.00001"}]}}},
        {"from": "2027-01-01", "prices": {...}}]}}

Its digest names it: two processes rate alike exactly when their digests are equal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

import orjson

from billsync.core.catalog import Catalog, Price
from billsync.core.money import decimal_text

PricingDocument = Mapping[str, Any]


def _price(price: Price) -> dict[str, Any]:
    """A price as its document, each number in its shortest exact form: ``"0.0010"`` and
    ``"0.001"``, or an ``up_to`` of ``"1000.0"`` and ``"1000"``, are one price."""
    return {
        "tiers": [
            {
                "up_to": None if tier.up_to is None else decimal_text(tier.up_to.normalize()),
                "unit_price": decimal_text(tier.unit_price.normalize()),
            }
            for tier in price.tiers
        ]
    }


def _prices(prices: Mapping[str, Price]) -> dict[str, Any]:
    return {currency: _price(price) for currency, price in sorted(prices.items())}


def pricing_document(catalog: Catalog) -> dict[str, Any]:
    return {
        metric.id: {
            "versions": [
                {"from": None, "prices": _prices(metric.prices)},
                *(
                    {"from": v.effective_from.isoformat(), "prices": _prices(v.prices)}
                    for v in metric.price_versions
                ),
            ]
        }
        for metric in sorted(catalog.metrics.values(), key=lambda m: m.id)
    }


def pricing_digest(document: PricingDocument) -> str:
    return hashlib.sha256(orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).hexdigest()


def prices_on(document: PricingDocument, metric: str, start: date) -> Mapping[str, Any] | None:
    """The prices (by currency, as documents) a period of ``metric`` starting on ``start`` is
    rated with; None when the document has no such metric."""
    entry = document.get(metric)
    if entry is None:
        return None
    found: Mapping[str, Any] = {}
    for version in entry["versions"]:
        since = version["from"]
        if since is not None and date.fromisoformat(since) > start:
            break
        found = version["prices"]
    return found


@dataclass(frozen=True, slots=True)
class Span:
    """Period starts from ``since`` (None: the beginning) up to, not including, ``until``
    (None: for ever), over which one metric's price in one currency differs."""

    metric: str
    currency: str
    since: date | None
    until: date | None

    def holds(self, start: date) -> bool:
        return (self.since is None or start >= self.since) and (
            self.until is None or start < self.until
        )

    def describe(self) -> str:
        since = "the beginning" if self.since is None else self.since.isoformat()
        until = "" if self.until is None else f" to {self.until.isoformat()}"
        return f"{self.metric} in {self.currency.upper()}, periods starting from {since}{until}"


def changed_spans(old: PricingDocument, new: PricingDocument) -> list[Span]:
    """Where ``new`` rates a period differently from ``old``: for each metric both price, each
    currency ``old`` priced that ``new`` prices otherwise or not at all, the spans of period
    starts. A metric or a currency only ``new`` has priced nothing before: no span."""
    spans: list[Span] = []
    for metric in sorted(set(old) & set(new)):
        days = sorted(
            {
                date.fromisoformat(version["from"])
                for document in (old, new)
                for version in document[metric]["versions"]
                if version["from"] is not None
            }
        )
        bounds: list[date | None] = [None, *days]
        currencies = sorted({c for version in old[metric]["versions"] for c in version["prices"]})
        for currency in currencies:
            open_since: date | None = None
            differing = False
            for index, since in enumerate(bounds):
                at = date.min if since is None else since
                before = (prices_on(old, metric, at) or {}).get(currency)
                after = (prices_on(new, metric, at) or {}).get(currency)
                differs = before is not None and before != after
                if differs and not differing:
                    open_since, differing = since, True
                elif not differs and differing:
                    spans.append(Span(metric, currency, open_since, since))
                    differing = False
                if index == len(bounds) - 1 and differing:
                    spans.append(Span(metric, currency, open_since, None))
    return spans
