"""The shared Stripe rate budget, back-off and circuit breaker, on simulated time.

Two fake clocks, neither of which sleeps for real:

- :class:`AutoTime` for one thread: ``sleep`` simply moves the clock, so a blocking call
  returns at once at exactly the simulated moment it would have.
- :class:`SimTime` for many threads: ``sleep`` parks the thread until the test moves time past
  its wake-up. The test waits (bounded, on a condition) until every thread it started is parked
  or finished, then moves time to the earliest wake-up. The outcome cannot depend on which
  thread the OS happens to run first.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billsync.sync.budget import CircuitBreaker, EndpointPacer, Lane, RateBudget, backoff_delay
from billsync.sync.guard import StripeGuard
from billsync.sync.leases import LeaseLost
from billsync.sync.port import StripeUnavailable
from tests.waiting import wait_until

pytestmark = pytest.mark.unit  # pure: no database, no network, no process

STUCK = 120.0  # real seconds before a simulated scene is declared stuck (a backstop: never
# reached when billsync is right, however loaded the machine)


class AutoTime:
    """Simulated seconds for a single thread: sleeping is moving the clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def budget(self, rate: float, burst: float | None = None) -> RateBudget:
        return RateBudget(rate, burst=burst, clock=self.clock, sleep=self.sleep)


@dataclass
class _Sleeper:
    wake: float
    released: bool = False


@dataclass(frozen=True)
class Outcome:
    name: str
    granted: bool
    at: float


class SimTime:
    """Simulated seconds shared by the threads of one test (see the module docstring)."""

    def __init__(self) -> None:
        self._now = 0.0
        self._cond = threading.Condition()
        self._sleepers: list[_Sleeper] = []
        self._spawned = 0
        self.outcomes: list[Outcome] = []

    def clock(self) -> float:
        with self._cond:
            return self._now

    def sleep(self, seconds: float) -> None:
        with self._cond:
            sleeper = _Sleeper(self._now + seconds)
            if sleeper.wake <= self._now:
                return
            self._sleepers.append(sleeper)
            self._cond.notify_all()
            while not sleeper.released:
                self._cond.wait()

    def budget(self, rate: float, burst: float | None = None) -> RateBudget:
        return RateBudget(rate, burst=burst, clock=self.clock, sleep=self.sleep)

    @property
    def parked(self) -> int:
        with self._cond:
            return len(self._sleepers)

    def spawn(self, name: str, work: Callable[[], bool]) -> None:
        """Run ``work`` in a thread and wait until it is parked or done: arrival order is the
        order of spawn calls."""

        def run() -> None:
            granted = work()
            with self._cond:
                self.outcomes.append(Outcome(name, granted, self._now))
                self._cond.notify_all()

        with self._cond:
            self._spawned += 1
        threading.Thread(target=run, name=name, daemon=True).start()
        self.settle()

    def settle(self) -> None:
        """Wait until every spawned thread is parked in ``sleep`` or finished."""
        with self._cond:
            settled = self._cond.wait_for(
                lambda: len(self._sleepers) + len(self.outcomes) == self._spawned, STUCK
            )
        assert settled, "simulated threads neither parked nor finished"

    def advance(self) -> float:
        """Move time to the earliest wake-up, wake those due, and wait for the dust to settle."""
        self.settle()
        with self._cond:
            assert self._sleepers, "nobody is waiting for time to pass"
            first = min(s.wake for s in self._sleepers)
            # Wake-ups a rounding error apart are one moment: a thread computes "now + (t - now)",
            # which can land an ulp past t.
            self._now = max(s.wake for s in self._sleepers if s.wake <= first + 1e-9)
            for sleeper in [s for s in self._sleepers if s.wake <= self._now]:
                sleeper.released = True
                self._sleepers.remove(sleeper)
            self._cond.notify_all()
            now = self._now
        self.settle()
        return now

    def jump(self, to: float) -> None:
        """Move time without waking anyone, as when the OS runs a sleeper late."""
        with self._cond:
            self._now = to

    def finish(self) -> None:
        """Let time run until every spawned thread is done."""
        for _ in range(10_000):
            self.settle()
            if len(self.outcomes) == self._spawned:
                return
            self.advance()
        raise AssertionError("threads did not finish")


