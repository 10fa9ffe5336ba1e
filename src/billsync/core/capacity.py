"""What the Stripe limits allow at a given number of active accounts: the physical bounds of
the problem, computed rather than discovered (``billsync capacity``).

In steady state an account with usage costs one ``update_lines`` call per window (only amounts
changed); at month end, closing it costs a final ``update_lines`` and a ``finalize``. Stripe
limits the calls globally and per endpoint (25/s each by default;
https://docs.stripe.com/rate-limits), so:

- the achievable interval is the longest of the configured one, N ÷ the ``update_lines`` rate
  and N ÷ the global rate;
- closing N accounts takes at least the longest of N ÷ the ``update_lines`` rate,
  N ÷ the ``finalize`` rate and 2N ÷ the global rate;
- meeting the configured interval needs N ÷ interval calls/s on ``update_lines`` and globally.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

UPDATE_LINES = "POST /v1/invoices/{id}/update_lines"
FINALIZE = "POST /v1/invoices/{id}/finalize"


@dataclass(frozen=True, slots=True)
class Capacity:
    accounts: int
    interval_seconds: float  # configured
    achievable_interval_seconds: float
    interval_bound_by: str  # "the policy", "the global rate", or an endpoint
    close_seconds: float  # lower bound for closing every account at month end
    close_bound_by: str
    needed_update_lines_rate: float  # calls/s to meet the configured interval
    needed_global_rate: float
    global_rate: float
    update_lines_rate: float
    finalize_rate: float

    @property
    def meets_interval(self) -> bool:
        return self.achievable_interval_seconds <= self.interval_seconds


def capacity(
    accounts: int,
    interval_seconds: float,
    global_rate: float,
    endpoint_rate: Callable[[str], float],
) -> Capacity:
    if accounts < 0 or interval_seconds <= 0 or global_rate <= 0:
        raise ValueError("accounts ≥ 0, and a positive interval and rate")
    update, finalize = endpoint_rate(UPDATE_LINES), endpoint_rate(FINALIZE)
    interval_bounds = {
        "the policy": interval_seconds,
        UPDATE_LINES: accounts / update,
        "the global rate": accounts / global_rate,
    }
    close_bounds = {
        UPDATE_LINES: accounts / update,
        FINALIZE: accounts / finalize,
        "the global rate": 2 * accounts / global_rate,
    }
    interval_by = max(interval_bounds, key=lambda name: interval_bounds[name])
    close_by = max(close_bounds, key=lambda name: close_bounds[name])
    return Capacity(
        accounts=accounts,
        interval_seconds=interval_seconds,
        achievable_interval_seconds=interval_bounds[interval_by],
        interval_bound_by=interval_by,
        close_seconds=close_bounds[close_by],
        close_bound_by=close_by,
        needed_update_lines_rate=accounts / interval_seconds,
        needed_global_rate=accounts / interval_seconds,
        global_rate=global_rate,
        update_lines_rate=update,
        finalize_rate=finalize,
    )
