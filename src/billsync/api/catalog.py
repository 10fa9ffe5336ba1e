"""HTTP endpoint listing the catalog's metrics and prices."""

from __future__ import annotations

from fastapi import APIRouter

from billsync.api.deps import BillsyncDep
from billsync.api.schemas import CatalogRead, MetricRead, PriceVersionRead, TierRead
from billsync.core.catalog import Price
from billsync.core.money import decimal_text

router = APIRouter(tags=["catalog"])


def tiers_read(price: Price) -> list[TierRead]:
    """A price's tiers as the API writes them (decimal strings)."""
    return [
        TierRead(
            up_to=None if tier.up_to is None else decimal_text(tier.up_to),
            unit_price=decimal_text(tier.unit_price),
        )
        for tier in price.tiers
    ]


@router.get("/catalog")
def get_catalog(billsync: BillsyncDep) -> CatalogRead:
    catalog = billsync.catalog
    return CatalogRead(
        currencies=list(catalog.currencies),
        metrics=[
            MetricRead(
                id=metric.id,
                unit=metric.unit,
                description=metric.description,
                decimals=metric.decimals,
                group_by=list(metric.group_by),
                allow_negative=metric.allow_negative,
                aggregation=metric.aggregation.value,
                unique_by=metric.unique_by,
                price_versions=[
                    PriceVersionRead(
                        effective_from=version.effective_from,
                        prices={
                            currency: tiers_read(price)
                            for currency, price in version.prices.items()
                        },
                    )
                    for version in metric.price_versions
                ],
                prices={currency: tiers_read(price) for currency, price in metric.prices.items()},
            )
            for metric in catalog.metrics.values()
        ],
    )