def assert_within_rate(times: Sequence[float], rate: float, burst: float) -> None:
    """No stretch of time [a, b] saw more than ``burst + rate * (b - a)`` grants."""
    ordered = sorted(times)
    for i, start in enumerate(ordered):
        for j in range(i, len(ordered)):
            assert j - i + 1 <= burst + rate * (ordered[j] - start) + 1e-6, (
                f"{j - i + 1} grants in [{start}, {ordered[j]}]"
            )


# ---------------------------------------------------------------- the bucket itself


def test_lanes_order_by_urgency() -> None:
    assert sorted(Lane, reverse=True) == [
        Lane.INTERVAL,
        Lane.THRESHOLD,
        Lane.CLOSING,
        Lane.ON_DEMAND,
    ]
    assert [int(lane) for lane in Lane] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("rate", "burst"), [(0.0, None), (-1.0, None), (float("inf"), None), (5.0, 0.5)]
)
def test_nonsense_configuration_is_refused(rate: float, burst: float | None) -> None:
    with pytest.raises(ValueError, match=r"rate|burst"):
        RateBudget(rate, burst=burst)


def test_a_full_bucket_grants_its_burst_at_once_then_the_rate_paces() -> None:
    sim = AutoTime()
    budget = sim.budget(rate=4.0, burst=3)
    assert [budget.try_acquire(Lane.INTERVAL) for _ in range(4)] == [True, True, True, False]
    assert budget.next_token_in() == 0.25
    sim.now = 0.2499
    assert not budget.try_acquire(Lane.ON_DEMAND)
    sim.now = 0.25
    assert budget.try_acquire(Lane.INTERVAL)
    assert not budget.try_acquire(Lane.INTERVAL)
    # An idle second refills four tokens, but the bucket holds three.
    sim.now = 10.0
    assert budget.snapshot()["tokens"] == 3.0
    assert sum(budget.try_acquire(Lane.THRESHOLD) for _ in range(10)) == 3


def test_the_default_burst_is_one_call() -> None:
    sim = AutoTime()
    budget = sim.budget(rate=10.0)
    assert budget.burst == 1.0
    assert budget.try_acquire(Lane.ON_DEMAND)
    assert not budget.try_acquire(Lane.ON_DEMAND)
    assert budget.next_token_in() == pytest.approx(0.1)


def test_many_simulated_callers_never_beat_the_rate_over_a_minute() -> None:
    sim = AutoTime()
    rng = random.Random(7)
    budget = sim.budget(rate=25.0, burst=5)
    arrivals = sorted(rng.uniform(0.0, 60.0) for _ in range(20_000))
    granted: list[float] = []
    for at in arrivals:
        sim.now = at
        if budget.try_acquire(rng.choice(list(Lane))):
            granted.append(at)
    assert_within_rate(granted[:400], 25.0, 5)  # the pairwise check, on a slice for speed
    per_second = [sum(1 for t in granted if s <= t < s + 1) for s in range(60)]
    assert max(per_second) <= 25 + 5
    # Demand far above the rate: the budget is spent, not wasted.
    assert 25 * 60 - 5 <= len(granted) <= 25 * 60 + 5


@given(
    rate=st.sampled_from([0.5, 3.0, 25.0, 100.0]),
    burst=st.floats(min_value=1.0, max_value=10.0),
    calls=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=0.5), st.sampled_from(list(Lane))),
        max_size=150,
    ),
)
def test_no_schedule_of_calls_beats_the_rate(
    rate: float, burst: float, calls: list[tuple[float, Lane]]
) -> None:
    sim = AutoTime()
    budget = sim.budget(rate, burst)
    granted: list[float] = []
    for gap, lane in calls:
        sim.now += gap
        if budget.try_acquire(lane):
            granted.append(sim.now)
    assert_within_rate(granted, rate, burst)


