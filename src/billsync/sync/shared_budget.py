"""One Stripe rate budget for every process: the local budget's GCRA, kept in the database.

Stripe limits requests per account, whatever number of workers send them
(reference/stripe-facts.md, "Rate limits"). Each process keeps its own
:class:`~billsync.sync.budget.RateBudget` (it orders the process's threads by lane), and before
a call also reserves a slot in the shared row: one ``UPDATE … RETURNING`` pushes the row's
``full_at`` one interval later and tells the caller when its slot starts. Over any window of
``w`` seconds all processes together get at most ``burst + rate * w`` slots, exactly the local
guarantee. A 429 pushes the row's clock for everyone.

Lanes across processes: a reservation is first come, first served, so a background lane only
reserves a slot that starts within a short horizon (:data:`HORIZON`); while the reservations
run further ahead it waits and asks again. The queue of reservations never grows long behind
background work, and a person waiting is at most that horizon away from a slot.

A sleeper that wakes late still calls, up to :data:`LATE_TOLERANCE` (a quarter second) after
its slot; later than that (a pause), it reserves again. Lateness only shifts calls later, so a
one-second window sees at most ``burst + rate × 1.25`` calls — 100 for the live default of
80/s, Stripe's limit. Stricter used to be worse: a thread in a busy process (ingest parsing
JSON holds the GIL) wakes 15–50 ms late as a rule, so refusing every late slot wasted nearly
all of them — 1.6 calls/s of 80 with 16 threads beside two busy ones — and a month end crawled.
For an endpoint paced at exactly Stripe's limit, a burst of lateness that ends abruptly can
still put a call or two too many in a second: Stripe answers 429, the guard backs everyone
off, and the call is retried under its idempotency key.

On PostgreSQL the time is the database server's, so hosts' clock skew does not matter.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from billsync.db.database import Database
from billsync.repositories import budget as repository
from billsync.sync.budget import EndpointPacer, Lane

HORIZON: dict[Lane, float] = {
    Lane.ON_DEMAND: 2.0,
    Lane.CLOSING: 1.0,
    Lane.THRESHOLD: 0.5,
    Lane.INTERVAL: 0.5,
}
"""How far ahead of now a lane may reserve a slot, seconds."""

LATE_TOLERANCE = 0.25
"""A sleeper this late (seconds) or less still calls; later, it reserves again."""


class SharedBudget:
    """Calls/s for all processes sharing ``database``; ``rate`` and ``burst`` as in
    :class:`~billsync.sync.budget.RateBudget` (every process must be configured alike).

    ``clock`` gives Unix seconds; leave it None on PostgreSQL to use the server's clock (on
    SQLite the host's ``time.time`` is used). ``sleep`` is injectable for tests."""

    def __init__(
        self,
        database: Database,
        rate: float,
        *,
        burst: float = 1.0,
        name: str = "stripe",
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number of calls per second, not {rate!r}")
        if not (burst >= 1 and math.isfinite(burst)):
            raise ValueError(f"burst must be at least 1 (one whole call), not {burst!r}")
        self.database = database
        self.name = name
        self.rate = float(rate)
        self.interval = 1.0 / self.rate
        self.tolerance = (float(burst) - 1.0) * self.interval
        if clock is None and database.is_sqlite:
            clock = time.time
        self._clock = clock
        self._sleep = sleep
        # How late a sleeper woke: on the monotonic clock, or on an injected test clock.
        injected = clock is not None and clock is not time.time
        self._monotonic = monotonic or (clock if injected and clock else time.monotonic)
        self._lock = threading.Lock()
        self._ready = False
        self.reserved = 0
        self.deferred = 0
        self.late = 0

    def _now(self) -> float | None:
        return None if self._clock is None else self._clock()

    def _ensure(self) -> None:
        if self._ready:
            return
        with self.database.transaction() as connection:
            repository.ensure(connection, self.name)
        self._ready = True

    def acquire(self, lane: Lane) -> None:
        """Wait until this process may make one call on ``lane``."""
        self._ensure()
        horizon = HORIZON[lane]
        while True:
            asked = self._monotonic()
            with self.database.transaction() as connection:
                reserved, wait = repository.reserve(
                    connection,
                    self.name,
                    interval=self.interval,
                    tolerance=self.tolerance,
                    horizon=horizon,
                    now=self._now(),
                )
            with self._lock:
                if reserved:
                    self.reserved += 1
                else:
                    self.deferred += 1
            if not reserved:
                # Not within the horizon yet: ask again once it would be (never busy-loop).
                self._sleep(max(wait, self.interval))
                continue
            if wait > 0:
                self._sleep(wait)
            # Late is measured from before the reservation (its round trip counts against us).
            if self._monotonic() - (asked + wait) <= LATE_TOLERANCE:
                return
            with self._lock:
                self.late += 1  # woke too late: the slot is gone unused, take another

    def penalize(self, seconds: float) -> None:
        """Stripe answered 429: no process gets a slot for ``seconds``."""
        if not seconds >= 0:
            raise ValueError(f"a penalty is a non-negative number of seconds, not {seconds!r}")
        self._ensure()
        with self.database.transaction() as connection:
            repository.penalize(connection, self.name, seconds, self.tolerance, self._now())

    def snapshot(self) -> dict[str, float]:
        self._ensure()
        with self.database.read() as connection:
            found = repository.state(connection, self.name, self._now())
        with self._lock:
            found.update(
                reserved_here=float(self.reserved),
                deferred_here=float(self.deferred),
                late_here=float(self.late),
            )
        found["rate"] = self.rate
        return found


class SharedEndpoints:
    """Stripe's per-endpoint limits shared by every process: one ``SharedBudget`` row per
    endpoint (named ``stripe <endpoint>``), made the first time a call goes to it, at the
    rate the pacer gives that endpoint. Called with an endpoint, returns its budget."""

    def __init__(self, database: Database, rates: EndpointPacer) -> None:
        self.database = database
        self.rates = rates
        self._budgets: dict[str, SharedBudget] = {}
        self._lock = threading.Lock()

    def __call__(self, endpoint: str) -> SharedBudget:
        with self._lock:
            budget = self._budgets.get(endpoint)
            if budget is None:
                budget = SharedBudget(
                    self.database, self.rates.rate_of(endpoint), name=f"stripe {endpoint}"
                )
                self._budgets[endpoint] = budget
            return budget

    def late(self) -> int:
        """Slots given up by late sleepers, over every endpoint's budget."""
        with self._lock:
            budgets = list(self._budgets.values())
        return sum(budget.late for budget in budgets)
