"""Account and job leases on both stores: exclusive, expiring, renewed, given back."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import pytest

from billsync.bootstrap import Billsync
from billsync.db.database import Database
from billsync.repositories import leases as repository
from billsync.sync.leases import SCHEDULER_JOB, AccountBusy, LeaseLost, Leases
from tests.factories import create_account


class Wall:
    """The database-side time of leases, moved by hand; its monotonic twin moves with it."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
        self.seconds = 1000.0

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.seconds += seconds

    def wall(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.seconds


@pytest.fixture
def accounts(billsync: Billsync) -> list[str]:
    ids = [f"acct-{n}" for n in range(6)]
    for account_id in ids:
        create_account(billsync, account_id)
    return ids


@pytest.fixture
def time() -> Wall:
    return Wall()


def worker(database: Database, time: Wall, name: str, ttl: float = 30.0) -> Leases:
    return Leases(
        database, ttl=ttl, owner=name, wall=time.wall, monotonic=time.monotonic,
        sleep=time.advance,
    )  # fmt: skip


def holders(database: Database, ids: list[str]) -> dict[str, str | None]:
    with database.read() as connection:
        return {a: repository.lease_holder(connection, a)[0] for a in ids}


def test_claims_split_due_accounts_between_workers(
    database: Database, accounts: list[str], time: Wall
) -> None:
    a, b = worker(database, time, "a"), worker(database, time, "b")
    first = a.claim(accounts, limit=4)
    second = b.claim(accounts, limit=4)
    assert len(first) == 4
    assert sorted(second) == sorted(set(accounts) - set(first))
    assert set(first).isdisjoint(second)
    assert b.claim(accounts, limit=10) == []  # nothing left to take
    owners = holders(database, accounts)
    assert {owners[x] for x in first} == {"a"}
    assert {owners[x] for x in second} == {"b"}


def test_a_lease_given_back_while_the_renewal_runs_is_not_reported_lost(
    database: Database, accounts: list[str], time: Wall, caplog: pytest.LogCaptureFixture
) -> None:
    """The renewal takes its list of leases, then renews them in the database. A sync that
    ends in between gives its lease back; the renewal then finds that row no longer ours —
    which is not a lease lost (the warning came a few times per 10 minutes under load and in
    the demo, though no sync failed). A lease really taken away still is."""
    mine, other = worker(database, time, "a"), worker(database, time, "b")
    claimed = mine.claim(accounts, limit=3)
    expiry = mine._expiry

    def sync_ends_meanwhile() -> tuple[datetime, datetime]:
        mine.release([claimed[0]])  # the sync of the first account ended and gave it back
        return expiry()

    mine._expiry = sync_ends_meanwhile  # type: ignore[method-assign]
    with caplog.at_level("WARNING", logger="billsync.leases"):
        assert mine.renew() == set()
    assert "lease.lost" not in caplog.text
    mine._expiry = expiry  # type: ignore[method-assign]
    time.advance(60)  # past the lease time: another worker takes the second account
    assert other.claim([claimed[1]], limit=1) == [claimed[1]]
    with caplog.at_level("WARNING", logger="billsync.leases"):
        assert mine.renew() == {claimed[1]}
    assert "lease.lost" in caplog.text


def test_a_held_account_is_busy_for_others_until_released(
    database: Database, accounts: list[str], time: Wall
) -> None:
    a, b = worker(database, time, "a"), worker(database, time, "b")
    with a.hold(accounts[0]):
        with pytest.raises(AccountBusy) as busy, b.hold(accounts[0]):
            pass
        assert busy.value.holder == "a"
    with b.hold(accounts[0]) as generation:
        assert holders(database, accounts[:1]) == {accounts[0]: "b"}
        assert generation == 2  # a took it once, b once
    assert holders(database, accounts[:1]) == {accounts[0]: None}


def test_waiting_for_a_lease_gives_up_after_the_wait(
    database: Database, accounts: list[str], time: Wall
) -> None:
    a, b = worker(database, time, "a"), worker(database, time, "b")
    with a.hold(accounts[0]):
        started = time.seconds
        with pytest.raises(AccountBusy), b.hold(accounts[0], wait=3.0):
            pass
        assert 3.0 <= time.seconds - started < 4.1  # it slept (the fake clock) and retried


def test_a_dead_workers_lease_expires_and_is_taken_over(
    database: Database, accounts: list[str], time: Wall
) -> None:
    dead, alive = worker(database, time, "dead"), worker(database, time, "alive")
    assert dead.claim(accounts[:2], limit=2) == sorted(accounts[:2])
    assert alive.claim(accounts[:2], limit=2) == []
    time.advance(29)
    assert alive.claim(accounts[:2], limit=2) == []  # not expired yet
    time.advance(2)
    assert alive.claim(accounts[:2], limit=2) == sorted(accounts[:2])
    # The stalled worker wakes up: renewal tells it the leases are gone.
    assert dead.renew() == set(accounts[:2])
    assert dead.claimed() == []


def test_the_holder_stops_before_calling_stripe_once_it_cannot_trust_the_lease(
    database: Database, accounts: list[str], time: Wall
) -> None:
    a = worker(database, time, "a", ttl=30)
    with a.hold(accounts[0]):
        time.advance(5)
        a.check(accounts[0])  # fresh: fine, no renewal needed
        time.advance(10)
        a.check(accounts[0])  # a third passed: renewed inline
        with database.read() as connection:
            _, expires = repository.lease_holder(connection, accounts[0])
        assert expires == time.now + timedelta(seconds=30)
        # Another process took it over (say, after the database was away for a while).
        with database.transaction() as connection:
            repository.release_accounts(connection, [accounts[0]], "a")
        other = worker(database, time, "b")
        assert other.claim(accounts[:1], limit=1) == accounts[:1]
        time.advance(11)
        with pytest.raises(LeaseLost):
            a.check(accounts[0])


def test_a_lease_not_renewed_in_time_is_not_trusted_even_without_the_database(
    database: Database, accounts: list[str], time: Wall
) -> None:
    a = worker(database, time, "a", ttl=30)
    with a.hold(accounts[0]):
        original = a.renew

        def database_away(account_ids: object = None) -> set[str]:
            raise ConnectionError("database unreachable")

        a.renew = database_away  # type: ignore[method-assign]
        time.advance(15)
        a.check(accounts[0])  # renewal failed, but the lease it had still has 15 s
        time.advance(16)
        with pytest.raises(LeaseLost):
            a.check(accounts[0])
        a.renew = original  # type: ignore[method-assign]


def test_two_threads_of_one_process_never_sync_one_account_at_once(
    database: Database, accounts: list[str]
) -> None:
    """Both threads share the process's owner name, so the database lease alone would let both
    in: the per-account lock must keep them apart."""
    leases = Leases(database, ttl=30, owner="p")
    inside = 0
    most = 0
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run() -> None:
        nonlocal inside, most
        try:
            for _ in range(3):
                with leases.hold(accounts[0], wait=120):
                    with lock:
                        inside += 1
                        most = max(most, inside)
                    threading.Event().wait(0.02)  # a sync takes time: others must wait it out
                    with lock:
                        inside -= 1
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    leases.stop()
    assert errors == []
    assert most == 1


def test_a_lease_is_reentrant_for_its_thread_only(
    database: Database, accounts: list[str], time: Wall
) -> None:
    """A repair holds the account and re-syncs it in the same thread: no deadlock."""
    a = worker(database, time, "a")
    with a.hold(accounts[0]) as outer, a.hold(accounts[0]) as inner:
        assert inner == outer
    assert holders(database, accounts[:1]) == {accounts[0]: None}
    a.stop()


def test_shutdown_keeps_the_lease_a_sync_still_runs_under(
    database: Database, accounts: list[str], time: Wall
) -> None:
    a, b = worker(database, time, "a"), worker(database, time, "b")
    assert a.claim(accounts[1:3], limit=2) == accounts[1:3]
    with a.hold(accounts[0]):
        a.stop()  # graceful stop while a sync is in flight (it outlived the join)
        assert b.claim(accounts[:3], limit=3) == accounts[1:3]  # the queued ones came back
        a.check(accounts[0])  # the running one is still ours
        assert holders(database, accounts[:1]) == {accounts[0]: "a"}
    assert holders(database, accounts[:1]) == {accounts[0]: None}


def test_a_claim_not_started_within_a_lease_time_is_given_back(
    database: Database, accounts: list[str], time: Wall
) -> None:
    busy = worker(database, time, "busy")
    assert busy.claim(accounts[:2], limit=2) == accounts[:2]
    time.advance(20)
    busy.heartbeat()  # renewed: still fresh
    assert worker(database, time, "idle").claim(accounts[:2], limit=2) == []
    time.advance(11)
    busy.heartbeat()  # claimed 31 s ago and never started: released for an idle worker
    assert busy.claimed() == []
    assert worker(database, time, "idle").claim(accounts[:2], limit=2) == accounts[:2]


def test_one_leader_runs_the_singleton_jobs_and_hands_over_on_stop(
    database: Database, accounts: list[str], time: Wall
) -> None:
    a, b = worker(database, time, "a"), worker(database, time, "b")
    assert a.lead(SCHEDULER_JOB)
    assert not b.lead(SCHEDULER_JOB)
    assert a.lead(SCHEDULER_JOB)  # renewal
    a.claim(accounts, limit=3)
    a.stop()  # graceful: every lease back
    assert set(holders(database, accounts).values()) == {None}
    assert b.lead(SCHEDULER_JOB)
    time.advance(31)
    assert not b.leading(SCHEDULER_JOB)  # not renewed within the lease: not trusted


def test_a_crashed_leader_is_replaced_after_the_lease(
    database: Database, accounts: list[str], time: Wall
) -> None:
    a, b = worker(database, time, "a"), worker(database, time, "b")
    assert a.lead()
    time.advance(29)
    assert not b.lead()
    time.advance(2)
    assert b.lead()
    assert not a.lead()


def test_leases_of_a_crashed_process_on_this_host_are_taken_at_once(
    database: Database, accounts: list[str], time: Wall
) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)  # fmt: skip
    host, dead_pid = socket.gethostname(), int(finished.stdout)
    namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    dead = f"{host}:{dead_pid}:{namespace}:0dead0"
    alive = f"{host}:{os.getppid()}:{namespace}:0a11e0"  # a live process, not billsync's
    elsewhere = f"another-host:{dead_pid}:{namespace}:0ther0"
    # Another container with the same host name: its pids mean nothing here.
    other_namespace = f"{host}:{os.getpid()}:1:0c0n70"
    owners = (dead, alive, elsewhere, other_namespace)
    for name, account in zip(owners, accounts, strict=False):
        assert worker(database, time, name).claim([account], limit=1) == [account]
    restarted = Leases(database, ttl=30, wall=time.wall, monotonic=time.monotonic)
    assert restarted.claim(accounts[:4], limit=4) == [accounts[0]]  # no waiting out the lease
    with restarted.hold(accounts[0]) as generation:
        assert generation == 2
    with pytest.raises(AccountBusy), restarted.hold(accounts[1]):
        pass
    assert holders(database, accounts[1:4]) == {
        accounts[1]: alive, accounts[2]: elsewhere, accounts[3]: other_namespace,
    }  # fmt: skip
    restarted.stop()


