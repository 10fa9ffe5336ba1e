"""The scheduler and its workers: which accounts to sync, in which lane, by which worker.

One process: a tick finds due work (the lifecycle's transitions, then accounts whose policy says
their changes should go now), a priority queue orders it by lane (on-demand > closing >
threshold > interval), and worker threads sync one account each — never the same account in two
threads at once. Every Stripe call passes the shared :class:`~billsync.sync.budget.RateBudget`
and :class:`~billsync.sync.budget.CircuitBreaker` (:class:`~billsync.sync.guard.StripeGuard`).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection

from billsync.clock import Clock
from billsync.core.policy import (
    AccountSyncView,
    Policy,
    PolicyError,
    SyncPolicy,
    due,
    window_start,
)
from billsync.db.database import Database
from billsync.observability.instruments import observe_sync, observe_tick
from billsync.repositories import sync as repository
from billsync.services.lifecycle import AdvanceReport, LifecycleService
from billsync.services.sync import SyncOutcome, SyncService
from billsync.sync.budget import Lane
from billsync.sync.leases import SCHEDULER_JOB, Leases

log = logging.getLogger("billsync.scheduler")

# How often the leader looks for accounts out of step that no writer marked behind: a full
# read of the lines out of step, so seldom.
BACKSTOP_INTERVAL = timedelta(minutes=5)


@dataclass(order=True)
class _Job:
    lane: Lane
    order: int
    account_id: str = field(compare=False)


@dataclass
class _Periodic:
    name: str
    interval: timedelta
    job: Callable[[], object]
    last_run: datetime | None = None


@dataclass
class _Waiters:
    done: threading.Event = field(default_factory=threading.Event)
    outcome: SyncOutcome | None = None


class Scheduler:
    def __init__(
        self,
        database: Database,
        sync: SyncService,
        lifecycle: LifecycleService,
        clock: Clock,
        policy: SyncPolicy,
        *,
        leases: Leases | None = None,
        calls_per_second: float = 20.0,
        on_demand_spacing: timedelta = timedelta(seconds=10),
    ) -> None:
        self.database = database
        # An account synced (or tried) this recently is answered as it is by an on-demand
        # request: a customer reloading the page cannot spend the shared budget.
        self.on_demand_spacing = on_demand_spacing
        self.leases = leases
        self.calls_per_second = calls_per_second
        # How many claimed accounts a process keeps queued: enough to keep its threads busy,
        # few enough that other workers get their share of a backlog.
        self.claim_limit = 1000
        self.sync = sync
        self.lifecycle = lifecycle
        self.clock = clock
        self.policy = policy
        self._queue: list[_Job] = []
        self._queued: dict[str, Lane] = {}  # account → best lane queued
        self._running: set[str] = set()
        self._again: set[str] = set()
        self._waiters: dict[str, _Waiters] = {}
        self._order = itertools.count()
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._periodic: list[_Periodic] = [
            _Periodic("sync.backstop", BACKSTOP_INTERVAL, self.backstop)
        ]
        self.last_tick: AdvanceReport | None = None
        # Running (``start``), the periodic jobs have a thread of their own: a sweep waiting
        # on a slow Stripe never holds up the claiming of due accounts.
        self._periodic_apart = False

    def every(self, interval: timedelta, name: str, job: Callable[[], object]) -> None:
        """Run ``job`` from the tick at most once per ``interval`` (webhook inbox, sweep,
        reconciliation)."""
        self._periodic.append(_Periodic(name, interval, job))

    # --- deciding what is due -------------------------------------------------------------

    def policy_of(self, overrides: dict[str, object] | None) -> SyncPolicy:
        try:
            return self.policy.merged(overrides)
        except PolicyError as error:
            log.warning("scheduler.policy.invalid", extra={"error": str(error)})
            return self.policy

    def due_accounts(self, limit: int | None = None) -> list[tuple[str, Lane]]:
        """The accounts due now, with their lane, most overdue first: what this tick may claim.

        Read from the due queue (accounts marked behind, ``ix_account_sync_due``), so the cost
        is that of the accounts returned, not of every account with usage: on the interval
        policy, one index range scan in the order syncs should go (never synced, then least
        recently synced), at most ``limit``. Accounts with a policy of their own are few and
        are weighed one by one. With the threshold policy as the platform's default, one
        grouped statement weighs the accounts behind (their unsynced amounts), the largest
        first, at most ``limit``."""
        now = self.clock.now()
        limit = self.claim_limit if limit is None else limit
        found: list[tuple[str, Lane]] = []
        claimant = None if self.leases is None else self.leases.claimant()
        with self.database.read() as connection:
            # Month end first: periods to complete or finalize (the lifecycle only changes
            # their state; the syncs are the workers', spread like any other).
            found += [
                (account_id, Lane.CLOSING)
                for account_id in repository.due_for_closing(
                    connection, limit, now=now, claimant=claimant
                )
            ]
            for account_id, overrides, last_synced_at in repository.behind_accounts(
                connection, with_override=True, now=now, claimant=claimant
            ):
                policy = self.policy_of(overrides)
                lane = self._lane_if_due(connection, account_id, policy, last_synced_at, now)
                if lane is not None:
                    found.append((account_id, lane))
            default = self.policy
            if default.policy is Policy.INTERVAL:
                start = window_start(now, default.interval)
                found += [
                    (account_id, Lane.INTERVAL)
                    for account_id, _ in repository.due_by_interval(
                        connection, start, limit, now=now, claimant=claimant
                    )
                ]
            elif default.policy is Policy.THRESHOLD:
                found += [
                    (account_id, Lane.THRESHOLD)
                    for account_id, _ in repository.due_by_threshold(
                        connection, default.threshold, limit, now=now, claimant=claimant
                    )
                ]
        lanes: dict[str, Lane] = {}
        for account_id, lane in found:  # the first (most urgent) lane an account came with
            lanes.setdefault(account_id, lane)
        return list(lanes.items())[:limit]

    @staticmethod
    def _lane_if_due(
        connection: Connection,
        account_id: str,
        policy: SyncPolicy,
        last_synced_at: datetime | None,
        now: datetime,
    ) -> Lane | None:
        view = AccountSyncView(
            last_synced_at=last_synced_at,
            unsynced_amount=repository.unsynced_amount(connection, account_id)
            if policy.policy is Policy.THRESHOLD
            else 0,
        )
        if not due(policy, view, now):
            return None
        return Lane.THRESHOLD if policy.policy is Policy.THRESHOLD else Lane.INTERVAL

    def backstop(self) -> list[str]:
        """Mark behind the accounts out of step that no writer marked (a change made outside
        billsync): a periodic job, so that nothing waits forever on a forgotten mark."""
        with self.database.transaction() as connection:
            forgotten = repository.mark_forgotten_behind(connection, self.clock.now())
        if forgotten:
            log.warning("scheduler.backstop.marked", extra={"accounts": len(forgotten)})
        return forgotten

    def tick(self) -> AdvanceReport:
        """One tick, timed (``billsync_scheduler_tick_seconds``)."""
        began = time.perf_counter()
        try:
            return self._tick()
        finally:
            observe_tick(time.perf_counter() - began)

    def _tick(self) -> AdvanceReport:
        """Periodic jobs (here unless a thread of their own runs them), lifecycle transitions
        (state only: the syncs they call for go to the closing lane), then due accounts.

        With several workers, one of them leads (it holds the scheduler's job lease) and runs
        the periodic jobs and the lifecycle; every worker claims its share of the due accounts.
        """
        report = AdvanceReport()
        if self.leases is None or self.leases.lead(SCHEDULER_JOB):
            if not self._periodic_apart:
                self._run_periodic()
            if self._leading():  # a long periodic job may have outlived the lease
                report = self.lifecycle.advance(sync=False)
        if self._stop.is_set():
            return report  # stopping: claim nothing more
        with self._lock:
            busy = set(self._queued) | self._running
            queued = dict(self._queued)
            urgent_queued = sum(1 for lane in queued.values() if lane < Lane.INTERVAL)
        due = self.due_accounts(self.claim_limit + len(busy))
        if self.leases is None:
            for account_id, lane in due:
                self.enqueue(account_id, lane)
        else:
            lanes = dict(due)
            fresh = [account_id for account_id, _ in due if account_id not in busy]
            urgent = [account_id for account_id in fresh if lanes[account_id] < Lane.INTERVAL]
            # A queue full of interval syncs does not hold back the month's end: the urgent
            # lanes are claimed against the urgent work already queued only.
            claimed = self.leases.claim(urgent, limit=self.claim_limit - urgent_queued)
            room = self.claim_limit - len(busy) - len(claimed)
            taken = set(claimed)
            claimed += self.leases.claim(
                [account_id for account_id in fresh if account_id not in taken], limit=room
            )
            for account_id in claimed:
                self.enqueue(account_id, lanes[account_id])
            # Claimed already, queued in a less urgent lane (an interval sync when its period
            # closes): moved up, not left behind the interval backlog.
            for account_id, lane in due:
                if account_id in queued and lane < queued[account_id]:
                    self.enqueue(account_id, lane)
        self.last_tick = report
        return report

    def _leading(self) -> bool:
        """Still the one process running the singleton jobs (always, without leases)."""
        return self.leases is None or self.leases.leading(SCHEDULER_JOB)

    def _run_periodic(self) -> None:
        now = self.clock.now()
        for periodic in self._periodic:
            if not self._leading():
                return  # the lease ran out during an earlier job: another process leads now
            if periodic.last_run is None or now - periodic.last_run >= periodic.interval:
                periodic.last_run = now
                try:
                    periodic.job()
                except Exception:  # one job's failure must not stop the others
                    log.exception("scheduler.periodic.failed", extra={"job": periodic.name})

    # --- the queue -------------------------------------------------------------------------

    def enqueue(self, account_id: str, lane: Lane) -> None:
        with self._lock:
            if account_id in self._running:
                self._again.add(account_id)
                self._queued[account_id] = min(self._queued.get(account_id, lane), lane)
                return
            best = self._queued.get(account_id)
            if best is not None and best <= lane:
                return
            self._queued[account_id] = lane
            heapq.heappush(self._queue, _Job(lane, next(self._order), account_id))
            self._lock.notify()

    def depth(self) -> dict[str, int]:
        with self._lock:
            counts = {lane.name.lower(): 0 for lane in Lane}
            for account_id, lane in self._queued.items():
                if account_id not in self._running:
                    counts[Lane(lane).name.lower()] += 1
            return counts

    def _pop_ready(self) -> tuple[str, Lane] | None:
        while self._queue:
            job = heapq.heappop(self._queue)
            lane = self._queued.get(job.account_id)
            if lane is None or lane != job.lane or job.account_id in self._running:
                continue  # superseded by a more urgent lane, or running already
            del self._queued[job.account_id]
            self._running.add(job.account_id)
            return job.account_id, job.lane
        return None

    def _take(self, timeout: float | None) -> tuple[str, Lane] | None:
        """The most urgent job, waiting up to ``timeout`` seconds (None: until one comes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                job = self._pop_ready()
                if job is not None or self._stop.is_set():
                    return job
                if deadline is None:
                    self._lock.wait()
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._lock.wait(remaining)

    def _finish(self, account_id: str, outcome: SyncOutcome) -> None:
        with self._lock:
            self._running.discard(account_id)
            waiters = self._waiters.pop(account_id, None)
            if account_id in self._again:
                self._again.discard(account_id)
                lane = self._queued.pop(account_id, Lane.INTERVAL)
                self._queued[account_id] = lane
                heapq.heappush(self._queue, _Job(lane, next(self._order), account_id))
                self._lock.notify()
        if waiters is not None:
            waiters.outcome = outcome
            waiters.done.set()

    def work_once(self, timeout: float | None = 0) -> SyncOutcome | None:
        """Sync the most urgent queued account (tests and ``billsync sync`` call this)."""
        job = self._take(timeout)
        if job is None:
            return None
        account_id, lane = job
        began = time.perf_counter()
        try:
            outcome = self.sync.sync_account(account_id, lane=lane)
            if lane == Lane.CLOSING and outcome.ok:
                # The draft this sync completed starts its review window now, not a tick later.
                self.lifecycle.drafts_completed(account_id)
        except Exception as error:  # a worker must survive one account's bug
            log.exception("scheduler.sync.crashed", extra={"account": account_id})
            outcome = SyncOutcome(account_id, error=f"{type(error).__name__}: {error}")
        skipped = outcome.busy is not None or outcome.spaced
        result = "failed" if not outcome.ok else "skipped" if skipped else "synced"
        observe_sync(lane.name.lower(), result, outcome.calls, time.perf_counter() - began)
        self._finish(account_id, outcome)
        return outcome

    def drain(self) -> list[SyncOutcome]:
        outcomes = []
        while (outcome := self.work_once()) is not None:
            outcomes.append(outcome)
        return outcomes

    # --- on demand -------------------------------------------------------------------------

    def request(self, account_id: str, *, wait: float) -> SyncOutcome | None:
        """Sync now (a person is waiting): the on-demand lane; returns the outcome, or None if
        it took longer than ``wait`` seconds (the sync goes on).

        Requests for one account share one sync (coalesced: joining the one in flight or
        queued). An account synced or tried less than ``on_demand_spacing`` ago is not synced
        again: the answer is its state as it is (``SyncOutcome.spaced``), and the budget is
        left to everyone else."""
        with self._lock:
            joining = account_id in self._waiters
        if not joining and self._recently_synced(account_id):
            return SyncOutcome(account_id, spaced=True)
        with self._lock:
            waiters = self._waiters.setdefault(account_id, _Waiters())
        self.enqueue(account_id, Lane.ON_DEMAND)
        if not self._threads:  # no workers running (CLI, tests): do it here
            while not waiters.done.is_set() and self.work_once() is not None:
                pass
        if waiters.done.wait(wait):
            return waiters.outcome
        return None

    def _recently_synced(self, account_id: str) -> bool:
        if self.on_demand_spacing <= timedelta(0):
            return False
        with self.database.read() as connection:
            row = repository.sync_row(connection, account_id) or {}
        last: datetime | None = row.get("last_attempt_at")
        return last is not None and self.clock.now() - last < self.on_demand_spacing

    # --- threads -----------------------------------------------------------------------------

    def start(self, *, workers: int, tick_seconds: float) -> None:
        self._stop.clear()
        # Enough for two ticks at the full budget (every account takes at least one call), so
        # claiming never slows syncing down; more would only hold accounts from other workers.
        self.claim_limit = max(8, 4 * workers, math.ceil(2 * self.calls_per_second * tick_seconds))
        if self.leases is not None:
            self.leases.start()  # the heartbeat: renews what this process holds
        for index in range(workers):
            thread = threading.Thread(target=self._work, name=f"billsync-sync-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._periodic_apart = True
        for target, name in ((self._tick_forever, "billsync-tick"),
                             (self._periodic_forever, "billsync-periodic")):  # fmt: skip
            thread = threading.Thread(target=target, args=(tick_seconds,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        while not self._stop.is_set():
            self.work_once(timeout=0.5)

    def _tick_forever(self, seconds: float) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # keep ticking: the next tick may succeed
                log.exception("scheduler.tick.failed")
            self._stop.wait(seconds)

    def _periodic_forever(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            if self._leading():  # the tick takes and renews the lead
                self._run_periodic()

    def stop(self) -> None:
        """Finish in-flight syncs and stop (graceful shutdown)."""
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()
        self._periodic_apart = False
        with self._lock:  # what was claimed but not started is given back below
            self._queue.clear()
            self._queued.clear()
            self._again.clear()
        if self.leases is not None:
            self.leases.stop()  # gives back the leases of accounts claimed but not started
