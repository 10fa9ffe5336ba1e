"""Stripe's rate limit as one shared budget, and how billsync behaves when Stripe pushes back.

Stripe counts requests per account, not per worker (reference/stripe-facts.md, "Rate limits").
If every worker kept its own limiter, N workers would send N times the allowed rate and turn a
busy cycle close into a 429 storm. So every thread of the process draws from one
:class:`RateBudget`, and the budget decides who goes next: a person waiting on a page beats a
cycle close, which beats the background threshold and interval syncs (:class:`Lane`).

When Stripe still says no, :func:`backoff_delay` spreads the retries out (full jitter, so
workers that failed together do not retry together), :meth:`RateBudget.penalize` makes the whole
process hold off, and a :class:`CircuitBreaker` stops spending the budget on a Stripe that is
down, letting one probe at a time find out when it is back.

Everything here takes its clock (and the budget its sleep) as arguments: time is injected, so
tests drive it with a fake clock and assert exact behaviour without sleeping.
"""

from __future__ import annotations

import enum
import itertools
import math
import random
import threading
import time
from collections.abc import Callable
from typing import Literal, TypedDict

__all__ = [
    "BreakerSnapshot",
    "BudgetSnapshot",
    "CircuitBreaker",
    "Lane",
    "RateBudget",
    "backoff_delay",
]


class Lane(enum.IntEnum):
    """Why a Stripe call is being made; a lower value is served first."""

    ON_DEMAND = 0
    """A person is waiting (console button, API request)."""
    CLOSING = 1
    """A billing cycle is closing: invoices must be finalized on time."""
    THRESHOLD = 2
    """An account crossed a usage threshold."""
    INTERVAL = 3
    """The periodic background sync: it can always wait."""


class BudgetSnapshot(TypedDict):
    rate: float
    burst: float
    tokens: float
    next_token_in: float
    penalized_for: float
    penalties: int
    granted: dict[str, int]
    waited: dict[str, int]
    timed_out: dict[str, int]
    waiting: dict[str, int]


def _per_lane() -> dict[Lane, int]:
    return dict.fromkeys(Lane, 0)


