"""The customer's view under load: ``GET /v1/accounts/{id}/billing`` and the portal call.

    .venv/bin/python -m bench.billing [--clients 50] [--seconds 10]

An account with 50 lines in the current period and 24 past invoices in the mirror; a server
(`billsync serve`, SQLite) talking to the emulator; a client process with ``--clients``
concurrent connections reading the bill for ``--seconds``, with new usage ingested for the
account all along (so the cache keeps being invalidated). Then portal calls, each after new
usage, so each includes an on-demand sync that pushes a change. Baseline in the same run:
``GET /healthz`` with the same clients. Writes bench/results/billing.json.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import re
import statistics
import tempfile
import threading
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import uvloop

from bench.common import (
    TOKEN,
    api,
    billsync_server,
    free_port,
    set_endpoint_limit,
    start_emulator,
    write_results,
)
from billsync.db import migrate
from billsync.db.database import Database
from billsync.repositories import webhooks

KEY = "sk_test_benchmarkKey0001"
CONTENT_LENGTH = re.compile(rb"content-length: *(\d+)", re.IGNORECASE)


async def _customer(
    port: int, path: str, deadline: float, think: float, latencies: list[float]
) -> None:
    """One client on one keep-alive connection: load, look at the page ``think`` s, again."""
    await asyncio.sleep(random.uniform(0, think))  # arrivals spread out from the start
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    ).encode()
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        found = CONTENT_LENGTH.search(head)
        assert found is not None, head
        await reader.readexactly(int(found.group(1)))
        latencies.append(time.perf_counter() - started)
        if think:  # customers do not click in step: 0–2× the mean think time
            await asyncio.sleep(random.uniform(0, 2 * think))
    writer.close()


def readers(job: tuple[int, str, int, float, float], queue: Any) -> None:
    """``clients`` concurrent customers in one process (asyncio: the client's own overhead
    stays out of the measured latency)."""
    port, path, clients, seconds, think = job
    latencies: list[float] = []

    async def run() -> None:
        deadline = time.perf_counter() + seconds
        await asyncio.gather(
            *(_customer(port, path, deadline, think, latencies) for _ in range(clients))
        )

    uvloop.run(run())
    queue.put(latencies)


def measure(port: int, path: str, clients: int, seconds: float, think: float) -> dict[str, Any]:
    queue: Any = multiprocessing.Queue()
    process = multiprocessing.Process(
        target=readers, args=((port, path, clients, seconds, think), queue)
    )
    process.start()
    latencies = queue.get()
    process.join()
    return summary(latencies, seconds)


def summary(latencies: list[float], seconds: float | None = None) -> dict[str, Any]:
    latencies = sorted(latencies)
    result = {
        "requests": len(latencies),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000, 2),
    }
    if seconds:
        result["per_second"] = round(len(latencies) / seconds)
    return result


def event(n: int, region: str, now: datetime) -> dict[str, Any]:
    return {
        "id": f"b{n}",
        "account": "bench",
        "metric": "bandwidth.egress.na-eu.gb",
        "quantity": "0.5",
        "timestamp": now.isoformat(),
        "dimensions": {"region": region},
    }


def seed_past_invoices(database: Database, now: datetime) -> None:
    """24 paid invoices in the mirror, as webhooks would have left them."""
    with database.transaction() as connection:
        for month in range(24):
            start = date(2024 + month // 12, month % 12 + 1, 1)
            paid = datetime.combine(start, datetime.min.time(), UTC) + timedelta(days=32)
            webhooks.put_mirror(
                connection,
                f"in_past{month:02d}",
                {
                    "account_id": "bench",
                    "period_start": start,
                    "number": f"B-{month:04d}",
                    "status": "paid",
                    "currency": "usd",
                    "total": 1000 + month,
                    "amount_due": 1000 + month,
                    "amount_paid": 1000 + month,
                    "amount_remaining": 0,
                    "hosted_invoice_url": "https://example.test/i",
                    "invoice_pdf": "https://example.test/i.pdf",
                    "attempt_count": 1,
                    "paid_at": paid,
                    "last_event_created": 0,
                    "updated_at": now,
                },
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--portal-calls", type=int, default=100)
    parser.add_argument(
        "--think", type=float, default=0.1, help="Seconds each client waits between two loads."
    )
    args = parser.parse_args()
    emulator_port = free_port()
    emulator = start_emulator(emulator_port, rate_limit=0)  # the portal's settings saved
    set_endpoint_limit(emulator_port, 25.0)  # Stripe's per-endpoint limit, as before
    try:
        with tempfile.TemporaryDirectory() as directory:
            url = f"sqlite:///{directory}/bench.db"
            env = {
                "BILLSYNC_DATA_DIR": directory,
                "BILLSYNC_DATABASE_URL": url,
                "BILLSYNC_STRIPE_API_KEY": KEY,
                # Each request measures a real on-demand sync: no spacing between them.
                "BILLSYNC_ON_DEMAND_MIN_SECONDS": "0",
                "BILLSYNC_STRIPE_API_BASE": f"http://127.0.0.1:{emulator_port}",
                "BILLSYNC_STRIPE_RATE": "1000",
                "BILLSYNC_SYNC_POLICY": "on_demand",
            }
            database = Database(url)
            migrate.upgrade(database)
            port = free_port()
            with billsync_server(env, port):
                assert (
                    api(port, "POST", "/v1/accounts", {"id": "bench", "currency": "usd"})[0] == 201
                )
                now = datetime.now(UTC)
                status, body = api(
                    port,
                    "POST",
                    "/v1/usage",
                    {"events": [event(n, f"r{n:02d}", now) for n in range(50)]},
                )
                assert body["accepted"] == 50, body
                seed_past_invoices(database, now)
                lines = api(port, "GET", "/v1/accounts/bench/billing")[1]
                assert len(lines["lines"]) == 50
                assert len(lines["invoices"]) == 24
                baseline = measure(port, "/healthz", args.clients, args.seconds / 2, args.think)
                stop = threading.Event()
                written = [0]

                def writer() -> None:  # usage keeps arriving while customers read
                    n = 1000
                    while not stop.is_set():
                        api(
                            port,
                            "POST",
                            "/v1/usage",
                            {"events": [event(n, "r00", datetime.now(UTC))]},
                        )
                        n += 1
                        written[0] += 1
                        stop.wait(0.1)

                feeder = threading.Thread(target=writer)
                feeder.start()
                reads = measure(
                    port, "/v1/accounts/bench/billing", args.clients, args.seconds, args.think
                )
                saturated = measure(
                    port, "/v1/accounts/bench/billing", args.clients, args.seconds / 2, 0.0
                )
                stop.set()
                feeder.join()
                portal: list[float] = []
                for n in range(args.portal_calls):
                    api(
                        port,
                        "POST",
                        "/v1/usage",
                        {"events": [event(10_000 + n, "r01", datetime.now(UTC))]},
                    )
                    started = time.perf_counter()
                    status, answer = api(port, "POST", "/v1/accounts/bench/portal", {})
                    portal.append(time.perf_counter() - started)
                    assert status == 200, answer
                    assert answer["synced"], answer
            database.dispose()
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
    portal_summary = summary(portal)
    results = {
        "benchmark": "billing",
        "machine": {"cpus": os.cpu_count()},
        "clients": args.clients,
        "account": {"lines": 50, "past_invoices": 24},
        "baseline_healthz": baseline,
        "billing_reads": reads,
        "usage_writes_during_reads": written[0],
        "portal_with_sync": portal_summary,
        "ratio_p99_to_baseline": round(reads["p99_ms"] / baseline["p99_ms"], 2),
    }
    rows = (
        ("healthz", baseline),
        ("billing", reads),
        ("saturated", saturated),
        ("portal", portal_summary),
    )
    for name, row in rows:
        rate = f"{row['per_second']:>6,}/s" if "per_second" in row else " " * 8
        print(f"  {name:<9}: {rate}  p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms")
    print(f"  ({written[0]} usage writes during the reads; each portal call included a sync)")
    print(f"wrote {write_results('billing', results)}")


if __name__ == "__main__":
    main()
