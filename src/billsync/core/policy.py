"""Sync policies: when an account's changed lines are pushed to Stripe.

- ``interval``: every N seconds, only what changed (the default, 15 minutes);
- ``threshold``: as soon as the amount Stripe is behind reaches a threshold (minor units);
- ``on_demand``: only when someone asks (the billing page, the portal, support);
- ``cycle_end``: nothing before the period closes — the original proposal of pushing the
  compiled invoice once at the end of the cycle.

Whatever the policy, an on-demand request is always honoured, and period close always syncs.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

# An account's own sync policy: an interval no longer than a period, a threshold no larger
# than any invoice billsync can make (and both within what date arithmetic can hold).
MAX_INTERVAL_SECONDS = 31 * 86400
MAX_THRESHOLD = 10**12


class Policy(enum.StrEnum):
    INTERVAL = "interval"
    THRESHOLD = "threshold"
    ON_DEMAND = "on_demand"
    CYCLE_END = "cycle_end"


class PolicyError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class SyncPolicy:
    policy: Policy = Policy.INTERVAL
    interval: timedelta = timedelta(minutes=15)
    threshold: int = 10_000  # minor units behind before a threshold sync

    def merged(self, overrides: Mapping[str, Any] | None) -> SyncPolicy:
        """This policy with an account's overrides (``{"policy": ..., "interval_seconds": ...,
        "threshold": ...}``) applied."""
        if not overrides:
            return self
        unknown = set(overrides) - {"policy", "interval_seconds", "threshold"}
        if unknown:
            raise PolicyError(f"unknown sync policy field(s) {sorted(unknown)}")
        try:
            policy = Policy(overrides.get("policy", self.policy))
        except ValueError:
            raise PolicyError(
                f"policy must be one of {', '.join(p.value for p in Policy)}"
            ) from None
        interval = overrides.get("interval_seconds")
        threshold = overrides.get("threshold", self.threshold)
        if interval is not None and (not isinstance(interval, int) or interval < 1):
            raise PolicyError("interval_seconds must be a positive integer")
        if interval is not None and interval > MAX_INTERVAL_SECONDS:
            raise PolicyError(
                f"interval_seconds is at most {MAX_INTERVAL_SECONDS:,} (31 days: a period's length)"
            )
        if not isinstance(threshold, int) or threshold < 1:
            raise PolicyError("threshold must be a positive integer (minor units)")
        if threshold > MAX_THRESHOLD:
            raise PolicyError(f"threshold is at most {MAX_THRESHOLD:,} minor units")
        return SyncPolicy(
            policy,
            self.interval if interval is None else timedelta(seconds=interval),
            threshold,
        )


@dataclass(frozen=True, slots=True)
class AccountSyncView:
    """What the scheduler knows of an account with changes not yet in Stripe."""

    last_synced_at: datetime | None
    unsynced_amount: int


def window_start(now: datetime, interval: timedelta) -> datetime:
    """The start of the fixed sync window containing ``now`` (windows are aligned on the Unix
    epoch, so every process agrees where they begin)."""
    seconds = int(interval.total_seconds())
    epoch = int(now.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, tz=now.tzinfo)


def due(policy: SyncPolicy, view: AccountSyncView, now: datetime) -> bool:
    """Whether the policy wants the account's changes pushed now: at most once per interval
    window for ``interval``. On-demand requests and period close are not policy questions."""
    if policy.policy is Policy.INTERVAL:
        if view.last_synced_at is None:
            return True
        return view.last_synced_at < window_start(now, policy.interval)
    if policy.policy is Policy.THRESHOLD:
        return view.unsynced_amount >= policy.threshold
    return False


RETRY_FIRST = timedelta(seconds=5)
RETRY_MOST = timedelta(minutes=15)


def retry_delay(failures: int) -> timedelta:
    """How long an account waits after its ``failures``-th failed sync in a row before a
    background or closing sync tries it again: 5 s, doubling, at most 15 minutes. A person's
    on-demand sync does not wait."""
    if failures <= 0:
        return timedelta(0)
    delay: timedelta = RETRY_FIRST * 2 ** min(failures - 1, 20)
    return min(RETRY_MOST, delay)