def test_the_singleton_job_of_a_crashed_process_on_this_host_is_taken_at_once(
    database: Database, time: Wall
) -> None:
    """A worker killed and restarted by its service manager leads again at once: the webhook
    inbox and the lifecycle do not wait out the dead process's lease. A live holder, or one on
    another host, keeps it until the lease runs out."""
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)  # fmt: skip
    host, dead_pid = socket.gethostname(), int(finished.stdout)
    namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    restarted = Leases(database, ttl=30, wall=time.wall, monotonic=time.monotonic)
    for holder in (
        f"{host}:{os.getppid()}:{namespace}:0a11e0",  # alive
        f"another-host:{dead_pid}:{namespace}:0ther0",  # its pids mean nothing here
    ):
        assert worker(database, time, holder).lead(SCHEDULER_JOB)
        assert not restarted.lead(SCHEDULER_JOB)
        time.advance(31)  # that holder's lease runs out
    dead = worker(database, time, f"{host}:{dead_pid}:{namespace}:0dead0")
    assert dead.lead(SCHEDULER_JOB)
    assert restarted.lead(SCHEDULER_JOB)  # no waiting out the lease
    assert restarted.leading(SCHEDULER_JOB)
    with database.read() as connection:
        assert repository.job_holder(connection, SCHEDULER_JOB) == restarted.owner
    restarted.stop()