def test_many_threads_never_beat_the_rate_over_a_simulated_minute() -> None:
    sim = SimTime()
    budget = sim.budget(rate=10.0, burst=3)
    granted: list[float] = []
    lock = threading.Lock()

    def worker(lane: Lane) -> Callable[[], bool]:
        def work() -> bool:
            while True:
                assert budget.acquire(lane)
                at = sim.clock()
                with lock:
                    granted.append(at)
                if at >= 60.0:
                    return True

        return work

    for number in range(6):
        sim.spawn(f"worker-{number}", worker(Lane(number % 4)))
    sim.finish()

    assert_within_rate(granted, 10.0, 3)
    in_minute = [t for t in granted if t < 60.0]
    assert 600 <= len(in_minute) <= 603
    snapshot = budget.snapshot()
    assert sum(snapshot["granted"].values()) == len(granted)
    assert all(count > 0 for count in snapshot["granted"].values())


def test_a_blocking_acquire_returns_exactly_when_the_next_token_appears() -> None:
    sim = AutoTime()
    budget = sim.budget(rate=4.0)
    assert budget.acquire(Lane.INTERVAL)
    assert sim.slept == []
    assert budget.acquire(Lane.INTERVAL)
    assert sim.now == 0.25
    assert budget.acquire(Lane.CLOSING)
    assert sim.now == 0.5
    assert sim.slept == [0.25, 0.25]


# ---------------------------------------------------------------- priority and order


def test_an_on_demand_waiter_is_served_before_an_earlier_interval_waiter() -> None:
    sim = SimTime()
    budget = sim.budget(rate=1.0)
    assert budget.try_acquire(Lane.INTERVAL)
    sim.spawn("interval", lambda: budget.acquire(Lane.INTERVAL))
    sim.spawn("on_demand", lambda: budget.acquire(Lane.ON_DEMAND))
    assert budget.snapshot()["waiting"] == {
        "ON_DEMAND": 1,
        "CLOSING": 0,
        "THRESHOLD": 0,
        "INTERVAL": 1,
    }

    assert sim.advance() == 1.0
    assert sim.outcomes == [Outcome("on_demand", True, 1.0)]
    assert sim.parked == 1

    assert sim.advance() == 2.0
    assert sim.outcomes[1:] == [Outcome("interval", True, 2.0)]


def test_waiters_are_served_most_urgent_lane_first_and_in_arrival_order_within_a_lane() -> None:
    sim = SimTime()
    budget = sim.budget(rate=2.0)
    assert budget.try_acquire(Lane.ON_DEMAND)
    arrivals = [
        ("threshold-1", Lane.THRESHOLD),
        ("interval-1", Lane.INTERVAL),
        ("threshold-2", Lane.THRESHOLD),
        ("closing-1", Lane.CLOSING),
        ("threshold-3", Lane.THRESHOLD),
        ("closing-2", Lane.CLOSING),
    ]
    for name, lane in arrivals:
        sim.spawn(name, partial(budget.acquire, lane))
    sim.finish()
    assert [(o.name, o.at) for o in sim.outcomes] == [
        ("closing-1", 0.5),
        ("closing-2", 1.0),
        ("threshold-1", 1.5),
        ("threshold-2", 2.0),
        ("threshold-3", 2.5),
        ("interval-1", 3.0),
    ]


def test_try_acquire_never_overtakes_a_waiter_of_its_own_or_a_more_urgent_lane() -> None:
    sim = SimTime()
    budget = sim.budget(rate=1.0)
    assert budget.try_acquire(Lane.THRESHOLD)
    sim.spawn("threshold", lambda: budget.acquire(Lane.THRESHOLD))
    sim.jump(1.0)  # the token is there; the waiter has not woken up yet
    assert budget.next_token_in() == 0.0
    assert not budget.try_acquire(Lane.INTERVAL)
    assert not budget.try_acquire(Lane.THRESHOLD)
    assert budget.try_acquire(Lane.CLOSING)  # more urgent than every waiter: it may
    sim.advance()
    assert sim.outcomes == []  # woke, found the token gone, sleeps again
    assert sim.advance() == 2.0
    assert sim.outcomes == [Outcome("threshold", True, 2.0)]


# ---------------------------------------------------------------- timeouts and penalties


