"""Which price rates a line: the catalog's price version, or the account's negotiated rate.

A period is rated with the prices in effect at its **start** — late usage with those of the
period it happened in — so a price that changes on a date never re-rates a period that began
before it, and a finalized invoice is never re-rated by a later catalog or rate card:

1. the account's rate card in effect at the period start (the latest with ``effective_from``
   on or before it), if it prices the metric: a *negotiated* rate;
2. else the catalog's price version in effect at the period start
   (:meth:`billsync.core.catalog.Metric.prices_on`).

A rate card is set through ``PUT /v1/accounts/{id}/prices`` (or the CLI / the console): the
complete set of the account's negotiated prices from a period start on, in the account's
currency; metrics it leaves out use the catalog. Earlier cards keep applying to earlier
periods.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from billsync.core.catalog import Metric, Price, Tier, parse_price
from billsync.core.money import decimal_text

CATALOG = "catalog"
NEGOTIATED = "negotiated"


@dataclass(frozen=True, slots=True)
class RateCard:
    """An account's negotiated prices (by metric, in its currency) from a period start on."""

    effective_from: date
    prices: Mapping[str, Price]
    set_at: datetime | None = None
    set_by: str | None = None


@dataclass(frozen=True, slots=True)
class AppliedPrice:
    """The price a line is rated with, and where it comes from."""

    price: Price
    source: str  # CATALOG or NEGOTIATED
    # The catalog version's or the rate card's first day; None: the catalog's first prices.
    effective_from: date | None

    @property
    def label(self) -> str:
        """How the customer's page and the console name it: "catalog price", "catalog price
        from 2027-01-01", "negotiated rate from 2026-12-01"."""
        name = "negotiated rate" if self.source == NEGOTIATED else "catalog price"
        return name if self.effective_from is None else f"{name} from {self.effective_from}"


def card_on(cards: Sequence[RateCard], period_start: date) -> RateCard | None:
    """The rate card in effect for a period starting on this day (cards by ascending date)."""
    found = None
    for card in cards:
        if card.effective_from > period_start:
            break
        found = card
    return found


def applied_price(
    metric: Metric, cards: Sequence[RateCard], currency: str, period_start: date
) -> AppliedPrice | None:
    """The price of ``metric`` in ``currency`` for a period starting on ``period_start``; None
    when neither the account nor the catalog prices it in that currency."""
    card = card_on(cards, period_start) if cards else None
    if card is not None:
        negotiated = card.prices.get(metric.id)
        if negotiated is not None:
            return AppliedPrice(negotiated, NEGOTIATED, card.effective_from)
    price = metric.prices_on(period_start).get(currency)
    if price is None:
        return None
    return AppliedPrice(price, CATALOG, metric.version_on(period_start))


# --- the stored document (accounts.rate_cards) -------------------------------------------------


def price_document(price: Price) -> dict[str, Any]:
    """A price as JSON, in the catalog's own shape (``{"tiers": [...]}``)."""
    return {
        "tiers": [
            {
                "up_to": None if tier.up_to is None else decimal_text(tier.up_to),
                "unit_price": decimal_text(tier.unit_price),
            }
            for tier in price.tiers
        ]
    }


def cards_document(cards: Sequence[RateCard]) -> list[dict[str, Any]] | None:
    if not cards:
        return None
    return [
        {
            "effective_from": card.effective_from.isoformat(),
            "prices": {metric: price_document(price) for metric, price in card.prices.items()},
            "set_at": None if card.set_at is None else card.set_at.isoformat(),
            "set_by": card.set_by,
        }
        for card in cards
    ]


def cards_of(document: Any) -> tuple[RateCard, ...]:
    """The stored ``rate_cards`` document (a list, or None) as RateCards, by ascending date."""
    if not document:
        return ()
    cards = []
    for item in document:
        prices = {
            metric: Price(
                tiers=tuple(
                    Tier(
                        up_to=None if tier["up_to"] is None else Decimal(tier["up_to"]),
                        unit_price=Decimal(tier["unit_price"]),
                    )
                    for tier in raw["tiers"]
                )
            )
            for metric, raw in item["prices"].items()
        }
        set_at = item.get("set_at")
        cards.append(
            RateCard(
                date.fromisoformat(item["effective_from"]),
                prices,
                None if set_at is None else datetime.fromisoformat(set_at),
                item.get("set_by"),
            )
        )
    cards.sort(key=lambda card: card.effective_from)
    return tuple(cards)


__all__ = [
    "CATALOG",
    "NEGOTIATED",
    "AppliedPrice",
    "RateCard",
    "applied_price",
    "card_on",
    "cards_document",
    "cards_of",
    "parse_price",
    "price_document",
]
