"""Account leases: one account is synced by one process (and one thread) at a time.

Several ``billsync worker`` and ``billsync api`` processes may run against one PostgreSQL
database. Before syncing an account, a process takes the account's lease (a row in
``account_sync``: owner and expiry), and gives it back when done. The scheduler's tick claims
its share of the due accounts in one statement (``FOR UPDATE SKIP LOCKED``), so workers split
the backlog instead of racing for it.

A lease expires unless renewed: a heartbeat thread renews what the process holds every third of
the lease's time, and :meth:`Leases.check`, called before every Stripe call, renews it inline
when due (so a process without the thread, an API replica syncing on demand, keeps its lease
too). A process that cannot renew (it stalled, or lost the database) stops calling Stripe once
its own view of the lease runs out, measured on its monotonic clock from the last successful
renewal, before anyone else may take it over. A killed worker's leases simply expire and the
other workers' next claim picks the accounts up; on the same host (a crashed process whose pid
is gone, the usual case when a service manager restarts it) its accounts and its singleton job
are taken over at once.

What is left if a stalled worker's call was already in flight when its lease ran out: the
next holder may send the same write. Every write carries an idempotency key derived from the
ledger (the line and its version), so Stripe applies it once; pending intents are read back
before anything is written again (services.sync).

Inside one process, a lock per account keeps two threads (a scheduler worker and an on-demand
request) from syncing the same account at once; the database lease is shared by the process.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection

from billsync.db.database import Database
from billsync.repositories import leases as repository
from billsync.repositories.sync import Claimant

log = logging.getLogger("billsync.leases")

SCHEDULER_JOB = "scheduler"
"""The singleton job: lifecycle transitions and periodic jobs (webhook inbox, sweep,
reconciliation, retention) run in one process at a time."""


class AccountBusy(Exception):
    """Another process (or thread) is syncing the account right now."""

    def __init__(self, account_id: str, holder: str | None) -> None:
        super().__init__(f"account {account_id} is being synced by {holder or 'another thread'}")
        self.account_id = account_id
        self.holder = holder


class LeaseLost(Exception):
    """The process's lease on an account ran out or was taken over: stop calling Stripe."""