class RateBudget:
    """A token bucket shared by every thread of the process, with priority lanes.

    Guarantee: over any interval of length ``w`` the budget grants at most
    ``burst + rate * w`` tokens. ``burst`` defaults to 1 (evenly spaced calls): Stripe counts
    per second, and a full bucket of ``b`` followed by a second of refill lets ``b + rate``
    calls land in one second. To stay under a limit ``L`` per second, keep ``rate + burst <= L``.

    While threads wait, a token always goes to the waiter of the most urgent lane, first come
    first served within a lane; a non-blocking :meth:`try_acquire` never overtakes a waiter of
    its own or a more urgent lane. That rule lives in the queue, not in who wakes up first, so
    it holds however the waiting threads are scheduled.

    The bookkeeping is GCRA ("virtual scheduling"): instead of a token count refilled on every
    call, the budget keeps ``_full_at``, the moment the bucket would be full again. A token is
    available once ``now >= _full_at - (burst - 1) / rate``; each grant pushes ``_full_at``
    one interval (``1 / rate``) later. One comparison with the clock and no refill step means
    a fake clock gets exact answers: a token appears at exactly :meth:`next_token_in`.

    Waiting: with the default ``sleep`` (:func:`time.sleep`) threads wait on a
    :class:`threading.Condition` with a computed timeout, so a more urgent arrival or a freed
    token wakes them at once. With an injected ``sleep`` (a fake clock's) a waiter releases the
    lock and calls ``sleep(seconds)`` for the time it needs, never longer than until the next
    token, so the fake clock decides when it wakes.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number of calls per second, not {rate!r}")
        capacity = 1.0 if burst is None else float(burst)
        if not (capacity >= 1 and math.isfinite(capacity)):
            raise ValueError(f"burst must be at least 1 (one whole call), not {burst!r}")
        self._rate = float(rate)
        self._burst = capacity
        self._interval = 1.0 / self._rate
        # How far ahead of "now" _full_at may run while a token is still left.
        self._tolerance = (capacity - 1.0) * self._interval
        self._clock = clock
        self._sleep = sleep
        self._wait_on_condition = sleep is time.sleep
        self._cond = threading.Condition()
        start = clock()
        self._full_at = start  # starts full: the first `burst` calls go at once
        self._penalized_until = start
        self._penalties = 0
        self._queue: list[tuple[int, int]] = []  # (lane, arrival): min() is the next owner
        self._arrivals = itertools.count()
        self._granted = _per_lane()
        self._waited = _per_lane()
        self._timed_out = _per_lane()

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def burst(self) -> float:
        return self._burst

    def try_acquire(self, lane: Lane) -> bool:
        """Take a token if one is free now and no waiter of this or a more urgent lane is owed
        it. Never waits: for schedulers that would rather do something else meanwhile."""
        with self._cond:
            return self._try_grant(lane, self._clock())

    def next_token_in(self) -> float:
        """Seconds until the bucket next holds a token (0.0 if it holds one now), penalty
        included. Whether that token is yours depends on who is waiting."""
        with self._cond:
            return self._until_token(self._clock())

    def acquire(self, lane: Lane, *, timeout: float | None = None) -> bool:
        """Take one token, waiting for it if needed; False if ``timeout`` seconds pass first
        (``None`` waits for as long as it takes, ``0`` only takes a token that is free now)."""
        with self._cond:
            now = self._clock()
            if self._try_grant(lane, now):
                return True
            if timeout is not None and timeout <= 0:
                self._timed_out[lane] += 1
                return False
            deadline = math.inf if timeout is None else now + timeout
            ticket = (int(lane), next(self._arrivals))
            self._queue.append(ticket)
            self._waited[lane] += 1
            try:
                while True:
                    now = self._clock()
                    first = min(self._queue) == ticket
                    if first and self._until_token(now) == 0.0:
                        self._grant(lane, now)
                        return True
                    if now >= deadline:
                        self._timed_out[lane] += 1
                        return False
                    self._wait(now, deadline)
            finally:
                self._queue.remove(ticket)
                # Whoever is first now must look again: it may be owed a token already.
                self._cond.notify_all()

    def penalize(self, seconds: float) -> None:
        """Hand out no token for ``seconds``: Stripe answered 429, every worker backs off.

        The bucket also restarts empty: the 429 proves our idea of what is left was wrong
        (another process or key shares the account), so after the penalty calls resume at
        ``rate``, not with a full burst into a limiter that has just refused us. A penalty
        never shortens one already running.
        """
        if not seconds >= 0:
            raise ValueError(f"a penalty is a non-negative number of seconds, not {seconds!r}")
        with self._cond:
            until = self._clock() + seconds
            self._penalized_until = max(self._penalized_until, until)
            self._full_at = max(self._full_at, until + self._tolerance)
            self._penalties += 1
            # Waiters that saw a token must see it is gone (and fake-clock waiters re-plan).
            self._cond.notify_all()

    def snapshot(self) -> BudgetSnapshot:
        """Counters for dashboards and logs: tokens granted, waits and timeouts per lane."""
        with self._cond:
            now = self._clock()
            spare = self._burst - max(0.0, self._full_at - now) * self._rate
            waiting = dict.fromkeys((lane.name for lane in Lane), 0)
            for lane_value, _arrival in self._queue:
                waiting[Lane(lane_value).name] += 1
            return BudgetSnapshot(
                rate=self._rate,
                burst=self._burst,
                tokens=max(0.0, spare),
                next_token_in=self._until_token(now),
                penalized_for=max(0.0, self._penalized_until - now),
                penalties=self._penalties,
                granted={lane.name: count for lane, count in self._granted.items()},
                waited={lane.name: count for lane, count in self._waited.items()},
                timed_out={lane.name: count for lane, count in self._timed_out.items()},
                waiting=waiting,
            )

    # All of the below run with self._cond held.

    def _until_token(self, now: float) -> float:
        # The one expression that decides availability: "available" is exactly "0.0 here",
        # so waiting the returned time and looking again always agrees with itself.
        return max(0.0, self._full_at - self._tolerance - now)

    def _try_grant(self, lane: Lane, now: float) -> bool:
        if self._until_token(now) > 0.0:
            return False
        if any(waiting_lane <= lane for waiting_lane, _arrival in self._queue):
            return False
        self._grant(lane, now)
        return True

    def _grant(self, lane: Lane, now: float) -> None:
        self._full_at = max(self._full_at, now) + self._interval
        self._granted[lane] += 1
        # Waiters that were told "a token is there, but not yours" must re-plan.
        self._cond.notify_all()

    def _wait(self, now: float, deadline: float) -> None:
        until_token = self._until_token(now)
        if until_token == 0.0:
            # A token is free but a more urgent or earlier waiter is owed it. That waiter is
            # awake (no waiter sleeps past the next token) and notifies once it has taken it.
            if self._wait_on_condition and deadline < math.inf:
                self._cond.wait(deadline - now)
            else:
                self._cond.wait()
            return
        # Never past the next token: whoever is first by then must be awake to take it.
        delay = min(until_token, deadline - now)
        if self._wait_on_condition:
            self._cond.wait(delay)
            return
        self._cond.release()
        try:
            self._sleep(delay)
        finally:
            self._cond.acquire()


def backoff_delay(
    attempt: int,
    *,
    base: float = 0.5,
    cap: float = 30.0,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry).

    "Full jitter": uniform over ``[0, min(cap, base * 2 ** (attempt - 1))]``. Workers that
    failed at the same moment then retry at different moments instead of in lockstep, which
    is what turns one 429 into a storm. Pass ``rng`` for repeatable delays in tests.
    """
    if attempt < 1:
        raise ValueError(f"attempts are counted from 1, not {attempt!r}")
    if not (base >= 0 and cap >= 0):
        raise ValueError("base and cap are non-negative numbers of seconds")
    try:
        ceiling = min(cap, math.ldexp(base, attempt - 1))
    except OverflowError:  # 2 ** (attempt - 1) is beyond any float: the cap wins anyway
        ceiling = cap
    uniform = rng.uniform if rng is not None else random.uniform
    # uniform(a, b) may round up to just past b; the bound is part of the contract.
    return min(ceiling, max(0.0, uniform(0.0, ceiling)))


