"""What a Stripe invoice carries when the ledger's lines do not fit on it: roll-up items.

Stripe holds at most 250 items on one invoice (API changelog 2016-02-22, "You can no longer
add more than 250 invoice items to an invoice"; Stripe's summary items and line-item grouping
only change how an invoice renders, not the cap: docs.stripe.com/invoicing/group-line-items).
The ledger
keeps every line (e.g. app × region × machine size); the invoice carries the *finest level that
fits*:

1. each line its own item (``detail``), when there are at most 250 and none is over Stripe's
   largest amount;
2. else the catalog's roll-up levels in order, finest first (``[invoice] rollup``, e.g.
   ``[["region"], []]``: by metric and region, then by metric): lines of one metric whose kept
   dimensions (and late period) are equal make one item, its amount the sum of theirs;
3. the last level always keeps the metric only (added when the catalog does not end with it).

The choice depends on the period's lines only — the same lines always give the same items, in
the same order — so that two syncs (or a sync and its recovery) never disagree. Each line is
rounded once (core.rating); an item's amount is the exact sum of its lines' cents, so the
detail and the roll-up sum to the same total, to the cent.

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Protocol

from billsync.core.money import MAX_STRIPE_AMOUNT

MAX_INVOICE_ITEMS = 250
DETAIL = "detail"


class RollupError(ValueError):
    """No level fits: even one item per metric is over the cap, or an item over the largest
    amount Stripe takes."""


class RolledLine(Protocol):
    """What rolling up needs of a ledger line."""

    @property
    def id(self) -> int: ...
    @property
    def metric(self) -> str: ...
    @property
    def grouping(self) -> Mapping[str, str]: ...
    @property
    def late_from(self) -> date | None: ...
    @property
    def amount(self) -> int: ...
    @property
    def quantity(self) -> Decimal: ...


@dataclass(frozen=True, slots=True)
class Item:
    """One item of the Stripe invoice: one line (``key`` None) or a roll-up of lines."""

    key: str | None
    line_ids: tuple[int, ...]
    metric: str
    kept: tuple[tuple[str, str], ...]  # the dimensions the level keeps, with their values
    late_from: date | None
    amount: int
    quantity: Decimal

    @property
    def representative(self) -> int:
        """The item's first line: how reports name a roll-up item."""
        return self.line_ids[0]


@dataclass(frozen=True, slots=True)
class Rollup:
    level: str  # DETAIL, or the kept dimensions ("metric, region"; "metric")
    items: tuple[Item, ...]

    @property
    def rolled(self) -> bool:
        return self.level != DETAIL

    def item_of(self) -> dict[int, Item]:
        """Each line's item."""
        return {line_id: item for item in self.items for line_id in item.line_ids}


def level_name(dimensions: Sequence[str]) -> str:
    return ", ".join(("metric", *dimensions))


def levels_with_last(levels: Sequence[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """The catalog's levels, ending with the metric alone."""
    found = [tuple(level) for level in levels]
    if not found or found[-1]:
        found.append(())
    return found


def item_key(metric: str, kept: Sequence[tuple[str, str]], late_from: date | None) -> str:
    """A roll-up item's identity, short enough for Stripe metadata and an index: a digest of
    what it groups. The same lines at the same level always give the same key; two levels
    that group the same lines differently give different keys (the kept dimensions differ)."""
    text = "\x1f".join(
        (metric, late_from.isoformat() if late_from else "", *(f"{k}={v}" for k, v in kept))
    )
    return "r_" + hashlib.sha256(text.encode()).hexdigest()[:30]


def _order(item: Item) -> tuple[bool, date, str, tuple[tuple[str, str], ...], int]:
    """The period's own usage first, then late usage by its period; then metric and values."""
    late = item.late_from
    return (late is not None, late or date.min, item.metric, item.kept, item.representative)


def _detail(lines: Sequence[RolledLine]) -> tuple[Item, ...]:
    items = [
        Item(
            None,
            (line.id,),
            line.metric,
            tuple(sorted(line.grouping.items())),
            line.late_from,
            line.amount,
            line.quantity,
        )
        for line in lines
    ]
    return tuple(sorted(items, key=_order))


def _grouped(lines: Sequence[RolledLine], dimensions: tuple[str, ...]) -> tuple[Item, ...]:
    groups: dict[tuple[str, tuple[tuple[str, str], ...], date | None], list[RolledLine]] = {}
    for line in lines:
        kept = tuple((name, line.grouping[name]) for name in dimensions if name in line.grouping)
        groups.setdefault((line.metric, kept, line.late_from), []).append(line)
    items = [
        Item(
            item_key(metric, kept, late_from),
            tuple(sorted(line.id for line in members)),
            metric,
            kept,
            late_from,
            sum(line.amount for line in members),
            sum((line.quantity for line in members), Decimal(0)),
        )
        for (metric, kept, late_from), members in groups.items()
    ]
    return tuple(sorted(items, key=_order))


def _fits(items: Sequence[Item], cap: int, max_amount: int) -> bool:
    return len(items) <= cap and all(abs(item.amount) <= max_amount for item in items)


def roll_up(
    lines: Sequence[RolledLine],
    levels: Sequence[tuple[str, ...]] = (),
    *,
    cap: int = MAX_INVOICE_ITEMS,
    max_amount: int = MAX_STRIPE_AMOUNT,
) -> Rollup:
    """The finest level at which ``lines`` fit on one invoice (see the module's rules)."""
    detail = _detail(lines)
    if _fits(detail, cap, max_amount):
        return Rollup(DETAIL, detail)
    if len(detail) <= cap:
        # Every line fits in count, one is over Stripe's largest amount: a coarser level only
        # adds to it. Detail, and the plan says which line (core.sync_plan).
        return Rollup(DETAIL, detail)
    last: tuple[Item, ...] = ()
    for dimensions in levels_with_last(levels):
        last = _grouped(lines, dimensions)
        if _fits(last, cap, max_amount):
            return Rollup(level_name(dimensions), last)
    too_large = [item for item in last if abs(item.amount) > max_amount]
    if too_large:
        raise RollupError(
            f"the {too_large[0].metric} item amounts to {too_large[0].amount:,} minor units; "
            f"Stripe takes at most {max_amount:,} on one item: add a finer roll-up level "
            "to the catalog's [invoice] rollup"
        )
    raise RollupError(
        f"{len(last)} items even with one per metric (and late period); a Stripe invoice holds "
        f"at most {cap}"
    )
