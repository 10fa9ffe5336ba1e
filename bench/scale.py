"""The scheduler at the platform's scale, on PostgreSQL.

    .venv/bin/python -m bench.scale [--accounts 1000,10000,100000] [--limit 200] [--rounds 20]
                                    [--load-accounts 1000,10000] [--windows 1.0]

Part one, the tick's cost against the number of accounts. For each N of ``--accounts``, a
migrated schema gets N accounts, each with an open November period and three lines out of step
with Stripe (marked behind, as ingest marks them), synced at spread-out moments of the last
hour. Measured: ``Scheduler.due_accounts(limit)`` — what a tick reads, on the interval policy
and on the threshold policy as the platform's default — and a whole
``Scheduler.tick()`` (lifecycle, due read, claiming its share), in mid-month and at the month's
end (each tick moving up to 500 periods on), mean and p99 over ``--rounds``; baseline in the
same run: the full scan of the accounts out of step (``accounts_needing_sync``), which the tick
ran before, plus its per-account reads. Target: a tick ≤ 100 ms at 100,000 accounts.

Part two, for each N of ``--load-accounts``: usage arriving all the time while ``billsync
serve`` syncs it to an emulator with Stripe's live limits and 200 ms latency — freshness,
on-demand latency under saturation, calls per account-window, month-end close against its lower
bound, 429s (see :mod:`bench.scale_load`; a window is N/25 s of real time, so 100,000 accounts
take hours: give that size only when there is the time).

Writes bench/results/scale.json. PostgreSQL at BILLSYNC_TEST_DATABASE_URL.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text

from bench import scale_load
from bench.common import postgres_schema, write_results
from billsync.bootstrap import build
from billsync.catalog_file import load_catalog
from billsync.clock import ManualClock
from billsync.config import EXAMPLE_CATALOG, Settings
from billsync.core.policy import Policy, SyncPolicy
from billsync.db import migrate
from billsync.db.database import Database
from billsync.repositories import sync as repository
from billsync.workers.scheduler import Scheduler

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
MONTH_END_TICK = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)  # grace (1 h) over


def populate(database: Database, accounts: int) -> None:
    """N accounts behind, in bulk (SQL), as ingest would have left them."""
    with database.transaction() as connection:
        scale_load.insert_accounts(connection, accounts, NOW)
        connection.execute(
            text(
                "INSERT INTO account_sync (account_id, consecutive_failures, stripe_calls,"
                " updated_at, lease_generation, behind, last_synced_at)"
                " SELECT id, 0, 0, :now, 0, true,"
                " :now - make_interval(secs => (hashtext(id) & 4095) * 3600.0 / 4096)"
                " FROM accounts"
            ),
            {"now": NOW},
        )
        connection.execute(
            text(
                'INSERT INTO billing_periods (account_id, start, "end", status,'
                " status_changed_at, created_at, updated_at)"
                " SELECT id, DATE '2026-11-01', DATE '2026-12-01', 'open', :now, :now, :now"
                " FROM accounts"
            ),
            {"now": NOW},
        )
        for key in ("machine", "volume", "egress"):
            connection.execute(
                text(
                    "INSERT INTO lines (account_id, period_start, line_key, metric, grouping,"
                    " currency, quantity, amount, version, event_count, synced_version,"
                    " created_at, updated_at)"
                    " SELECT id, DATE '2026-11-01', :key, :key, '{}', 'usd', '10', 100, 3, 3, 2,"
                    " :now, :now FROM accounts"
                ),
                {"key": key, "now": NOW},
            )
        connection.execute(text("ANALYZE"))


def timed(call: Callable[[], Any], rounds: int, *, warm: bool = True) -> dict[str, float]:
    if warm:
        call()  # warm the caches once
    seconds = []
    for _ in range(rounds):
        began = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - began)
    seconds.sort()
    return {
        "mean_ms": round(statistics.mean(seconds) * 1000, 2),
        "p99_ms": round(seconds[min(len(seconds) - 1, int(0.99 * len(seconds)))] * 1000, 2),
    }


def whole_ticks(scheduler: Scheduler, rounds: int) -> dict[str, float]:
    """``Scheduler.tick()`` as a worker runs it (leading: lifecycle, then due read and claim),
    each round from nothing claimed (``stop`` gives the claims back, outside the timing)."""
    scheduler.tick()  # the first runs the periodic jobs (backstop, sweep): not every tick's
    scheduler.stop()
    seconds = []
    for _ in range(rounds):
        began = time.perf_counter()
        scheduler.tick()
        seconds.append(time.perf_counter() - began)
        scheduler.stop()
    seconds.sort()
    return {
        "mean_ms": round(statistics.mean(seconds) * 1000, 2),
        "p99_ms": round(seconds[min(len(seconds) - 1, int(0.99 * len(seconds)))] * 1000, 2),
    }


def run(url: str, accounts: int, limit: int, rounds: int) -> dict[str, Any]:
    with postgres_schema(url) as scoped:
        database = Database(scoped)
        migrate.upgrade(database)
        populate(database, accounts)
        # A key, for the scheduler to exist; nothing listens at its address (the first tick's
        # periodic sweep fails at once, quietly: part one measures the database's side).
        settings = Settings(
            stripe_api_key="sk_test_benchScale000000001", stripe_api_base="http://127.0.0.1:9"
        )
        logging.getLogger("billsync").setLevel(logging.CRITICAL)
        clock = ManualClock(NOW)
        billsync = build(
            settings,
            clock=clock,
            database=database,
            catalog=load_catalog(EXAMPLE_CATALOG),
        )
        assert billsync.sync is not None
        scheduler = billsync.sync.scheduler
        due = scheduler.due_accounts(limit)
        tick = timed(lambda: scheduler.due_accounts(limit), rounds)
        # The threshold policy as the platform's default: the accounts behind weighed by their
        # unsynced amounts (300 minor units each here) in one grouped statement.
        interval_policy = scheduler.policy
        scheduler.policy = SyncPolicy(Policy.THRESHOLD, threshold=300)
        threshold_due = scheduler.due_accounts(limit)
        assert len(threshold_due) == min(limit, accounts), len(threshold_due)
        threshold_tick = timed(lambda: scheduler.due_accounts(limit), rounds)
        scheduler.policy = interval_policy

        def full_scan() -> None:
            with database.read() as connection:
                for account_id in repository.accounts_needing_sync(connection):
                    repository.sync_row(connection, account_id)

        # The baseline takes about a minute at 100,000 accounts: fewer rounds of it.
        baseline = timed(full_scan, max(1, min(rounds, 20_000 // accounts)), warm=accounts < 50_000)
        mid_month = whole_ticks(scheduler, rounds)
        clock.set(MONTH_END_TICK)
        month_end = whole_ticks(scheduler, min(rounds, 5))
        billsync.close()
        database.dispose()
    return {
        "accounts": accounts,
        "limit": limit,
        "due_returned": len(due),
        "tick_read": tick,
        "tick_read_threshold": threshold_tick,
        "tick_mid_month": mid_month,
        "tick_month_end": month_end,
        "baseline_full_scan": baseline,
        "speed_up": round(baseline["mean_ms"] / max(tick["mean_ms"], 1e-6), 1),
        "window": str(timedelta(minutes=15)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accounts", default="1000,10000,100000")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--load-accounts", default="1000,10000", help="'' for none")
    parser.add_argument("--windows", type=float, default=1.0)
    args = parser.parse_args()
    url = os.environ.get("BILLSYNC_TEST_DATABASE_URL")
    if not url:
        sys.exit("bench.scale needs PostgreSQL: set BILLSYNC_TEST_DATABASE_URL")
    rows = []
    for accounts in (int(n) for n in args.accounts.split(",") if n):
        row = run(url, accounts, args.limit, args.rounds)
        rows.append(row)
        print(
            f"{accounts:>7,} accounts behind: due_accounts(limit={args.limit}) "
            f"mean {row['tick_read']['mean_ms']} ms, p99 {row['tick_read']['p99_ms']} ms "
            f"(threshold default: {row['tick_read_threshold']['mean_ms']} ms); "
            f"whole tick mid-month {row['tick_mid_month']['mean_ms']} ms "
            f"(p99 {row['tick_mid_month']['p99_ms']}), month end "
            f"{row['tick_month_end']['mean_ms']} ms (p99 {row['tick_month_end']['p99_ms']}); "
            f"baseline full scan mean {row['baseline_full_scan']['mean_ms']} ms "
            f"(×{row['speed_up']})",
            flush=True,
        )
    loads = []
    for accounts in (int(n) for n in args.load_accounts.split(",") if n):
        with postgres_schema(url) as scoped:
            load = scale_load.run(scoped, accounts, windows=args.windows)
        loads.append(load)
        print(
            f"{accounts:>7,} accounts under load: effective interval "
            f"{load['effective_interval_s']} s; freshness p50 {load['freshness']['p50_s']} s, "
            f"p99 {load['freshness']['p99_s']} s (×{load['freshness_p99_over_effective']}); "
            f"on-demand p99 {load['on_demand']['p99_s']} s; "
            f"{load['calls_per_account_window']} calls per account-window; close "
            f"{load['close_seconds']} s vs bound {load['close_lower_bound_s']} s "
            f"(×{load['close_over_bound']}); tick mean {load['tick']['mean_ms']} ms; "
            f"429s {load['rate_limited_429']}; failed syncs {load['failed_syncs']}",
            flush=True,
        )
    results = {"benchmark": "scale", "runs": rows, "load": loads}
    print(f"wrote {write_results('scale', results)}")


if __name__ == "__main__":
    main()
