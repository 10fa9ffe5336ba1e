"""Freshness and on-demand latency: from usage accepted to the amount on Stripe's draft.

    .venv/bin/python -m bench.freshness [--samples 50]

A server (`billsync serve`, SQLite) and the emulator, each in its own process. Three runs:

- ``threshold``: policy ``threshold`` with a threshold of 1 minor unit (sync on any change),
  scheduler tick 0.1 s. Each sample ingests one event and polls the emulator until the draft's
  total includes it: the time from the ingest's answer to Stripe holding the amount.
- ``interval``: policy ``interval`` every 2 s, same measurement (expected: about half the
  interval on average, at most the interval plus one sync).
- ``on_demand``: ingest, then ``POST /v1/accounts/{id}/sync`` — the call returns once Stripe
  holds the amount; its latency is the figure. Baseline in the same run:
  ``GET /v1/accounts/{id}`` on the same server.

Writes bench/results/freshness.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

from bench.common import api, billsync_server, free_port, start_emulator, write_results

KEY = "sk_test_benchmarkKey0001"
CENTS_PER_EVENT = 274  # 1,000 IPv4-hours × $0.00274


def draft_total(emulator_port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", emulator_port, timeout=10)
    connection.request("GET", "/v1/invoices?limit=1", headers={"Authorization": f"Bearer {KEY}"})
    page = json.loads(connection.getresponse().read())
    return int(page["data"][0]["total"]) if page["data"] else 0


def summary(latencies: list[float]) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {
        "samples": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def one_event(n: int) -> dict[str, Any]:
    return {
        "events": [
            {"id": f"fresh-{n}", "account": "fresh", "metric": "ip.ipv4.hours",
             "quantity": 1000, "timestamp": datetime.now(UTC).isoformat()}
        ]
    }  # fmt: skip


def run(name: str, env: dict[str, str], emulator_port: int, samples: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        port = free_port()
        full = {
            **env,
            "BILLSYNC_DATA_DIR": directory,
            "BILLSYNC_STRIPE_API_KEY": KEY,
            "BILLSYNC_STRIPE_API_BASE": f"http://127.0.0.1:{emulator_port}",
            "BILLSYNC_SCHEDULER_TICK_SECONDS": "0.1",
            # Each request measures a real on-demand sync: no spacing between them.
            "BILLSYNC_ON_DEMAND_MIN_SECONDS": "0",
        }
        api_emulator_reset(emulator_port)
        with billsync_server(full, port):
            assert api(port, "POST", "/v1/accounts", {"id": "fresh", "currency": "usd"})[0] == 201
            latencies: list[float] = []
            baseline: list[float] = []
            for n in range(samples):
                status, body = api(port, "POST", "/v1/usage", one_event(n))
                assert status == 200 and body["accepted"] == 1, body  # noqa: PT018
                accepted = time.perf_counter()
                expected = CENTS_PER_EVENT * (n + 1)
                if name == "on_demand":
                    status, body = api(port, "POST", "/v1/accounts/fresh/sync", {})
                    assert status == 200 and body["status"] == "synced", body  # noqa: PT018
                    latencies.append(time.perf_counter() - accepted)
                    assert draft_total(emulator_port) == expected
                    started = time.perf_counter()
                    api(port, "GET", "/v1/accounts/fresh")
                    baseline.append(time.perf_counter() - started)
                    continue
                while draft_total(emulator_port) != expected:
                    if time.perf_counter() - accepted > 30:
                        raise RuntimeError(f"{name}: the draft did not reach {expected}")
                    time.sleep(0.005)
                latencies.append(time.perf_counter() - accepted)
    result = {"run": name, **summary(latencies)}
    if baseline:
        result["baseline_get_account"] = summary(baseline)
    return result


def api_emulator_reset(emulator_port: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", emulator_port, timeout=10)
    connection.request("POST", "/_emulator/reset", body=b"{}")
    connection.getresponse().read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=50)
    args = parser.parse_args()
    emulator_port = free_port()
    emulator = start_emulator(emulator_port)
    try:
        runs = [
            run("threshold", {"BILLSYNC_SYNC_POLICY": "threshold", "BILLSYNC_SYNC_THRESHOLD": "1"},
                emulator_port, args.samples),
            run("interval", {"BILLSYNC_SYNC_POLICY": "interval",
                             "BILLSYNC_SYNC_INTERVAL_SECONDS": "2"},
                emulator_port, max(10, args.samples // 5)),
            run("on_demand", {"BILLSYNC_SYNC_POLICY": "on_demand"}, emulator_port, args.samples),
        ]  # fmt: skip
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
    for row in runs:
        print(f"  {row['run']:<10}: p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  "
              f"max {row['max_ms']} ms  ({row['samples']} samples)")  # fmt: skip
    base = runs[-1]["baseline_get_account"]
    print(f"  baseline GET /v1/accounts/{{id}}: p50 {base['p50_ms']} ms  p99 {base['p99_ms']} ms")
    results = {"benchmark": "freshness", "machine": {"cpus": os.cpu_count()}, "runs": runs}
    print(f"wrote {write_results('freshness', results)}")


if __name__ == "__main__":
    main()
