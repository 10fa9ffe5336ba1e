"""Minimum commitments: an account commits to spend at least an amount per period.

Set through ``PATCH /v1/accounts/{id}`` (``"minimum_amount": "500.00"``, in the account's
currency; null removes it) from one of the account's period starts on (``minimum_amount_from``,
default the current period's). When a period stops taking usage (it enters review: its usage is
final, later usage is late usage of the next period), billsync adds one line to it, key
``commitment``:

    top-up = max(0, minimum − used)

where *used* is the sum of the period's usage lines — its own usage and late usage it carries,
after negotiated rates; not support's credits and charges, which stay what they were given
as. No line when nothing is missing. The customer's page shows "committed / used so far" from
the period's first day, and ``billsync verify`` checks the line against this rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

COMMITMENT_KEY = "commitment"


@dataclass(frozen=True, slots=True)
class Commitment:
    """The account's minimum per period from ``effective_from`` on (None: no minimum)."""

    effective_from: date
    amount: int | None  # minor units
    set_at: datetime | None = None
    set_by: str | None = None


def commitment_on(commitments: Sequence[Commitment], period_start: date) -> int | None:
    """The minimum, in minor units, of a period starting on this day (by ascending date)."""
    found = None
    for commitment in commitments:
        if commitment.effective_from > period_start:
            break
        found = commitment.amount
    return found


def top_up(minimum: int, used: int) -> int:
    """What the commitment line adds to a period that used ``used`` against ``minimum``."""
    return max(0, minimum - used)


def commitments_document(commitments: Sequence[Commitment]) -> list[dict[str, Any]] | None:
    if not commitments:
        return None
    return [
        {
            "effective_from": c.effective_from.isoformat(),
            "amount": c.amount,
            "set_at": None if c.set_at is None else c.set_at.isoformat(),
            "set_by": c.set_by,
        }
        for c in commitments
    ]


def commitments_of(document: Any) -> tuple[Commitment, ...]:
    if not document:
        return ()
    found = [
        Commitment(
            date.fromisoformat(item["effective_from"]),
            None if item["amount"] is None else int(item["amount"]),
            None if item.get("set_at") is None else datetime.fromisoformat(item["set_at"]),
            item.get("set_by"),
        )
        for item in document
    ]
    found.sort(key=lambda c: c.effective_from)
    return tuple(found)
