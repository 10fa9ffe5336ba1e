"""Sync throughput with 1, 2 and 3 ``billsync worker`` processes sharing one Stripe budget.

    BILLSYNC_TEST_DATABASE_URL=postgresql+psycopg://… \\
        .venv/bin/python -m bench.workers [--accounts 300] [--budget 20] [--workers 1,2,3]

For each worker count: a fresh PostgreSQL schema, ``--accounts`` accounts with usage on four
metrics and nothing in Stripe yet (per account: a customer, a draft invoice, one
``add_lines``), then N worker processes (2 sync threads each) start together and sync the
backlog to the emulator (its own process, enforcing Stripe's sandbox limit of 25/s). The
emulator counts requests per wall-clock second. More workers must reach the budget, not pass
it: the mean over the full seconds should sit at the budget whatever N is.

The baseline, measured in the same run: 3 workers each keeping its own budget
(``BILLSYNC_STRIPE_BUDGET_SCOPE=process``), as they would without the shared one: together they
send three budgets' worth and the emulator answers 429.

Writes bench/results/workers.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.api_calls import control
from bench.common import free_port, postgres_schema, start_emulator, write_results
from bench.sync_throughput import METRICS, rates
from billsync.bootstrap import build
from billsync.config import Settings
from billsync.db import migrate
from billsync.db.database import Database
from billsync.repositories import sync as sync_repository
from billsync.services.accounts import NewAccount

KEY = "sk_test_benchmarkKey0001"
STRIPE_SANDBOX_LIMIT = 25


def seed(database_url: str, directory: str, port: int, accounts: int) -> Any:
    database = Database(database_url)
    migrate.upgrade(database)
    settings = Settings(
        data_dir=directory, database_url=database_url, stripe_api_key=KEY,
        stripe_api_base=f"http://127.0.0.1:{port}", api_token="bench-token-0123456789",  # noqa: S106
    )  # fmt: skip
    billsync = build(settings, database=database)
    with database.transaction() as connection:
        for n in range(accounts):
            billsync.accounts.create(connection, NewAccount(f"acct-{n:04d}", "usd"))
    now = datetime.now(UTC).isoformat()
    events = [
        {"id": f"e-{n}-{metric}", "account": f"acct-{n:04d}", "metric": metric,
         "quantity": quantity, "timestamp": now, "dimensions": dimensions}
        for n in range(accounts)
        for metric, quantity, dimensions in METRICS
    ]  # fmt: skip
    report = billsync.ingest.ingest(events)
    if report.accepted != len(events):
        raise RuntimeError(f"{len(events) - report.accepted} events not accepted")
    return billsync


def measure(
    base_url: str, workers: int, budget: float, accounts: int, scope: str
) -> dict[str, Any]:
    port = free_port()
    emulator = start_emulator(port, STRIPE_SANDBOX_LIMIT)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with postgres_schema(base_url) as url, tempfile.TemporaryDirectory() as directory:
            billsync = seed(url, directory, port, accounts)
            env = {
                **os.environ,
                "BILLSYNC_DATA_DIR": directory,
                "BILLSYNC_DATABASE_URL": url,
                "BILLSYNC_STRIPE_API_KEY": KEY,
                "BILLSYNC_STRIPE_API_BASE": f"http://127.0.0.1:{port}",
                "BILLSYNC_STRIPE_RATE": str(budget),
                "BILLSYNC_STRIPE_BUDGET_SCOPE": scope,
                "BILLSYNC_SYNC_POLICY": "threshold",
                "BILLSYNC_SYNC_THRESHOLD": "1",
                "BILLSYNC_SYNC_WORKERS": "2",
                "BILLSYNC_SCHEDULER_TICK_SECONDS": "0.2",
                "BILLSYNC_LOG_LEVEL": "WARNING",
            }
            log = Path(directory) / "workers.log"
            control(port, "DELETE", "stats")
            started = time.time()
            with log.open("ab") as sink:
                for _ in range(workers):
                    processes.append(
                        subprocess.Popen(
                            [sys.executable, "-m", "billsync", "worker"],
                            env=env,
                            stdout=sink,
                            stderr=sink,
                        )
                    )
            timeout = 120 + 10 * accounts * 3 / budget
            while True:
                with billsync.database.read() as connection:
                    left = len(sync_repository.accounts_needing_sync(connection))
                if left == 0:
                    break
                if time.time() - started > timeout:
                    raise RuntimeError(f"{left} accounts still behind after {timeout:.0f} s")
                time.sleep(0.1)
            ended = time.time()
            stats = control(port, "GET", "stats?per_second=1")
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=30)
            billsync.close()
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        emulator.terminate()
        emulator.wait(timeout=10)
    # The workers' start-up (imports, connections) is in the span but calls nothing: the rate
    # is taken over the full seconds from the first call to the last.
    seconds = sorted(int(s) for s in stats["per_second"])
    figures = rates(stats["per_second"], seconds[0], seconds[-1] + 1) if seconds else {}
    mean = figures.get("mean_calls_per_second")
    return {
        "workers": workers,
        "budget_scope": scope,
        "budget_calls_per_second": budget,
        "accounts": accounts,
        "seconds": round(ended - started, 2),
        "stripe_calls": stats["total"],
        **figures,
        "mean_over_budget": round(mean / budget, 3) if mean else None,
        "busiest_second_over_budget": round(figures.get("busiest_second", 0) / budget, 3),
        "rate_limited": stats["rate_limited"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accounts", type=int, default=300)
    parser.add_argument("--budget", type=float, default=20)
    parser.add_argument("--workers", default="1,2,3")
    args = parser.parse_args()
    base_url = os.environ.get("BILLSYNC_TEST_DATABASE_URL")
    if not base_url:
        sys.exit("bench.workers needs PostgreSQL: set BILLSYNC_TEST_DATABASE_URL")
    runs = [(int(n), "database") for n in args.workers.split(",")] + [(3, "process")]
    results = []
    for workers, scope in runs:
        row = measure(base_url, workers, args.budget, args.accounts, scope)
        results.append(row)
        label = "shared" if scope == "database" else "per-process (baseline)"
        print(
            f"{workers} worker(s), {label:>22} budget {args.budget:g}/s: "
            f"{row['stripe_calls']:>5} calls in {row['seconds']:>6} s  mean "
            f"{row['mean_calls_per_second']}/s (×{row['mean_over_budget']})  busiest second "
            f"{row['busiest_second']}  429s {row['rate_limited']}",
            flush=True,
        )
    path = write_results(
        "workers",
        {"benchmark": "workers", "machine": {"cpus": os.cpu_count()},
         "emulator_limit": STRIPE_SANDBOX_LIMIT, "runs": results},
    )  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
