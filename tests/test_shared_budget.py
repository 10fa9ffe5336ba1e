"""The Stripe budget shared by processes through the database (sync.shared_budget)."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from billsync.db.database import Database
from billsync.repositories import budget as repository
from billsync.sync import shared_budget
from billsync.sync.budget import Lane
from billsync.sync.shared_budget import SharedBudget


class FakeTime:
    """Unix seconds that move only when someone sleeps; records when each call went out."""

    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


def process(database: Database, fake: FakeTime, rate: float, burst: float = 1) -> SharedBudget:
    return SharedBudget(database, rate, burst=burst, clock=fake.clock, sleep=fake.sleep)


def test_three_processes_together_stay_within_one_budget(database: Database) -> None:
    fake = FakeTime()
    processes = [process(database, fake, rate=10) for _ in range(3)]
    sent: list[float] = []
    for n in range(60):
        processes[n % 3].acquire(Lane.INTERVAL)
        sent.append(fake.now)
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert min(gaps) == pytest.approx(0.1)  # evenly spaced at the shared rate, not 3×
    assert sent[-1] - sent[0] == pytest.approx(5.9)
    for start in sent:  # any one-second window: at most rate + burst - 1 calls
        assert sum(1 for t in sent if start <= t < start + 1 - 1e-5) <= 10
    assert sum(p.reserved for p in processes) == 60


def test_a_burst_lets_that_many_calls_go_at_once_then_the_rate(database: Database) -> None:
    fake = FakeTime()
    a, b = process(database, fake, rate=10, burst=4), process(database, fake, rate=10, burst=4)
    sent = []
    for n in range(8):
        (a if n % 2 else b).acquire(Lane.ON_DEMAND)
        sent.append(round(fake.now - 1000.0, 4))
    assert sent == [0.0, 0.0, 0.0, 0.0, 0.1, 0.2, 0.3, 0.4]


def test_background_lanes_do_not_reserve_far_ahead(database: Database) -> None:
    fake = FakeTime()
    busy, background = process(database, fake, rate=10), process(database, fake, rate=10)
    for _ in range(20):  # 2 s of reservations made at once (a person waits on 20 calls)
        busy._ensure()
        with database.transaction() as connection:
            reserved, _ = repository.reserve(
                connection, "stripe", interval=0.1, tolerance=0.0, horizon=30.0, now=fake.now
            )
            assert reserved
    background.acquire(Lane.INTERVAL)
    assert background.deferred >= 1  # it waited for the queue to shrink before reserving
    assert fake.now - 1000.0 == pytest.approx(2.0)  # and went right after the 20


def test_a_429_holds_every_process_back(database: Database) -> None:
    fake = FakeTime()
    a, b = process(database, fake, rate=10), process(database, fake, rate=10)
    a.acquire(Lane.INTERVAL)
    a.penalize(3.0)
    start = fake.now
    b.acquire(Lane.ON_DEMAND)
    assert fake.now - start == pytest.approx(3.0)
    snapshot = b.snapshot()
    assert snapshot["granted"] == 2


def test_postgresql_lends_its_clock_to_processes_on_other_hosts(database: Database) -> None:
    if database.is_sqlite:
        pytest.skip("the server clock is PostgreSQL's; SQLite processes share one host's clock")
    rate = 40.0
    # When each call was let go, as billsync itself read the clock to decide it (its last
    # reading in acquire): a thread descheduled between acquire and the test's own note of the
    # time would otherwise bunch the notes, whatever billsync did.
    decided = threading.local()

    def monotonic() -> float:
        decided.at = time.monotonic()
        return float(decided.at)

    budgets = [SharedBudget(database, rate, monotonic=monotonic) for _ in range(3)]
    sent: list[float] = []  # no clock given: the server's
    lock = threading.Lock()

    def run(budget: SharedBudget) -> None:
        for _ in range(10):
            budget.acquire(Lane.INTERVAL)
            with lock:
                sent.append(decided.at)

    threads = [threading.Thread(target=run, args=(b,)) for b in budgets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(sent) == 30
    # 30 calls at 40/s from three "processes": never faster than the one budget allows, in
    # all (29 intervals: three budgets each pacing its own would take 9 intervals, 0.225 s)...
    assert max(sent) - min(sent) >= 29 / rate - 0.02
    # ... and in any quarter second, no more than the slots a shared budget can let out there:
    # its own 10, and up to 10 earlier ones whose sleepers woke late but within LATE_TOLERANCE
    # (a loaded machine; they still call), +1 for a boundary's jitter. Three budgets each
    # pacing alone would let all 30 out within a quarter second.
    window = shared_budget.LATE_TOLERANCE
    for start in sent:
        assert sum(1 for t in sent if start <= t < start + window) <= 2 * window * rate + 1


def test_a_late_sleeper_still_calls_and_one_that_overslept_takes_a_new_slot(
    database: Database,
) -> None:
    """Waking 60 ms late (a busy process) the call still goes out: lateness only shifts calls
    later. Waking more than a quarter second late (a pause), the slot is given up and a new
    one taken, so that a window never sees more than rate × 1.25 calls."""
    fake = FakeTime()
    oversleep = [0.3, 0.06]  # popped from the end: first 60 ms late, then 300 ms

    def sleep(seconds: float) -> None:
        fake.sleep(seconds + (oversleep.pop() if oversleep else 0.0))

    other = process(database, fake, rate=10)
    late = SharedBudget(database, 10, clock=fake.clock, sleep=sleep)
    other.acquire(Lane.INTERVAL)  # slot 0.0
    late.acquire(Lane.INTERVAL)  # slot 0.1, woke at 0.16: calls
    assert late.late == 0
    assert fake.now - 1000.0 == pytest.approx(0.16)
    late.acquire(Lane.INTERVAL)  # slot 0.2, woke at 0.5: given up; a new one, now
    assert late.late == 1
    assert fake.now - 1000.0 == pytest.approx(0.5)
    other.acquire(Lane.INTERVAL)  # an interval after it
    assert fake.now - 1000.0 == pytest.approx(0.6)
