"""Spend alerts and budgets: thresholds on what an account (or one grouping value of it)
spends in a period, each crossing sent once to the platform as a signed webhook.

An alert is one of (``POST /v1/accounts/{id}/alerts``):

- ``amount``: a threshold for the period ("100.00");
- ``percent_of_commitment``: a percentage of the period's minimum commitment (no threshold
  in a period without one);
- ``budget`` with ``percents``: a budget and the percentages of it to be told at (50, 80, 100).

With ``grouping`` (``{"app": "web"}``) it watches only the usage lines carrying those
dimension values — a budget per app, per region. *Spent* is the sum of the period's usage
lines (own and late usage, after negotiated rates; not support's credits and charges, nor the
commitment top-up or prepaid credit). A threshold is crossed when spent reaches it; each
(alert, threshold, period) is recorded and sent once, whatever happens after (a correction
that brings the spend back down does not un-send it).

The webhook (``BILLSYNC_PLATFORM_WEBHOOK_URL``) is signed the way Stripe signs its own:
``Billsync-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>" with
BILLSYNC_PLATFORM_WEBHOOK_SECRET>``; a delivery that fails is retried with exponential back-off.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from billsync.core.display import format_money

SIGNATURE_HEADER = "Billsync-Signature"
EVENT_TYPE = "billing.alert.crossed"
FIRST_RETRY = timedelta(seconds=30)
LONGEST_RETRY = timedelta(hours=6)
MAX_ATTEMPTS = 12  # about a day and a half of retries, then given up (listed as failed)


@dataclass(frozen=True, slots=True)
class Alert:
    id: int
    account_id: str
    name: str | None
    amount: int | None = None
    percent_of_commitment: int | None = None
    budget: int | None = None
    percents: tuple[int, ...] = ()
    grouping: Mapping[str, str] = field(default_factory=dict)

    def thresholds(self, commitment: int | None) -> list[tuple[str, int]]:
        """(label, minor units) of each threshold in a period with this minimum commitment."""
        if self.amount is not None:
            return [("amount", self.amount)]
        if self.percent_of_commitment is not None:
            if not commitment:
                return []
            return [
                (
                    f"{self.percent_of_commitment}% of commitment",
                    _percent(commitment, self.percent_of_commitment),
                )
            ]
        assert self.budget is not None
        return [(f"{p}% of budget", _percent(self.budget, p)) for p in sorted(self.percents)]

    def describe(self, currency: str) -> str:
        """How the customer's page and the console name it: "$100.00 spent", "80% of the
        commitment", "budget $500.00 at 50%, 80%, 100% (app web)"."""
        if self.amount is not None:
            text = f"{format_money(self.amount, currency)} spent"
        elif self.percent_of_commitment is not None:
            text = f"{self.percent_of_commitment}% of the commitment"
        else:
            assert self.budget is not None
            shares = ", ".join(f"{p}%" for p in sorted(self.percents))
            text = f"budget {format_money(self.budget, currency)} at {shares}"
        if self.grouping:
            text += " (" + ", ".join(f"{k} {v}" for k, v in sorted(self.grouping.items())) + ")"
        return f"{self.name}: {text}" if self.name else text

    def spent(self, usage: Sequence[tuple[Mapping[str, str], int]]) -> int:
        """What the usage lines it watches ((grouping, amount) each) add up to."""
        return sum(amount for grouping, amount in usage if self.watches(grouping))

    def watches(self, grouping: Mapping[str, str]) -> bool:
        """Whether a line of this grouping counts towards the alert."""
        return all(grouping.get(name) == value for name, value in self.grouping.items())


def _percent(amount: int, percent: int) -> int:
    """``percent`` % of ``amount``, in minor units, rounded half up (once)."""
    exact = Decimal(amount) * Decimal(percent) / Decimal(100)
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def crossed(alert: Alert, spent: int, commitment: int | None) -> list[tuple[str, int]]:
    """The thresholds ``spent`` has reached."""
    return [(label, t) for label, t in alert.thresholds(commitment) if t > 0 and spent >= t]


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Billsync-Signature`` header of a webhook body sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(secret: str, header: str, body: bytes, now: int, tolerance: int = 300) -> bool:
    """What the platform does with a webhook: the signature matches and is recent."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    return hmac.compare_digest(
        sign(secret, timestamp, body), f"t={timestamp},v1={parts.get('v1', '')}"
    )


def next_attempt(attempts: int, now: datetime) -> datetime:
    """When a delivery that failed ``attempts`` times is tried again (30 s, doubling, ≤ 6 h)."""
    wait: timedelta = min(FIRST_RETRY * 2 ** max(0, attempts - 1), LONGEST_RETRY)
    return now + wait
