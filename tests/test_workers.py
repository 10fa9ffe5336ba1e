"""Several ``billsync worker`` processes on one PostgreSQL ledger, against the emulator.

Real processes, real leases, a real kill -9: the accounts are split between the workers, no
account is ever synced by two of them at once (each run's span under its lease is logged, and
the spans of one account never overlap), a killed worker's accounts are picked up by the
others (at once here: the dead process was on this host and its pid is gone; a lease left by
another host is waited out, tests/test_leases.py), nothing is lost (``billsync verify`` finds
Stripe equal to the ledger), and all workers together stay within one Stripe budget, measured
at the emulator.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import text

from billsync.bootstrap import Billsync, build
from billsync.core.catalog import Catalog
from billsync.db.database import Database
from billsync.repositories import sync as sync_repository
from billsync.services.verify import Verifier
from tests.conftest import TABLES, emulator_settings
from tests.factories import create_account, event
from tests.stripe_peer import EMULATOR_KEY, RunningEmulator
from tests.waiting import wait_until

LEASE_SECONDS = 5  # short, so a killed worker's accounts come back within the test


@dataclass
class Workers:
    billsync: Billsync
    env: dict[str, str]
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]]

    def start(self, name: str) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "billsync", "worker"], env=self.env, stdout=log, stderr=log
        )

    def running(self) -> int:
        """How many workers said they run (each logs its start line once it is up)."""
        return sum(
            1 for path in self.logs.glob("*.log") if b"billsync worker:" in path.read_bytes()
        )

    def runs(self) -> list[dict[str, Any]]:
        """Every ``sync.account.run`` line the workers logged (one per sync under a lease)."""
        found = []
        for path in sorted(self.logs.glob("*.log")):
            for line in path.read_bytes().splitlines():
                if line.startswith(b"{") and b'"sync.account.run"' in line:
                    record = orjson.loads(line)
                    record["worker"] = path.stem
                    found.append(record)
        return found

    def tails(self) -> str:
        return "\n".join(
            f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
            for p in sorted(self.logs.glob("*.log"))
        )


@pytest.fixture
def workers(
    postgres_schema_url: str,
    running_emulator: RunningEmulator,
    tmp_path: Path,
    example_catalog: Catalog,
) -> Iterator[Workers]:
    database = Database(postgres_schema_url)
    with database.engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    settings = emulator_settings(tmp_path / "var", running_emulator)
    billsync = build(settings, database=database, catalog=example_catalog)
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {
        **os.environ,
        "BILLSYNC_DATA_DIR": str(tmp_path / "var"),
        "BILLSYNC_DATABASE_URL": postgres_schema_url,
        "BILLSYNC_STRIPE_API_KEY": EMULATOR_KEY,
        "BILLSYNC_STRIPE_API_BASE": running_emulator.url,
        "BILLSYNC_STRIPE_MAX_RETRIES": "0",
        "BILLSYNC_SYNC_POLICY": "interval",
        "BILLSYNC_SYNC_INTERVAL_SECONDS": "1",
        "BILLSYNC_SCHEDULER_TICK_SECONDS": "0.2",
        "BILLSYNC_SYNC_WORKERS": "3",
        "BILLSYNC_LEASE_SECONDS": str(LEASE_SECONDS),
        "BILLSYNC_LOG_FORMAT": "json",
        "BILLSYNC_LOG_LEVEL": "INFO",
    }
    running = Workers(billsync, env, logs, {})
    yield running
    for process in running.processes.values():
        if process.poll() is None:
            process.kill()
            process.wait()
    billsync.close()


def ingest(billsync: Billsync, accounts: list[str], rng: random.Random, count: int) -> None:
    now = billsync.clock.now()
    report = billsync.ingest.ingest(
        [event(rng.choice(accounts), quantity=rng.randint(1, 600), at=now) for _ in range(count)]
    )
    assert report.rejected == 0


def wait_until_synced(workers: Workers) -> None:
    def synced() -> bool:
        with workers.billsync.database.read() as connection:
            return not sync_repository.accounts_needing_sync(connection)

    try:
        wait_until(synced, "every account synced", every=0.2)
    except AssertionError as error:
        pytest.fail(f"{error}\n{workers.tails()}")


def lease_owners(billsync: Billsync) -> dict[str, str]:
    with billsync.database.read() as connection:
        rows = connection.execute(
            text("SELECT account_id, lease_owner FROM account_sync WHERE lease_owner IS NOT NULL")
        ).all()
    return {row[0]: row[1] for row in rows}


def assert_no_overlap(runs: list[dict[str, Any]]) -> None:
    by_account: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for run in runs:
        by_account[run["account"]].append((run["started"], run["ended"], run["owner"]))
    for account, spans in by_account.items():
        spans.sort()
        for (_, end, owner), (start, _, other) in itertools.pairwise(spans):
            assert start >= end, f"{account}: {owner} and {other} synced it at the same time"


def test_three_workers_one_killed_nothing_lost_nothing_synced_twice_at_once(
    workers: Workers,
) -> None:
    billsync = workers.billsync
    accounts = [f"acct-{n:02}" for n in range(24)]
    for account in accounts:
        create_account(billsync, account)
    rng = random.Random(11)
    ingest(billsync, accounts, rng, 400)
    for name in ("w1", "w2", "w3"):
        workers.start(name)

    def kill_the_busiest() -> tuple[set[str], float] | None:
        """Once the workers have synced a while, kill the one holding the most leases, in the
        middle of its work; None while none holds a lease yet."""
        ingest(billsync, accounts, rng, 30)
        owners = lease_owners(billsync)
        if len(workers.runs()) < 10 or not owners:
            return None
        held: dict[str, set[str]] = defaultdict(set)
        for account, owner in owners.items():
            held[owner].add(account)
        owner, accounts_held = max(held.items(), key=lambda item: len(item[1]))
        pid = int(owner.split(":")[1])
        victim = next(p for p in workers.processes.values() if p.pid == pid)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        return accounts_held, time.time()

    victim_accounts, killed_at = wait_until(kill_the_busiest, "a worker holds leases", every=0.25)
    for _ in range(8):  # usage keeps arriving while the survivors take over
        ingest(billsync, accounts, rng, 30)
        time.sleep(0.25)

    wait_until_synced(workers)
    survivors = [p for p in workers.processes.values() if p.returncode is None]
    assert len(survivors) == 2
    for process in survivors:  # graceful: finish the syncs in flight, give the leases back
        process.send_signal(signal.SIGTERM)
    for process in survivors:
        assert process.wait(timeout=30) == 0, workers.tails()
    assert lease_owners(billsync) == {}, "a stopped worker kept a lease"

    runs = workers.runs()
    assert_no_overlap(runs)
    by_worker: dict[str, int] = defaultdict(int)
    for run in runs:
        by_worker[run["worker"]] += 1
    # The work was shared: the victim held leases when it died, both survivors synced.
    assert victim_accounts
    survivor_names = {name for name, p in workers.processes.items() if p.returncode == 0}
    assert survivor_names <= set(by_worker), f"the work was not shared: {dict(by_worker)}"
    # The dead worker's accounts were picked up by the others after its leases expired.
    taken_over = {
        run["account"]
        for run in runs
        if run["account"] in victim_accounts and run["started"] > killed_at
    }
    assert taken_over == victim_accounts

    report = Verifier(billsync.database, billsync.sync.gateway if billsync.sync else None).verify()
    assert report.ok, report
    assert report.pending_lines == 0


def test_workers_together_stay_within_one_stripe_budget(
    workers: Workers, running_emulator: RunningEmulator
) -> None:
    budget = 12
    workers.env["BILLSYNC_STRIPE_RATE"] = str(budget)
    billsync = workers.billsync
    accounts = [f"acct-{n:02}" for n in range(40)]
    for account in accounts:
        create_account(billsync, account)
    running_emulator.control("DELETE", "stats")
    for name in ("w1", "w2", "w3"):
        workers.start(name)
    # The backlog appears once all three run, so that all three share it (a worker that
    # started late on a loaded machine would otherwise find it claimed).
    wait_until(lambda: workers.running() == 3, "three workers running", every=0.1)
    ingest(billsync, accounts, random.Random(5), 200)
    wait_until_synced(workers)
    stats = running_emulator.control("GET", "stats?per_second=1")
    seconds = {int(k): v for k, v in stats["per_second"].items()}
    assert stats["rate_limited"] == 0
    # Never above the budget: over the full seconds from the first call to the last, and in
    # any single second (GCRA's bound for a one-second window is budget + 1: calls at exactly
    # t and t + 1 s; a millisecond of network jitter can put both in one second at the
    # emulator, never more).
    # Never above the budget. In any single second: GCRA's bound for a one-second window is
    # budget + 1 (calls at exactly t and t + 1 s). Over the whole run: the calls fit in the
    # budget times the seconds they span, plus one second's slack for arrival jitter. (That the
    # workers also *reach* the budget is a figure of speed: bench/workers.py measures it.)
    assert max(seconds.values()) <= budget + 1, seconds
    span = max(seconds) - min(seconds) + 1
    assert sum(seconds.values()) <= budget * (span + 1), seconds
    by_worker = {run["worker"] for run in workers.runs()}
    assert len(by_worker) == 3  # all three were calling Stripe, sharing the one budget
