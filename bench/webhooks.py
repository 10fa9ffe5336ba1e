"""Webhook acknowledgement under a burst, and reconciliation time.

    .venv/bin/python -m bench.webhooks [--events 10000] [--connections 8] [--accounts 1000]

1. A burst of ``--events`` signed Stripe events posted by a client process over
   ``--connections`` keep-alive connections to ``billsync serve`` (SQLite, fsync on commit):
   acknowledged events/s, p50/p99 acknowledgement latency, and — nothing lost — the number of
   events found in the inbox afterwards. Baseline in the same run: ``GET /healthz``.
2. ``--accounts`` accounts each with a synced draft in the emulator: the time of one
   reconciliation of all of them (re-reading every draft's lines and comparing).
Writes bench/results/webhooks.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from typing import Any

from bench.common import billsync_server, free_port, start_emulator, write_results
from billsync.bootstrap import build
from billsync.config import Settings
from billsync.core.webhook_signature import compute
from billsync.db import migrate
from billsync.db.database import Database
from billsync.repositories import webhooks as webhook_repository
from billsync.services.accounts import NewAccount

SECRET = "whsec_benchmark_0123456789"  # noqa: S105 - a local throwaway


def payloads(count: int) -> list[bytes]:
    now = int(time.time())
    return [
        json.dumps(
            {
                "id": f"evt_bench{n:08d}",
                "object": "event",
                "type": "invoice.updated",
                "created": now,
                "livemode": False,
                "api_version": "2026-10-28.endive",
                "data": {
                    "object": {
                        "id": f"in_bench{n % 500:05d}",
                        "object": "invoice",
                        "status": "draft",
                        "total": n,
                    }
                },
            }
        ).encode()
        for n in range(count)
    ]


def sender(port: int, bodies: list[bytes], connections: int, path: str, queue: Any) -> None:
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    position = [0]

    def worker() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                index = position[0]
                position[0] += 1
            if index >= len(bodies):
                return
            body = bodies[index]
            stamp = int(time.time())
            headers = {
                "Stripe-Signature": f"t={stamp},v1={compute(body, SECRET, stamp)}",
                "Content-Type": "application/json",
            }
            started = time.perf_counter()
            if path == "/healthz":
                connection.request("GET", path)
            else:
                connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                failures[0] += response.status != 200

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    queue.put(
        {"seconds": time.perf_counter() - started, "latencies": latencies, "failures": failures[0]}
    )


def burst(port: int, bodies: list[bytes], connections: int, path: str) -> dict[str, Any]:
    queue: Any = multiprocessing.Queue()
    process = multiprocessing.Process(target=sender, args=(port, bodies, connections, path, queue))
    process.start()
    result: dict[str, Any] = queue.get()
    process.join()
    latencies = sorted(result["latencies"])
    return {
        "requests": len(latencies),
        "per_second": round(len(latencies) / result["seconds"]),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
        "failures": result["failures"],
    }


def reconcile_time(accounts: int) -> dict[str, Any]:
    """Seed ``accounts`` accounts with a synced draft each, then time one reconciliation."""
    port = free_port()
    emulator = start_emulator(port)
    try:
        with tempfile.TemporaryDirectory() as directory:
            database = Database(f"sqlite:///{directory}/r.db", sqlite_synchronous="NORMAL")
            migrate.upgrade(database)
            settings = Settings(
                data_dir=directory,
                api_token="bench-token-0123456789",  # noqa: S106
                stripe_api_key="sk_test_benchmarkKey0001",
                stripe_api_base=f"http://127.0.0.1:{port}",
                stripe_rate=10_000,
            )
            billsync = build(settings, database=database)
            assert billsync.sync is not None
            now = datetime.now(UTC)
            with database.transaction() as connection:
                for n in range(accounts):
                    billsync.accounts.create(connection, NewAccount(f"acct-{n:04d}", "usd"))
            billsync.ingest.ingest(
                [
                    {
                        "id": f"r{n}-{m}",
                        "account": f"acct-{n:04d}",
                        "metric": metric,
                        "quantity": "3",
                        "timestamp": now.isoformat(),
                        "dimensions": {"region": "iad"} if "egress" in metric else {},
                    }
                    for n in range(accounts)
                    for m, metric in enumerate(
                        ["ip.ipv4.hours", "bandwidth.egress.na-eu.gb", "volume.gb_hours"]
                    )
                ]
            )
            seeding = time.perf_counter()
            for n in range(accounts):
                assert billsync.sync.service.sync_account(f"acct-{n:04d}").ok
            seeded = time.perf_counter() - seeding
            assert billsync.sync.reconciler is not None
            started = time.perf_counter()
            report = billsync.sync.reconciler.reconcile(repair=False)
            elapsed = time.perf_counter() - started
            billsync.close()
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
    return {
        "accounts": accounts,
        "seconds": round(elapsed, 2),
        "accounts_per_second": round(accounts / elapsed),
        "drift_found": len(report.items),
        "seed_seconds": round(seeded, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--accounts", type=int, default=1000)
    args = parser.parse_args()
    bodies = payloads(args.events)
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{directory}/bench.db"
        env = {
            "BILLSYNC_DATA_DIR": directory,
            "BILLSYNC_DATABASE_URL": url,
            "BILLSYNC_STRIPE_WEBHOOK_SECRETS": SECRET,
        }
        port = free_port()
        with billsync_server(env, port):
            baseline = burst(port, bodies[:2000], args.connections, "/healthz")
            acknowledged = burst(port, bodies, args.connections, "/v1/stripe/webhook")
            again = burst(port, bodies[:1000], args.connections, "/v1/stripe/webhook")
        database = Database(url)
        with database.read() as connection:
            stored = webhook_repository.counts(connection)["received"]
        database.dispose()
    reconciled = reconcile_time(args.accounts)
    results = {
        "benchmark": "webhooks",
        "machine": {"cpus": os.cpu_count()},
        "connections": args.connections,
        "baseline_healthz": baseline,
        "acknowledge": acknowledged,
        "duplicates_resent": again,
        "events_stored": stored,
        "lost": args.events - stored,
        "reconcile": reconciled,
    }
    print(f"  healthz baseline: {baseline['per_second']:>6,}/s  p99 {baseline['p99_ms']} ms")
    print(
        f"  acknowledge     : {acknowledged['per_second']:>6,}/s  p50 {acknowledged['p50_ms']} ms"
        f"  p99 {acknowledged['p99_ms']} ms  failures {acknowledged['failures']}"
    )
    print(f"  duplicates      : {again['per_second']:>6,}/s  p99 {again['p99_ms']} ms")
    print(f"  stored {stored:,} of {args.events:,} (lost {args.events - stored})")
    print(
        f"  reconcile {reconciled['accounts']:,} accounts: {reconciled['seconds']} s "
        f"({reconciled['accounts_per_second']}/s), drift found {reconciled['drift_found']}"
    )
    print(f"wrote {write_results('webhooks', results)}")


if __name__ == "__main__":
    main()
