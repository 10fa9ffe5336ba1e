"""Sync throughput at the budget: does billsync use the Stripe budget it is given, and never more?

    .venv/bin/python -m bench.sync_throughput [--accounts 300] [--runs test-default,...]

billsync (in this process, SQLite, the real clock, its scheduler's worker threads) syncs a
backlog to the emulator (its own process, enforcing Stripe's per-mode rate limit). Each run has
two phases:

- ``first``: ``--accounts`` accounts, each with usage on 4 metrics and nothing in Stripe yet
  (per account: a customer, a draft invoice, one ``add_lines``);
- ``update``: one more event on every account's lines (per account: one ``update_lines``).

The backlog is ingested before the workers start, so the budget, not the arrival of usage, is
what bounds the pace. The emulator counts requests per wall-clock second; the figures are the
mean rate over the phase's full seconds, the busiest single second, and the 429s.

Runs:
- ``unbounded`` — the baseline: a budget far above anything reachable and no emulator limit,
  8 workers: how fast billsync and the emulator go on this machine when nothing holds them back;
- ``test-default`` — a test key with the defaults: budget 20/s, 2 workers, the emulator
  limiting at Stripe's sandbox 25/s;
- ``test-8-workers`` — the same budget with 8 workers: more threads must not mean more calls;
- ``live-default`` — a live key: budget 80/s, 8 workers, the emulator limiting at 100/s.

Writes bench/results/sync_throughput.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bench.api_calls import control
from bench.common import free_port, start_emulator, write_results
from billsync.bootstrap import build
from billsync.config import Settings
from billsync.db import migrate
from billsync.db.database import Database
from billsync.repositories import sync as sync_repository
from billsync.services.accounts import NewAccount

METRICS: list[tuple[str, str, dict[str, str]]] = [
    ("machine.shared-cpu-1x.seconds", "3600", {}),
    ("volume.gb_hours", "100", {}),
    ("bandwidth.egress.na-eu.gb", "5", {"region": "iad"}),
    ("ip.ipv4.hours", "24", {}),
]


@dataclass(frozen=True)
class Run:
    name: str
    key: str
    budget: float | None  # None: billsync's default for the key's mode
    workers: int
    emulator_rate: float  # 0: no limit


RUNS = {
    "unbounded": Run("unbounded", "sk_test_benchmarkKey0001", 100_000, 8, 0),
    "test-default": Run("test-default", "sk_test_benchmarkKey0001", None, 2, 25),
    "test-8-workers": Run("test-8-workers", "sk_test_benchmarkKey0001", None, 8, 25),
    "live-default": Run("live-default", "sk_live_benchmarkKey0001", None, 8, 100),
}


def rates(per_second: dict[str, int], started: float, ended: float) -> dict[str, Any]:
    """Mean over the full seconds inside [started, ended], and the busiest second overall."""
    counts = {int(second): n for second, n in per_second.items()}
    full = [counts.get(s, 0) for s in range(int(started) + 1, int(ended))]
    return {
        "mean_calls_per_second": round(sum(full) / len(full), 2) if full else None,
        "busiest_second": max(counts.values(), default=0),
        "full_seconds": len(full),
    }


def phase(billsync: Any, port: int, name: str, timeout: float) -> dict[str, Any]:
    """Wait until no account needs a sync; the emulator's counts for that span."""
    control(port, "DELETE", "stats")
    started = time.time()
    billsync.sync.scheduler.tick()  # enqueue every due account now rather than at the next tick
    while True:
        with billsync.database.read() as connection:
            left = len(sync_repository.accounts_needing_sync(connection))
        if left == 0:
            break
        if time.time() - started > timeout:
            raise RuntimeError(f"{name}: {left} accounts still behind after {timeout} s")
        time.sleep(0.05)
    ended = time.time()
    stats = control(port, "GET", "stats?per_second=1")
    return {
        "phase": name,
        "seconds": round(ended - started, 2),
        "stripe_calls": stats["total"],
        "calls_per_second": round(stats["total"] / (ended - started), 2),
        **rates(stats["per_second"], started, ended),
        "rate_limited": stats["rate_limited"],
        "by_endpoint": stats["by_endpoint"],
    }


def measure(run: Run, accounts: int) -> dict[str, Any]:
    port = free_port()
    emulator = start_emulator(port, run.emulator_rate)
    try:
        if run.key.startswith("sk_live_"):
            control(port, "POST", "config", {"rate_limit_live": run.emulator_rate})
        with tempfile.TemporaryDirectory() as directory:
            database = Database(f"sqlite:///{directory}/bench.db", sqlite_synchronous="NORMAL")
            migrate.upgrade(database)
            settings = Settings(
                data_dir=directory,
                api_token="bench-token-0123456789",  # noqa: S106 - a local throwaway
                stripe_api_key=run.key,
                stripe_api_base=f"http://127.0.0.1:{port}",
                stripe_rate=run.budget,
                sync_policy="threshold",
                sync_threshold=1,
                sync_workers=run.workers,
            )
            billsync = build(settings, database=database)
            assert billsync.sync is not None
            budget = settings.stripe_calls_per_second()
            with database.transaction() as connection:
                for n in range(accounts):
                    billsync.accounts.create(connection, NewAccount(f"acct-{n:04d}", "usd"))

            def usage(round_: int) -> None:
                now = datetime.now(UTC).isoformat()
                events = [
                    {"id": f"r{round_}-{n}-{metric}", "account": f"acct-{n:04d}",
                     "metric": metric, "quantity": quantity, "timestamp": now,
                     "dimensions": dimensions}
                    for n in range(accounts)
                    for metric, quantity, dimensions in METRICS
                ]  # fmt: skip
                report = billsync.ingest.ingest(events)
                if report.accepted != len(events):
                    raise RuntimeError(f"{len(events) - report.accepted} events not accepted")

            usage(0)
            scheduler = billsync.sync.scheduler
            scheduler.start(workers=run.workers, tick_seconds=0.5)
            timeout = 60 + 10 * accounts * 4 / min(budget, 1000)
            phases = [phase(billsync, port, "first", timeout)]
            usage(1)
            phases.append(phase(billsync, port, "update", timeout))
            billsync.close()
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
    for row in phases:
        mean = row["mean_calls_per_second"]
        row["mean_over_budget"] = round(mean / budget, 3) if mean is not None else None
        row["busiest_second_over_budget"] = round(row["busiest_second"] / budget, 3)
    return {
        "run": run.name,
        "key_mode": "live" if run.key.startswith("sk_live_") else "test",
        "budget_calls_per_second": budget,
        "workers": run.workers,
        "emulator_limit": run.emulator_rate or None,
        "accounts": accounts,
        "phases": phases,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accounts", type=int, default=300)
    parser.add_argument("--runs", default=",".join(RUNS))
    args = parser.parse_args()
    results = []
    for name in args.runs.split(","):
        result = measure(RUNS[name], args.accounts)
        results.append(result)
        for row in result["phases"]:
            budget = result["budget_calls_per_second"]
            print(
                f"{name:>15} {row['phase']:>6}: {row['stripe_calls']:>5} calls in "
                f"{row['seconds']:>6} s  mean {row['mean_calls_per_second']}/s "
                f"(budget {budget:g}/s, ×{row['mean_over_budget']})  busiest second "
                f"{row['busiest_second']}  429s {row['rate_limited']}",
                flush=True,
            )
    path = write_results(
        "sync_throughput",
        {"benchmark": "sync_throughput", "machine": {"cpus": os.cpu_count()}, "runs": results},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
