"""Ingest throughput: a client process posts batches of usage over HTTP to `billsync serve`.

    .venv/bin/python -m bench.ingest [--events 1000000] [--stores sqlite,postgresql]

For each store: a fresh ledger, a server in its own process, a client in another (4
keep-alive connections posting batches of 1,000 events over 200 accounts). Reports
events/s, p50/p99 batch latency, the server's peak RSS and its RSS early vs late in the run
(flat memory; after an unmeasured warm-up of ``--warmup-events`` in which the caches fill),
plus a baseline measured in the same run: the same events posted one per request, as a
producer without batching would. Then the latency at a given throughput: ``--paced-events``
more sent on a schedule at ``--paced-rate`` events/s (default 40,000), each batch timed from
the moment it was due. Writes bench/results/ingest.json.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from bench.common import (
    TOKEN,
    RssSampler,
    api,
    billsync_server,
    free_port,
    postgres_schema,
    write_results,
)

METRICS = [
    ("machine.shared-cpu-1x.seconds", None),
    ("machine.performance-2x.seconds", None),
    ("volume.gb_hours", None),
    ("bandwidth.egress.na-eu.gb", ["iad", "ord", "cdg", "fra"]),
    ("bandwidth.egress.apac-sa.gb", ["nrt", "syd", "gru"]),
    ("ip.ipv4.hours", None),
]


def make_batch(run: str, batch_number: int, size: int, accounts: int, now: datetime) -> bytes:
    """``size`` events spread over accounts and metrics, timestamps in the last hour."""
    events = []
    base = batch_number * size
    for offset in range(size):
        n = base + offset
        metric, regions = METRICS[n % len(METRICS)]
        event: dict[str, Any] = {
            "id": f"{run}-{n}",
            "account": f"acct-{n % accounts:04d}",
            "metric": metric,
            "quantity": "10" if metric.startswith("machine") else "0.001234",
            "timestamp": (now - timedelta(seconds=n % 3600)).isoformat(),
        }
        if regions:
            event["dimensions"] = {"region": regions[n % len(regions)]}
        events.append(event)
    return orjson.dumps({"events": events})


def client_process(
    *, port: int, run: str, batches: int, size: int, accounts: int, connections: int,
    queue: multiprocessing.Queue[Any], rate: float | None = None,
) -> None:  # fmt: skip
    """Posts ``batches`` batches over ``connections`` keep-alive connections; reports timings.

    Bodies are encoded before the clock starts, as a load generator prepares its requests:
    the measured CPU is billsync's, plus the client's HTTP work.

    Closed loop (``rate`` None): each connection posts its next batch as soon as the last is
    answered — the most the server can take. Paced (``rate`` events/s): batch *n* is due at
    start + n × size / rate, whatever the answers, as a fleet of producers sends; a batch's
    latency runs from the moment it was due, so a batch the client could only send late
    (every connection still waiting) counts its wait too (no coordinated omission)."""
    now = datetime.now(UTC)
    bodies = [make_batch(run, number, size, accounts, now) for number in range(batches)]
    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []
    accepted = [0]

    def worker() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        while True:
            with lock:
                number = next(counter)
            if number >= batches:
                return
            body = bodies[number]
            started = time.perf_counter()
            if rate is not None:
                due = began + number * size / rate
                if due > started:
                    time.sleep(due - started)
                started = due
            connection.request("POST", "/v1/usage", body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                if response.status != 200:
                    failures.append(f"{response.status}: {payload[:200]!r}")
                else:
                    accepted[0] += orjson.loads(payload)["accepted"]

    began = started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    queue.put(
        {
            "seconds": time.perf_counter() - started,
            "latencies": latencies,
            "failures": failures[:5],
            "failed": len(failures),
            "accepted": accepted[0],
        }
    )


def run_client(**kwargs: Any) -> dict[str, Any]:
    queue: multiprocessing.Queue[Any] = multiprocessing.Queue()
    process = multiprocessing.Process(target=client_process, kwargs={**kwargs, "queue": queue})
    process.start()
    result: dict[str, Any] = queue.get()
    process.join()
    return result


def bench_store(store: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        env = {"BILLSYNC_DATA_DIR": data_dir, "BILLSYNC_DATABASE_URL": url}
        if store == "postgresql":
            subprocess.run(
                [sys.executable, "-m", "billsync", "db", "upgrade"],
                env={**os.environ, **env},
                check=True,
                capture_output=True,
            )
        with billsync_server(env, port, workers=args.workers) as server:
            for index in range(args.accounts):
                status, body = api(
                    port, "POST", "/v1/accounts", {"id": f"acct-{index:04d}", "currency": "usd"}
                )
                assert status == 201, body
            # Baseline in the same run: one event per request (no batching).
            baseline = run_client(
                port=port, run="single", batches=args.baseline_events, size=1,
                accounts=args.accounts, connections=args.connections,
            )  # fmt: skip
            # Warm-up, not measured: the server's caches (SQLite's page cache of each pooled
            # connection, up to BILLSYNC_SQLITE_CACHE_MIB; the line-id and validation caches)
            # fill to their bounds here, so that the measured run's memory shows growth, not
            # a cache levelling off. Its own RSS by tenth is reported beside the run's.
            warm_sampler = RssSampler(server.pid)
            warm_sampler.start()
            warm_up = run_client(
                port=port, run="warmup", batches=args.warmup_events // args.batch,
                size=args.batch, accounts=args.accounts, connections=args.connections,
            )  # fmt: skip
            warm_sampler.stop()
            sampler = RssSampler(server.pid)
            sampler.start()
            batches = args.events // args.batch
            measured = run_client(
                port=port, run="batch", batches=batches, size=args.batch,
                accounts=args.accounts, connections=args.connections,
            )  # fmt: skip
            sampler.stop()
            paced_batches = args.paced_events // args.batch
            paced = None if paced_batches == 0 else run_client(
                port=port, run="paced", batches=paced_batches, size=args.batch,
                accounts=args.accounts, connections=PACED_CONNECTIONS, rate=args.paced_rate,
            )  # fmt: skip
    latencies = sorted(measured["latencies"])
    events_per_second = measured["accepted"] / measured["seconds"]
    baseline_rate = baseline["accepted"] / baseline["seconds"]
    result: dict[str, Any] = {
        "store": store,
        "events": batches * args.batch,
        "accepted": measured["accepted"],
        "failed_batches": measured["failed"],
        "failures": measured["failures"],
        "seconds": round(measured["seconds"], 2),
        "events_per_second": round(events_per_second),
        "batch_latency_ms": latency_summary(latencies),
        "server_rss_mib": {
            "peak": round(sampler.peak_mib(), 1),
            "first_10pct": round(sampler.window_mib(0.0, 0.1), 1),
            "last_10pct": round(sampler.window_mib(0.9, 1.0), 1),
            # Each tenth of the run: a leak climbs to the end, a cache levels off.
            "by_tenth": [round(sampler.window_mib(k / 10, (k + 1) / 10), 1) for k in range(10)],
        },
        "warm_up": {
            "events": warm_up["accepted"],
            "events_per_second": round(warm_up["accepted"] / max(warm_up["seconds"], 1e-9)),
            "server_rss_mib_by_tenth": [
                round(warm_sampler.window_mib(k / 10, (k + 1) / 10), 1) for k in range(10)
            ],
        },
        "baseline_single_event_requests": {
            "events": baseline["accepted"],
            "events_per_second": round(baseline_rate),
        },
        "speedup_vs_single_event_requests": round(events_per_second / baseline_rate, 1),
    }
    if paced is not None:
        result["paced"] = {
            "offered_events_per_second": args.paced_rate,
            "events": paced["accepted"],
            "failed_batches": paced["failed"],
            "events_per_second": round(paced["accepted"] / paced["seconds"]),
            "batch_latency_ms": latency_summary(sorted(paced["latencies"])),
        }
    return result


# Enough that a paced batch is never held back by a connection still waiting for an answer
# (at 40,000 events/s a 1,000-event batch is due every 25 ms).
PACED_CONNECTIONS = 16


def latency_summary(latencies: list[float]) -> dict[str, float]:
    """p50/p99/max/mean in ms of sorted latencies in seconds."""
    return {
        "p50": round(statistics.median(latencies) * 1000, 1),
        "p99": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1),
        "max": round(latencies[-1] * 1000, 1),
        "mean": round(statistics.fmean(latencies) * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--accounts", type=int, default=200)
    # Producers post concurrently: with 4 connections the group committer finds batches
    # waiting and stores them together (with 2 it rarely has more than one).
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--baseline-events", type=int, default=5000)
    parser.add_argument("--warmup-events", type=int, default=100_000)
    # Latency at a given throughput: batches sent on a schedule (open loop), not as fast as
    # answers come back. In the closed loop above, latency is set by the connections in
    # flight (Little's law: 4 connections at 40,000 events/s in batches of 1,000 wait
    # 100 ms on average, whatever the server), so p99 there says how deep the queue is.
    parser.add_argument("--paced-rate", type=float, default=40_000)
    parser.add_argument(
        "--paced-events", type=int, help="default: --events, at most 400,000; 0: no paced run"
    )
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "BILLSYNC_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
    )
    args = parser.parse_args()
    if args.paced_events is None:
        args.paced_events = min(args.events, 400_000)
    results = []
    for store in args.stores.split(","):
        if store == "sqlite":
            with tempfile.TemporaryDirectory() as directory:
                results.append(bench_store(store, f"sqlite:///{directory}/bench.db", args))
        else:
            with postgres_schema(args.postgres_url) as url:
                results.append(bench_store(store, url, args))
        row = results[-1]
        print(
            f"{row['store']:>10}: {row['events_per_second']:>8,} events/s  "
            f"p50 {row['batch_latency_ms']['p50']} ms  p99 {row['batch_latency_ms']['p99']} ms  "
            f"RSS peak {row['server_rss_mib']['peak']} MiB "
            f"(first 10% {row['server_rss_mib']['first_10pct']}, "
            f"last 10% {row['server_rss_mib']['last_10pct']})  "
            f"×{row['speedup_vs_single_event_requests']} vs one event per request "
            f"({row['baseline_single_event_requests']['events_per_second']:,}/s)  "
            f"failed batches {row['failed_batches']}",
            flush=True,
        )
        if "paced" in row:
            paced = row["paced"]
            print(
                f"{'':>10}  paced at {paced['offered_events_per_second']:,.0f} events/s: "
                f"{paced['events_per_second']:,} events/s  "
                f"p50 {paced['batch_latency_ms']['p50']} ms  "
                f"p99 {paced['batch_latency_ms']['p99']} ms  "
                f"failed batches {paced['failed_batches']}",
                flush=True,
            )
    path = write_results(
        "ingest",
        {
            "benchmark": "ingest",
            "machine": {"cpus": os.cpu_count()},
            "batch_size": args.batch,
            "connections": args.connections,
            "warmup_events": args.warmup_events,
            "workers": args.workers,
            "results": results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