BreakerState = Literal["closed", "open", "half_open"]


class BreakerSnapshot(TypedDict):
    state: BreakerState
    consecutive_failures: int
    cooldown: float
    retry_in: float
    probe_in_flight: bool
    times_opened: int


class EndpointPacer:
    """Stripe's per-endpoint limit in one process: every endpoint gets its own ``rate`` calls/s
    (``rates`` overrides some), one after the other at even spacing — the first call of an
    idle endpoint goes at once, the next one ``1/rate`` s later. A caller reserves its slot and
    sleeps until it; the global budget (and its lanes) is asked after that, so a call waiting
    on a busy endpoint holds no share of the global rate meanwhile."""

    def __init__(
        self,
        rate: float = 25.0,
        rates: dict[str, float] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"an endpoint rate is a positive number of calls/s, not {rate!r}")
        for endpoint, value in (rates or {}).items():
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{endpoint}: a rate is a positive number of calls/s")
        self.rate = float(rate)
        self.rates = {endpoint: float(value) for endpoint, value in (rates or {}).items()}
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}

    def rate_of(self, endpoint: str) -> float:
        return self.rates.get(endpoint, self.rate)

    def reserve(self, endpoint: str) -> float:
        """Take the endpoint's next slot; returns how long to wait for it (0: now)."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._next.get(endpoint, now))
            self._next[endpoint] = slot + 1.0 / self.rate_of(endpoint)
            return slot - now

    def acquire(self, endpoint: str) -> None:
        wait = self.reserve(endpoint)
        if wait > 0:
            self._sleep(wait)


class CircuitBreaker:
    """Stops calling Stripe while it is failing, and finds out with one probe when it is back.

    ``closed``: calls go through; ``failure_threshold`` consecutive failures open it.
    ``open``: calls are refused, so a Stripe outage does not eat the rate budget or pile up
    timeouts. After ``cooldown`` seconds it is ``half_open``: exactly one probe call is let
    through at a time. A successful probe closes it (and resets the cooldown); a failed one
    opens it again with the cooldown doubled, up to ``max_cooldown``, so a long outage is
    probed less and less often.

    Every ``allow()`` that returns True must be answered with :meth:`record_success` or
    :meth:`record_failure` (use ``try``/``finally``): while a probe is unanswered no other call
    goes through. Results that arrive while the breaker is open (calls let through before it
    opened) change nothing: the cooldown already decides.
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        cooldown: float = 5.0,
        max_cooldown: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if not (cooldown > 0 and max_cooldown >= cooldown):
            raise ValueError("need 0 < cooldown <= max_cooldown")
        self._threshold = failure_threshold
        self._base_cooldown = float(cooldown)
        self._max_cooldown = float(max_cooldown)
        self._clock = clock
        self._lock = threading.Lock()
        self._open = False  # half_open is "open and the cooldown has passed"
        self._opened_at = 0.0
        self._cooldown = self._base_cooldown
        self._failures = 0
        self._probe_in_flight = False
        self._times_opened = 0

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state(self._clock())

    def allow(self) -> bool:
        """May a call go to Stripe now? In ``half_open`` only the first asker gets a yes."""
        with self._lock:
            state = self._state(self._clock())
            if state == "closed":
                return True
            if state == "open" or self._probe_in_flight:
                return False
            self._probe_in_flight = True
            return True

    def record_success(self) -> None:
        with self._lock:
            if self._state(self._clock()) == "open":
                return
            self._open = False
            self._failures = 0
            self._cooldown = self._base_cooldown
            self._probe_in_flight = False

    def abandon(self) -> None:
        """A call let through never reached Stripe (its lease was lost, the database failed,
        the budget's wait was interrupted): if it was the probe, the next asker probes instead.
        Neither a success nor a failure."""
        with self._lock:
            self._probe_in_flight = False

    def record_failure(self) -> None:
        with self._lock:
            now = self._clock()
            state = self._state(now)
            if state == "closed":
                self._failures += 1
                if self._failures >= self._threshold:
                    self._trip(now)
            elif state == "half_open" and self._probe_in_flight:
                self._cooldown = min(self._max_cooldown, self._cooldown * 2)
                self._trip(now)

    def retry_in(self) -> float:
        """Seconds until ``allow()`` may say yes: 0 when closed or a probe may go; while open,
        the rest of the cooldown; while a probe is out, the current cooldown (a polling hint:
        the probe's answer decides)."""
        with self._lock:
            now = self._clock()
            return self._retry_in(now, self._state(now))

    def snapshot(self) -> BreakerSnapshot:
        with self._lock:
            now = self._clock()
            state = self._state(now)
            return BreakerSnapshot(
                state=state,
                consecutive_failures=self._failures,
                cooldown=self._cooldown,
                retry_in=self._retry_in(now, state),
                probe_in_flight=self._probe_in_flight,
                times_opened=self._times_opened,
            )

    def _state(self, now: float) -> BreakerState:
        if not self._open:
            return "closed"
        return "open" if now < self._opened_at + self._cooldown else "half_open"

    def _retry_in(self, now: float, state: BreakerState) -> float:
        if state == "open":
            return self._opened_at + self._cooldown - now
        if state == "half_open" and self._probe_in_flight:
            return self._cooldown
        return 0.0

    def _trip(self, now: float) -> None:
        self._open = True
        self._opened_at = now
        self._failures = 0
        self._probe_in_flight = False
        self._times_opened += 1