def test_a_timeout_returns_false_at_the_deadline_and_takes_nothing() -> None:
    sim = AutoTime()
    budget = sim.budget(rate=1.0)
    assert budget.acquire(Lane.ON_DEMAND, timeout=0)
    assert not budget.acquire(Lane.ON_DEMAND, timeout=0)
    assert sim.slept == []
    assert not budget.acquire(Lane.ON_DEMAND, timeout=0.4)
    assert sim.now == 0.4
    assert budget.acquire(Lane.ON_DEMAND, timeout=0.6)
    assert sim.now == 1.0
    snapshot = budget.snapshot()
    assert snapshot["timed_out"]["ON_DEMAND"] == 2
    assert snapshot["waited"]["ON_DEMAND"] == 2
    assert snapshot["granted"]["ON_DEMAND"] == 2


def test_a_waiter_that_times_out_passes_its_turn_to_the_next() -> None:
    sim = SimTime()
    budget = sim.budget(rate=1.0)
    assert budget.try_acquire(Lane.INTERVAL)
    sim.spawn("interval", lambda: budget.acquire(Lane.INTERVAL))
    sim.spawn("impatient", lambda: budget.acquire(Lane.ON_DEMAND, timeout=0.5))
    assert sim.advance() == 0.5
    assert sim.outcomes == [Outcome("impatient", False, 0.5)]
    assert sim.advance() == 1.0
    assert sim.outcomes[1:] == [Outcome("interval", True, 1.0)]
    assert budget.snapshot()["waiting"]["ON_DEMAND"] == 0


def test_a_penalty_holds_back_every_lane_then_resumes_at_the_rate() -> None:
    sim = AutoTime()
    budget = sim.budget(rate=2.0, burst=4)
    budget.penalize(3.0)
    assert budget.next_token_in() == 3.0
    assert budget.snapshot()["penalized_for"] == 3.0
    sim.now = 2.999
    assert not any(budget.try_acquire(lane) for lane in Lane)
    sim.now = 3.0
    # The bucket restarts empty: one call now, the next one interval later, no burst.
    assert budget.try_acquire(Lane.INTERVAL)
    assert not budget.try_acquire(Lane.ON_DEMAND)
    assert budget.next_token_in() == 0.5
    assert budget.snapshot()["penalized_for"] == 0.0


def test_a_penalty_holds_back_threads_already_waiting() -> None:
    sim = SimTime()
    budget = sim.budget(rate=1.0)
    assert budget.try_acquire(Lane.CLOSING)
    sim.spawn("closing", lambda: budget.acquire(Lane.CLOSING))
    sim.spawn("on_demand", lambda: budget.acquire(Lane.ON_DEMAND))
    budget.penalize(5.0)  # a 429 arrived elsewhere while both waited
    assert sim.advance() == 1.0  # they wake for the token they expected, and sleep on
    assert sim.outcomes == []
    assert sim.advance() == 5.0
    assert sim.outcomes == [Outcome("on_demand", True, 5.0)]
    assert sim.advance() == 6.0
    assert sim.outcomes[1:] == [Outcome("closing", True, 6.0)]


def test_a_penalty_never_shortens_one_already_running() -> None:
    sim = AutoTime()
    budget = sim.budget(rate=1.0)
    budget.penalize(10.0)
    sim.now = 1.0
    budget.penalize(2.0)
    assert budget.next_token_in() == 9.0
    with pytest.raises(ValueError, match="penalty"):
        budget.penalize(-1.0)
    assert budget.snapshot()["penalties"] == 2


