"""Stripe calls per workload: billsync vs the naive design vs the lower bound.

    .venv/bin/python -m bench.api_calls [--accounts 50] [--hours 24] [--policies interval-15,...]

A simulated platform: ``--accounts`` accounts, each reporting 6 metrics in small increments
every 10 seconds for ``--hours`` (the last day of a billing period), with 1 % of increments
delivered late (three 5-minute windows after they happened) and 1 % delivered twice. billsync
ingests them on a simulated clock and syncs per policy; then the period closes, goes through
review and is finalized. Stripe is the emulator in its own process; its request counter is the
measure.

- **billsync**: every request the emulator received (writes and reads), of which the webhook
  backstop's ``GET /v1/events`` sweeps (one per sweep interval, whatever the number of
  accounts) are reported apart;
- **naive**: one call per accepted increment (how the case study's platform pushes usage
  today), plus customer, invoice and finalize per account;
- **lower bound**: per account, customer + invoice + finalize, plus one call for each sync
  window (of the policy's interval) in which its lines changed; for ``cycle_end``, one.

The default run checks the default budget (20 calls/s, the emulator enforcing Stripe's 25/s
sandbox limit in real time) with the 15-minute policy; the other policies run with a raised
budget so the benchmark finishes sooner (their call counts do not depend on the budget).
With ``--priced``, each policy runs a second time with every other account sold the way
platforms sell (a negotiated rate, a minimum commitment above its usage, a prepaid credit and a
spend alert): the difference in Stripe calls is what those features cost — a commitment
top-up and a credit are lines on the invoice, not calls of their own.

Writes bench/results/api_calls.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient

from bench.common import free_port, start_emulator, write_results
from billsync.api.app import create_app
from billsync.bootstrap import Billsync, build
from billsync.clock import ManualClock
from billsync.config import Settings
from billsync.core.periods import PeriodStatus
from billsync.core.policy import window_start
from billsync.db import migrate
from billsync.db.database import Database
from billsync.repositories import sync as sync_repository
from billsync.services.accounts import NewAccount

KEY = "sk_test_benchmarkKey0001"
STEP = timedelta(seconds=10)
CHUNK = timedelta(minutes=5)
PERIOD_END = datetime(2026, 12, 1, tzinfo=UTC)
METRICS: list[tuple[str, str, dict[str, str]]] = [
    ("machine.shared-cpu-1x.seconds", "10", {}),
    ("machine.performance-1x.seconds", "10", {}),
    ("volume.gb_hours", "0.027778", {}),
    ("bandwidth.egress.na-eu.gb", "0.012345", {"region": "iad"}),
    ("bandwidth.egress.apac-sa.gb", "0.004321", {"region": "nrt"}),
    ("ip.ipv4.hours", "0.002778", {}),
]


@dataclass(frozen=True)
class Run:
    name: str
    policy: str
    interval_minutes: int
    budget: float
    emulator_rate: float


RUNS = {
    "interval-15": Run("interval-15", "interval", 15, 20, 25),
    "interval-5": Run("interval-5", "interval", 5, 400, 500),
    "interval-60": Run("interval-60", "interval", 60, 400, 500),
    "cycle_end": Run("cycle_end", "cycle_end", 15, 400, 500),
}


def control(port: int, method: str, path: str, body: Any = None) -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request(
        method,
        f"/_emulator/{path}",
        body=None if body is None else json.dumps(body),
        headers={"Content-Type": "application/json"},
    )
    return json.loads(connection.getresponse().read())


def stream(
    accounts: int, hours: float, start: datetime
) -> list[tuple[datetime, list[dict[str, Any]]]]:
    """Events grouped by the 5-minute chunk in which they are delivered (late ones later)."""
    chunks: dict[datetime, list[dict[str, Any]]] = defaultdict(list)
    steps = int(timedelta(hours=hours) / STEP)
    counter = 0
    for step in range(steps):
        moment = start + step * STEP
        for account in range(accounts):
            for metric, quantity, dimensions in METRICS:
                counter += 1
                event = {
                    "id": f"u{counter}",
                    "account": f"acct-{account:03d}",
                    "metric": metric,
                    "quantity": quantity,
                    "timestamp": moment.isoformat(),
                    "dimensions": dimensions,
                }
                delivered = moment + STEP
                if counter % 100 == 37:  # late: three chunks after it happened
                    delivered += 3 * CHUNK
                chunk = start + ((delivered - start) // CHUNK) * CHUNK
                chunks[chunk].append(event)
                if counter % 100 == 71:  # delivered twice
                    chunks[chunk + CHUNK].append(event)
    return sorted(chunks.items())


def sell(billsync: Billsync, accounts: int, expires: datetime) -> int:
    """Every other account: a negotiated rate, a minimum commitment, a prepaid credit and a
    spend alert, through the platform API. Returns how many accounts."""
    token = {"Authorization": f"Bearer {billsync.settings.api_token}"}
    sold = 0
    with TestClient(create_app(billsync), headers=token) as api:
        for account in range(0, accounts, 2):
            path = f"/v1/accounts/acct-{account:03d}"
            for method, url, body in (
                ("PUT", f"{path}/prices", {"prices": {METRICS[0][0]: "0.0000006"}}),
                ("PATCH", path, {"minimum_amount": "1000.00"}),
                ("POST", f"{path}/credit-grants",
                 {"amount": "5.00", "currency": "usd", "expires_at": expires.isoformat()}),
                ("POST", f"{path}/alerts", {"amount": "0.01"}),
            ):  # fmt: skip
                api.request(method, url, json=body).raise_for_status()
            sold += 1
    return sold


def measure(
    run: Run,
    args: argparse.Namespace,
    events: list[tuple[datetime, list[dict[str, Any]]]],
    start: datetime,
    *,
    priced: bool = False,
) -> dict[str, Any]:
    port = free_port()
    emulator = start_emulator(port, run.emulator_rate)
    try:
        with tempfile.TemporaryDirectory() as directory:
            clock = ManualClock(start)
            database = Database(f"sqlite:///{directory}/bench.db", sqlite_synchronous="NORMAL")
            migrate.upgrade(database)
            settings = Settings(
                data_dir=directory,
                api_token="bench-token-0123456789",  # noqa: S106 - a local throwaway
                stripe_api_key=KEY,
                stripe_api_base=f"http://127.0.0.1:{port}",
                stripe_rate=run.budget,
                stripe_max_retries=2,
                sync_policy=run.policy,
                sync_interval_seconds=run.interval_minutes * 60,
                close_grace_seconds=3600,
                review_window_seconds=3600,
            )
            billsync = build(settings, clock=clock, database=database)
            assert billsync.sync is not None
            scheduler = billsync.sync.scheduler
            with database.transaction() as connection:
                for account in range(args.accounts):
                    billsync.accounts.create(connection, NewAccount(f"acct-{account:03d}", "usd"))
            sold = sell(billsync, args.accounts, PERIOD_END + timedelta(days=90)) if priced else 0
            accepted = 0
            changed: dict[str, set[datetime]] = defaultdict(set)
            interval = timedelta(minutes=run.interval_minutes)
            started = time.perf_counter()
            for moment, batch in events:
                clock.set(moment + CHUNK)
                for offset in range(0, len(batch), 5000):
                    report = billsync.ingest.ingest(batch[offset : offset + 5000])
                    accepted += report.accepted
                    for raw, result in zip(
                        batch[offset : offset + 5000], report.results, strict=True
                    ):
                        if result.status.value == "accepted":
                            changed[raw["account"]].add(window_start(clock.now(), interval))
                scheduler.tick()
                scheduler.drain()
            # The period ends; grace; review; finalize.
            for later in (
                timedelta(minutes=1),
                timedelta(hours=1, minutes=5),
                timedelta(hours=2, minutes=10),
            ):
                clock.set(PERIOD_END + later)
                scheduler.tick()
                scheduler.drain()
            elapsed = time.perf_counter() - started
            stats = control(port, "GET", "stats")
            with database.read() as connection:
                done = len(
                    sync_repository.periods_with_status(connection, [PeriodStatus.FINALIZED])
                )
            billsync.close()
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
    per_account_fixed = 3  # customer, invoice, finalize
    if run.policy == "cycle_end":
        lower = args.accounts * (per_account_fixed + 1)
    else:
        lower = args.accounts * per_account_fixed + sum(
            len(windows) for windows in changed.values()
        )
    naive = accepted + args.accounts * per_account_fixed
    billsync_calls = stats["total"]
    sweep = stats["by_endpoint"].get("GET /v1/events", 0)
    return {
        "run": run.name,
        "policy": run.policy,
        "interval_minutes": run.interval_minutes if run.policy == "interval" else None,
        "budget_calls_per_second": run.budget,
        "accepted_increments": accepted,
        "stripe_calls": {"billsync": billsync_calls, "naive": naive, "lower_bound": lower},
        "webhook_sweep_reads": sweep,
        "billsync_over_lower_bound": round(billsync_calls / lower, 3),
        "sync_calls_over_lower_bound": round((billsync_calls - sweep) / lower, 3),
        "naive_over_billsync": round(naive / billsync_calls, 1),
        "rate_limited": stats["rate_limited"],
        "by_endpoint": stats["by_endpoint"],
        "periods_finalized": done,
        "priced_accounts": sold,
        "seconds": round(elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--policies", default=",".join(RUNS))
    parser.add_argument(
        "--priced", action="store_true", help="also run each policy with priced accounts"
    )
    args = parser.parse_args()
    start = PERIOD_END - timedelta(hours=args.hours)
    events = stream(args.accounts, args.hours, start)
    print(
        f"{sum(len(batch) for _, batch in events):,} deliveries in {len(events)} chunks", flush=True
    )
    results = []
    for name in args.policies.split(","):
        result = measure(RUNS[name], args, events, start)
        results.append(result)
        calls = result["stripe_calls"]
        print(
            f"{name:>12}: billsync {calls['billsync']:>7,} ({result['webhook_sweep_reads']} sweep "
            f"reads)  lower bound {calls['lower_bound']:>7,}  (sync calls "
            f"×{result['sync_calls_over_lower_bound']})  naive {calls['naive']:>10,}"
            f"  (naive ÷ billsync {result['naive_over_billsync']:,})  429s {result['rate_limited']}"
            f"  finalized {result['periods_finalized']}/{args.accounts}  {result['seconds']} s",
            flush=True,
        )
        if args.priced:
            priced = measure(RUNS[name], args, events, start, priced=True)
            extra = priced["stripe_calls"]["billsync"] - calls["billsync"]
            result["priced"] = {
                "accounts": priced["priced_accounts"],
                "stripe_calls": priced["stripe_calls"]["billsync"],
                "extra_calls": extra,
                "extra_calls_per_priced_account": round(extra / priced["priced_accounts"], 3),
                "by_endpoint": priced["by_endpoint"],
                "periods_finalized": priced["periods_finalized"],
            }
            print(
                f"{'':>12}  with {priced['priced_accounts']} accounts priced (rate, minimum, "
                f"credit, alert): billsync {priced['stripe_calls']['billsync']:>7,}  "
                f"extra {extra} ({result['priced']['extra_calls_per_priced_account']} per priced "
                f"account)  finalized {priced['periods_finalized']}/{args.accounts}",
                flush=True,
            )
    path = write_results(
        "api_calls",
        {
            "benchmark": "api_calls",
            "machine": {"cpus": os.cpu_count()},
            "accounts": args.accounts,
            "hours": args.hours,
            "metrics": len(METRICS),
            "results": results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
