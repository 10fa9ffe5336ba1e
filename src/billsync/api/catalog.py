"""HTTP endpoint listing the catalog's metrics and prices."""

from __future__ import annotations

from fastapi import APIRouter

from billsync.api.deps import BillsyncDep
from billsync.api.schemas import CatalogRead, MetricRead, TierRead
from billsync.core.money import decimal_text

router = APIRouter(tags=["catalog"])


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
                prices={
                    currency: [
                        TierRead(
                            up_to=None if tier.up_to is None else decimal_text(tier.up_to),
                            unit_price=decimal_text(tier.unit_price),
                        )
                        for tier in price.tiers
                    ]
                    for currency, price in metric.prices.items()
                },
            )
            for metric in catalog.metrics.values()
        ],
    )