def test_with_the_real_clock_an_urgent_waiter_still_goes_first() -> None:
    budget = RateBudget(rate=20.0)
    assert budget.acquire(Lane.INTERVAL, timeout=1.0)
    # Long enough that both threads queue inside it on any machine (they take milliseconds).
    budget.penalize(5.0)
    assert not budget.acquire(Lane.INTERVAL, timeout=0.01)
    order: list[str] = []

    def wait(name: str, lane: Lane) -> None:
        assert budget.acquire(lane, timeout=STUCK)
        order.append(name)

    threads = [
        threading.Thread(target=wait, args=("interval", Lane.INTERVAL)),
        threading.Thread(target=wait, args=("on_demand", Lane.ON_DEMAND)),
    ]

    def waiting() -> int:
        return sum(budget.snapshot()["waiting"].values())

    for queued, thread in enumerate(threads, start=1):
        thread.start()
        wait_until(lambda: waiting() == queued, "the thread queues", every=0.001)  # noqa: B023
    assert budget.snapshot()["penalized_for"] > 0, "both threads must queue inside the penalty"
    for thread in threads:
        thread.join(STUCK)
    assert order == ["on_demand", "interval"]


# ---------------------------------------------------------------- back-off


@given(
    attempt=st.integers(min_value=1, max_value=1000),
    base=st.floats(min_value=0.0, max_value=10.0),
    cap=st.floats(min_value=0.0, max_value=1000.0),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_backoff_delay_stays_within_full_jitter_bounds(
    attempt: int, base: float, cap: float, seed: int
) -> None:
    delay = backoff_delay(attempt, base=base, cap=cap, rng=random.Random(seed))
    assert 0.0 <= delay <= min(cap, base * 2.0 ** (attempt - 1))


def test_backoff_delay_spreads_over_the_whole_range_and_survives_huge_attempts() -> None:
    rng = random.Random(3)
    delays = [backoff_delay(4, rng=rng) for _ in range(2000)]  # ceiling 0.5 * 2**3 = 4.0
    assert min(delays) < 0.1
    assert max(delays) > 3.9
    assert 1.8 < sum(delays) / len(delays) < 2.2
    assert 0.0 <= backoff_delay(10**9, rng=rng) <= 30.0
    assert backoff_delay(3, base=1.0, cap=0.0) == 0.0
    with pytest.raises(ValueError, match="from 1"):
        backoff_delay(0)


# ---------------------------------------------------------------- circuit breaker


def state(breaker: CircuitBreaker) -> str:
    """The breaker's state, read fresh (an inline ``breaker.state`` would be narrowed by mypy
    after the first assert, as if it could not change)."""
    return breaker.state


class ManualSeconds:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_circuit_breaker_full_cycle() -> None:
    clock = ManualSeconds()
    breaker = CircuitBreaker(failure_threshold=3, cooldown=5.0, max_cooldown=18.0, clock=clock)
    assert state(breaker) == "closed"
    assert breaker.allow()

    # Consecutive failures only: a success in between starts the count again.
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    assert state(breaker) == "closed"
    breaker.record_failure()
    assert state(breaker) == "open"
    assert not breaker.allow()
    assert breaker.retry_in() == 5.0

    clock.now = 4.999
    assert not breaker.allow()
    clock.now = 5.0
    assert state(breaker) == "half_open"
    assert breaker.retry_in() == 0.0
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # one at a time
    assert breaker.snapshot()["probe_in_flight"]

    # Failed probes double the cooldown, up to the cap: 10, then 18 (not 20), then 18.
    for cooldown in (10.0, 18.0, 18.0):
        breaker.record_failure()
        assert state(breaker) == "open"
        assert breaker.retry_in() == cooldown
        opened_at = clock.now
        clock.now = opened_at + cooldown - 0.001
        assert not breaker.allow()
        clock.now = opened_at + cooldown
        assert breaker.allow()
        assert not breaker.allow()

    breaker.record_success()
    assert state(breaker) == "closed"
    assert breaker.allow()
    assert breaker.snapshot() == {
        "state": "closed",
        "consecutive_failures": 0,
        "cooldown": 5.0,
        "retry_in": 0.0,
        "probe_in_flight": False,
        "times_opened": 4,
    }
    # Reset: it takes the full threshold again, and the cooldown is back to 5.
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.retry_in() == 5.0


def test_half_open_lets_exactly_one_of_many_threads_probe() -> None:
    clock = ManualSeconds()
    breaker = CircuitBreaker(failure_threshold=1, cooldown=1.0, clock=clock)
    breaker.record_failure()
    clock.now = 1.0
    start = threading.Barrier(16)
    answers: list[bool] = []
    lock = threading.Lock()

    def ask() -> None:
        start.wait(STUCK)
        answer = breaker.allow()
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(STUCK)
    assert sorted(answers) == [False] * 15 + [True]


def test_results_of_calls_let_through_before_opening_change_nothing() -> None:
    clock = ManualSeconds()
    breaker = CircuitBreaker(failure_threshold=1, cooldown=5.0, clock=clock)
    breaker.record_failure()
    breaker.record_success()  # a slow call from before the outage
    breaker.record_failure()
    assert state(breaker) == "open"
    assert breaker.retry_in() == 5.0
    clock.now = 5.0
    breaker.record_failure()  # no probe is out: this is not the probe's answer
    assert breaker.snapshot()["cooldown"] == 5.0
    assert breaker.allow()


@pytest.mark.parametrize(
    ("threshold", "cooldown", "max_cooldown"), [(0, 5.0, 300.0), (5, 0.0, 300.0), (5, 10.0, 5.0)]
)
def test_circuit_breaker_refuses_nonsense_configuration(
    threshold: int, cooldown: float, max_cooldown: float
) -> None:
    with pytest.raises(ValueError, match=r"threshold|cooldown"):
        CircuitBreaker(failure_threshold=threshold, cooldown=cooldown, max_cooldown=max_cooldown)


@pytest.mark.parametrize(
    "stopped_by",
    [LeaseLost("the lease ran out during the budget's wait"), RuntimeError("database error")],
)
def test_a_probe_that_never_reaches_stripe_does_not_wedge_the_breaker(
    stopped_by: Exception,
) -> None:
    """Half-open lets one probe through. If the block ends some other way than with Stripe's
    answer (the lease lost, the database failing before the call goes out), the breaker is
    told the call never happened: the next caller probes, instead of every call being refused
    until a restart."""
    clock = ManualSeconds()
    breaker = CircuitBreaker(failure_threshold=1, cooldown=5.0, clock=clock)
    guard = StripeGuard(RateBudget(rate=1000.0, burst=10), breaker)
    breaker.allow()
    breaker.record_failure()
    clock.now = 5.0
    assert state(breaker) == "half_open"
    with pytest.raises(type(stopped_by)), guard.call(Lane.INTERVAL):
        raise stopped_by
    assert not breaker.snapshot()["probe_in_flight"]
    with guard.call(Lane.INTERVAL):  # the next probe goes, and Stripe answers: closed
        pass
    assert state(breaker) == "closed"
    # A probe that Stripe answers with an outage opens it again, as before.
    breaker.record_failure()
    clock.now = 10.0
    with pytest.raises(StripeUnavailable), guard.call(Lane.INTERVAL):
        raise StripeUnavailable("503 from Stripe", code="api_error")
    assert state(breaker) == "open"


def test_each_endpoint_is_paced_at_its_own_rate() -> None:
    """Stripe limits every endpoint on its own (25/s by default, docs.stripe.com/rate-limits):
    calls to one endpoint are spaced 1/rate apart, another endpoint is not held up by them,
    a raised endpoint is spaced by its own rate, and an idle endpoint owes nothing."""
    clock = ManualSeconds()
    pacer = EndpointPacer(25.0, {"POST /v1/invoices/{id}/update_lines": 50.0}, clock=clock)
    add = "POST /v1/invoices/{id}/add_lines"
    update = "POST /v1/invoices/{id}/update_lines"
    assert [round(pacer.reserve(add), 6) for _ in range(3)] == [0.0, 0.04, 0.08]
    assert pacer.reserve("GET /v1/events") == 0.0  # another endpoint: its own pace
    assert [round(pacer.reserve(update), 6) for _ in range(3)] == [0.0, 0.02, 0.04]
    clock.now = 5.0
    assert pacer.reserve(add) == 0.0  # idle for a while: no debt, no burst saved up either
    assert round(pacer.reserve(add), 6) == 0.04
    with pytest.raises(ValueError, match="positive"):
        EndpointPacer(0)
    with pytest.raises(ValueError, match="positive"):
        EndpointPacer(25, {add: -1})