def _pid_namespace() -> str:
    """The inode of this process's pid namespace: two containers may share a host name and
    both run as pid 1, but never a pid namespace. "0" where it cannot be read."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


_OWNERS_HERE: set[str] = set()  # every owner name this process has made


def default_owner() -> str:
    """host:pid:pid-namespace:random — unique per process, readable in logs and metrics."""
    owner = f"{socket.gethostname()}:{os.getpid()}:{_pid_namespace()}:{secrets.token_hex(3)}"
    _OWNERS_HERE.add(owner)
    return owner


def is_dead_here(owner: str) -> bool:
    """True only when ``owner`` was a process of this host and pid namespace that no longer
    exists: its leases can be taken at once instead of after their expiry (a worker restarted
    after a crash). Any doubt — another host or namespace, an unreadable namespace, a pid in
    use (even by an unrelated process) — answers False: the lease is waited out."""
    parts = owner.split(":")
    if len(parts) != 4 or not parts[1].isdigit():
        return False
    host, pid_text, namespace, _ = parts
    if host != socket.gethostname() or namespace == "0" or namespace != _pid_namespace():
        return False
    pid = int(pid_text)
    if pid == os.getpid():  # ours, or an earlier process of this namespace that had our pid
        return owner not in _OWNERS_HERE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Lease:
    generation: int
    renewed_at: float  # monotonic time of the last successful take or renewal
    claimed_at: float = 0.0  # monotonic time it was claimed (a claim not started in time lapses)
    held: bool = False  # a sync runs under it now (claimed leases wait in the queue)
    lost: bool = False


class Leases:
    """This process's leases. ``wall`` dates them in the database (all processes compare
    expiries on it: keep hosts' clocks in sync, the lease time dwarfs NTP's skew); ``monotonic``
    decides locally when a lease can no longer be trusted."""

    def __init__(
        self,
        database: Database,
        *,
        ttl: float = 60.0,
        owner: str | None = None,
        wall: Callable[[], datetime] = _utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not ttl > 0:
            raise ValueError(f"a lease lasts a positive number of seconds, not {ttl!r}")
        self.database = database
        self.ttl = float(ttl)
        self.owner = owner or default_owner()
        self._wall = wall
        self._monotonic = monotonic
        self._sleep = sleep
        self._lock = threading.Lock()
        self._leases: dict[str, _Lease] = {}
        self._local: dict[str, threading.Lock] = {}
        self._holding: dict[str, int] = {}  # account → the thread syncing it under its lease
        self._jobs: dict[str, float] = {}  # job → monotonic time of the last renewal
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- claiming and holding ------------------------------------------------------------

    def _expiry(self) -> tuple[datetime, datetime]:
        now = self._wall()
        return now, now + timedelta(seconds=self.ttl)

    def claimant(self) -> Claimant:
        """Who asks what is due, and the wall time leases are compared on: the due queries
        step over the accounts other processes' live leases hold."""
        return Claimant(self.owner, self._wall())

    def claim(self, candidates: Sequence[str], *, limit: int) -> list[str]:
        """Lease up to ``limit`` due accounts nobody holds; they are ours until synced
        (:meth:`hold` then :meth:`release`) or until the process stops renewing them."""
        with self._lock:
            wanted = [a for a in candidates if a not in self._leases]
        if not wanted or limit <= 0:
            return []
        now, expires = self._expiry()
        started = self._monotonic()
        with self.database.transaction() as connection:
            got = repository.claim_accounts(
                connection, wanted, self.owner, now, expires, limit=limit
            )
            room = limit - len(got)
            if room > 0:
                got.update(self._take_over(connection, wanted, now, expires, room))
        with self._lock:
            for account_id, generation in got.items():
                # A request thread may have taken it meanwhile (same owner): keep its entry.
                self._leases.setdefault(account_id, _Lease(generation, started, started))
        return sorted(got)

    def _take_over(
        self,
        connection: Connection,
        account_ids: Sequence[str],
        now: datetime,
        expires: datetime,
        limit: int,
    ) -> dict[str, int]:
        """The leases of crashed processes of this host, taken without waiting them out."""
        by_owner: dict[str, list[str]] = {}
        for account_id, holder in repository.holders(connection, account_ids, now).items():
            if holder != self.owner and is_dead_here(holder):
                by_owner.setdefault(holder, []).append(account_id)
        taken: dict[str, int] = {}
        for dead, accounts in sorted(by_owner.items()):
            room = limit - len(taken)
            if room <= 0:
                break
            got = repository.take_over(
                connection, sorted(accounts)[:room], dead, self.owner, expires
            )
            if got:
                log.info("lease.taken_over", extra={"from": dead, "accounts": len(got)})
            taken.update(got)
        return taken

    def held_counts(self) -> dict[str, int]:
        """Leases this process holds: syncing under them now, and claimed (queued)."""
        with self._lock:
            syncing = sum(1 for lease in self._leases.values() if lease.held)
            return {"syncing": syncing, "claimed": len(self._leases) - syncing}

    def claimed(self) -> list[str]:
        with self._lock:
            return sorted(a for a, lease in self._leases.items() if not lease.held)

    @contextmanager
    def hold(self, account_id: str, *, wait: float = 0.0) -> Iterator[int]:
        """Sync ``account_id`` under its lease (yields the generation); raises
        :class:`AccountBusy` if it stays held elsewhere for ``wait`` seconds."""
        me = threading.get_ident()
        with self._lock:
            if self._holding.get(account_id) == me:  # re-entered (a repair that re-syncs)
                lease = self._leases.get(account_id)
                nested = lease.generation if lease is not None else None
            else:
                nested = None
                local = self._local.setdefault(account_id, threading.Lock())
        if nested is not None:
            yield nested
            return
        self.start()  # any process holding a lease keeps it alive (API replicas included)
        deadline = self._monotonic() + wait
        if not local.acquire(timeout=max(0.0, wait)):
            raise AccountBusy(account_id, None)
        try:
            generation = self._take(account_id, deadline)
            with self._lock:
                self._holding[account_id] = me
            try:
                yield generation
            finally:
                with self._lock:
                    self._holding.pop(account_id, None)
                self.release([account_id])
        finally:
            local.release()

    def _take(self, account_id: str, deadline: float) -> int:
        delay = 0.05
        while True:
            now, expires = self._expiry()
            started = self._monotonic()
            with self.database.transaction() as connection:
                generation = repository.take_account(
                    connection, account_id, self.owner, now, expires
                )
                holder = None
                if generation is None:
                    holder, _ = repository.lease_holder(connection, account_id)
                    if holder is not None and is_dead_here(holder):
                        taken = repository.take_over(
                            connection, [account_id], holder, self.owner, expires
                        )
                        generation = taken.get(account_id)
            if generation is not None:
                with self._lock:
                    self._leases[account_id] = _Lease(generation, started, held=True)
                return generation
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                raise AccountBusy(account_id, holder)
            self._sleep(min(delay, remaining))
            delay = min(delay * 2, 1.0)

    def release(self, account_ids: Sequence[str]) -> None:
        with self._lock:
            mine = [a for a in account_ids if self._leases.pop(a, None) is not None]
        if mine:
            with self.database.transaction() as connection:
                repository.release_accounts(connection, mine, self.owner)

    def release_all(self) -> None:
        """Graceful shutdown: give back the leases claimed but not started, and the job leases.
        A lease a sync still runs under stays until that sync ends (its hold gives it back)."""
        with self._lock:
            accounts = [a for a, lease in self._leases.items() if not lease.held]
            for account_id in accounts:
                del self._leases[account_id]
            jobs = list(self._jobs)
            self._jobs.clear()
        with self.database.transaction() as connection:
            repository.release_accounts(connection, accounts, self.owner)
            for job in jobs:
                repository.release_job(connection, job, self.owner)

    def check(self, account_id: str) -> None:
        """Before a Stripe call for ``account_id``: raises :class:`LeaseLost` if this process
        can no longer trust its lease; renews it inline when a third of it has passed."""
        with self._lock:
            lease = self._leases.get(account_id)
            holding = account_id in self._holding
        if lease is None:
            if holding:  # the entry went while a sync still runs under it
                raise LeaseLost(f"the lease on account {account_id} is no longer held")
            return  # not syncing under a lease (a tool outside the scheduler's paths)
        now = self._monotonic()
        if not lease.lost and now - lease.renewed_at > self.ttl / 3:
            try:
                self.renew([account_id])
            except Exception:  # the database is away: the lease we had still counts, until
                log.exception("lease.renew.failed", extra={"account": account_id})
        if lease.lost or self._monotonic() - lease.renewed_at >= self.ttl:
            raise LeaseLost(
                f"the lease on account {account_id} ran out or was taken over; "
                "stopping before the next Stripe call"
            )

    # --- keeping leases alive ------------------------------------------------------------

    def renew(self, account_ids: Sequence[str] | None = None) -> set[str]:
        """Push the expiry of our leases (all, or ``account_ids``); returns those lost."""
        with self._lock:
            ids = list(self._leases) if account_ids is None else list(account_ids)
            # The leases as they are now: one released (a sync ended) or claimed anew while
            # the renewal runs is not this renewal's to judge.
            asked = {a: self._leases.get(a) for a in ids}
        if not ids:
            return set()
        _, expires = self._expiry()
        started = self._monotonic()
        with self.database.transaction() as connection:
            kept = repository.renew_accounts(connection, ids, self.owner, expires)
        lost: set[str] = set()
        with self._lock:
            for account_id in ids:
                lease = self._leases.get(account_id)
                if lease is None or lease is not asked[account_id]:
                    continue  # given back (or claimed again) meanwhile: nothing was lost
                if account_id in kept:
                    lease.renewed_at = started
                    continue
                lease.lost = True
                lost.add(account_id)
                if not lease.held:  # claimed, not started: nothing to stop, just forget
                    del self._leases[account_id]
        for account_id in sorted(lost):
            log.warning("lease.lost", extra={"account": account_id, "owner": self.owner})
        return lost

    def lead(self, job: str = SCHEDULER_JOB) -> bool:
        """Take or renew the lease on a singleton job; True while this process runs it."""
        now, expires = self._expiry()
        started = self._monotonic()
        with self.database.transaction() as connection:
            ours = repository.take_job(connection, job, self.owner, now, expires)
            if not ours:
                # A process of this host that crashed (its pid is gone) cannot renew: take the
                # job now rather than leave the webhook inbox and the lifecycle waiting out its
                # lease — as claims do with its accounts.
                holder = repository.job_holder(connection, job)
                if holder is not None and holder != self.owner and is_dead_here(holder):
                    ours = repository.take_over_job(connection, job, holder, self.owner, expires)
                    if ours:
                        log.info("lease.job_taken_over", extra={"job": job, "from": holder})
        with self._lock:
            if ours:
                self._jobs[job] = started
            else:
                self._jobs.pop(job, None)
        return ours

    def leading(self, job: str = SCHEDULER_JOB) -> bool:
        """Still safe to act as the job's holder (renewed within the lease time)."""
        with self._lock:
            renewed = self._jobs.get(job)
        return renewed is not None and self._monotonic() - renewed < self.ttl

    def heartbeat(self) -> None:
        """One round of renewals: accounts and jobs held by this process. A claim that has
        waited a whole lease time without its sync starting (every thread busy) is given back,
        so an idle worker can take it."""
        now = self._monotonic()
        with self._lock:
            lapsed = [
                a for a, lease in self._leases.items()
                if not lease.held and now - lease.claimed_at > self.ttl
            ]  # fmt: skip
        self.release(lapsed)
        self.renew()
        with self._lock:
            jobs = list(self._jobs)
        for job in jobs:
            self.lead(job)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="billsync-leases", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.heartbeat()
            except Exception:  # the database may be away: the local deadline still protects
                log.exception("lease.heartbeat.failed", extra={"owner": self.owner})

    def stop(self) -> None:
        """Stop renewing and give every lease back (after in-flight syncs have finished)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        try:
            self.release_all()
        except Exception:  # the leases will expire on their own
            log.exception("lease.release.failed", extra={"owner": self.owner})
