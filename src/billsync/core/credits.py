"""Prepaid credits: grants an account draws down, oldest expiring first, when a period closes.

A grant (``POST /v1/accounts/{id}/credit-grants``: amount, currency, expiry, reason) is an
amount the account has paid for or been given. When a period's usage becomes final (it enters
review — the moment a minimum commitment is topped up, :mod:`billsync.core.commitment`), the
grants usable for it are drawn down, as one credit line ``credits`` on the period's invoice:

    drawn = min(Σ remaining of the usable grants, the period's total)

where the total is every other line of the period (usage, late usage, the commitment top-up,
support's credits and charges), never below zero: an invoice is never negative. A grant is
usable for a period that begins before the grant expires (and it may have been granted during
that period); the drawn amount is taken from the grant that expires first, then the next (the
older grant first on a tie). What is left of a grant past its expiry is void, audited once as
``credit_grant.expired``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

CREDITS_KEY = "credits"


@dataclass(frozen=True, slots=True)
class Grant:
    id: int
    amount: int  # minor units, as granted
    remaining: int
    expires_at: datetime
    created_at: datetime

    def usable_for(self, period_start_at: datetime) -> bool:
        """Whether the grant may pay for the period starting then."""
        return self.remaining > 0 and period_start_at < self.expires_at


def draw_down(
    grants: Sequence[Grant], period_start_at: datetime, total: int
) -> list[tuple[int, int]]:
    """(grant id, amount) taken from each grant to pay at most ``total`` of the period, the
    earliest expiry first (then the oldest grant, then the lowest id)."""
    usable = sorted(
        (g for g in grants if g.usable_for(period_start_at)),
        key=lambda g: (g.expires_at, g.created_at, g.id),
    )
    left = max(0, total)
    taken: list[tuple[int, int]] = []
    for grant in usable:
        if left == 0:
            break
        amount = min(grant.remaining, left)
        taken.append((grant.id, amount))
        left -= amount
    return taken
