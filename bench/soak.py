"""Sustained load: ingest at half the measured maximum for five minutes while syncs and webhooks
run, and watch errors, memory and sync lag.

    .venv/bin/python -m bench.soak [--seconds 300] [--rate N] [--accounts 200]

``billsync serve`` (SQLite, its scheduler and sync workers in the same process, interval policy
every 30 s, the default Stripe budget) and the emulator (Stripe's sandbox rate limit, webhooks
sent back to billsync) each run in their own process. This process sends usage in batches of
1,000 events at ``--rate`` events/s (default: half of the SQLite figure in
bench/results/ingest.json, else 5,000/s), and every 5 s a probe event to one more account,
timing how long until Stripe's draft holds it (the sync lag a customer would see). Memory is
the server's RSS, sampled every second. At the end ``billsync verify`` checks the invariants.
Writes bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    RESULTS,
    TOKEN,
    RssSampler,
    billsync_server,
    free_port,
    start_emulator,
    write_results,
)

KEY = "sk_test_benchmarkKey0001"
BATCH = 1000
PROBE_CENTS = 274  # 1,000 IPv4-hours at $0.00274
METRICS = [
    ("machine.shared-cpu-1x.seconds", "5", {}),
    ("volume.gb_hours", "0.01", {}),
    ("bandwidth.egress.na-eu.gb", "0.002", {"region": "iad"}),
    ("ip.ipv4.hours", "0.001", {}),
]


def default_rate() -> float:
    path = RESULTS / "ingest.json"
    if path.exists():
        for row in json.loads(path.read_text()).get("results", []):
            if row.get("store") == "sqlite":
                return float(row["events_per_second"]) / 2
    return 5000.0


class Load:
    """Batches of events at a steady rate, over two connections."""

    def __init__(self, url: str, rate: float, accounts: int) -> None:
        self.url = url
        self.interval = BATCH / rate
        self.accounts = accounts
        self.sent = 0
        self.accepted = 0
        self.errors: list[str] = []
        self.batch_ms: list[float] = []
        self._next = time.monotonic()
        self._counter = 0
        self._lock = threading.Lock()
        self.stop = threading.Event()

    def _batch(self) -> list[dict[str, Any]] | None:
        with self._lock:
            now = time.monotonic()
            wait = self._next - now if self._next > now else 0.0
            self._next = max(self._next, now - 1) + self.interval
            start = self._counter
            self._counter += BATCH
        if wait and self.stop.wait(wait):
            return None
        moment = datetime.now(UTC).isoformat()
        events = []
        for n in range(start, start + BATCH):
            metric, quantity, dimensions = METRICS[n % len(METRICS)]
            events.append(
                {
                    "id": f"soak-{n}",
                    "account": f"acct-{n // len(METRICS) % self.accounts:04d}",
                    "metric": metric,
                    "quantity": quantity,
                    "timestamp": moment,
                    "dimensions": dimensions,
                }
            )
        return events

    def run(self) -> None:
        client = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60
        )
        while not self.stop.is_set():
            events = self._batch()
            if events is None:
                break
            started = time.perf_counter()
            try:
                answer = client.post("/v1/usage", json={"events": events})
            except httpx.HTTPError as error:
                self.errors.append(f"{type(error).__name__}: {error}")
                continue
            self.batch_ms.append((time.perf_counter() - started) * 1000)
            with self._lock:
                self.sent += len(events)
                if answer.status_code != 200:
                    self.errors.append(f"{answer.status_code}: {answer.text[:200]}")
                    continue
                body = answer.json()
                self.accepted += body["accepted"]
                if body["rejected"]:
                    self.errors.append(f"{body['rejected']} rejected")
        client.close()


def probe_lag(api: httpx.Client, stripe: httpx.Client, n: int, deadline: float) -> float | None:
    """Send one probe event; seconds until Stripe's draft holds it (None: not within 120 s)."""
    moment = datetime.now(UTC).isoformat()
    answer = api.post(
        "/v1/usage",
        json={
            "events": [
                {
                    "id": f"probe-{n}",
                    "account": "probe",
                    "metric": "ip.ipv4.hours",
                    "quantity": 1000,
                    "timestamp": moment,
                }
            ]
        },
    )
    answer.raise_for_status()
    accepted = time.monotonic()
    expected = PROBE_CENTS * (n + 1)
    while time.monotonic() < min(deadline, accepted + 120):
        periods = api.get("/v1/accounts/probe/sync").json().get("periods", [])
        invoice = next((p["stripe_invoice_id"] for p in periods if p["stripe_invoice_id"]), None)
        if invoice:  # read through the control plane: Stripe's rate limit is billsync's alone
            answer = stripe.get(f"/_emulator/peek/invoices/{invoice}")
            if answer.status_code == 200 and answer.json()["total"] >= expected:
                return time.monotonic() - accepted
        time.sleep(0.2)
    return None


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] if ordered else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--rate", type=float, default=None)
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument(
        "--topology", choices=("one", "separate"), default="one",
        help="one: `billsync serve` syncs in the API process; separate: `billsync api` and a "
        "`billsync worker` process",
    )  # fmt: skip
    args = parser.parse_args()
    rate = args.rate or default_rate()
    emulator_port, port = free_port(), free_port()
    emulator = start_emulator(emulator_port, rate_limit=None)  # Stripe's sandbox limit
    stripe = httpx.Client(
        base_url=f"http://127.0.0.1:{emulator_port}",
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
    )
    endpoint = stripe.post(
        "/v1/webhook_endpoints",
        data={"url": f"http://127.0.0.1:{port}/v1/stripe/webhook", "enabled_events[0]": "*"},
    ).json()
    try:
        with tempfile.TemporaryDirectory() as directory:
            env = {
                "BILLSYNC_DATA_DIR": directory,
                "BILLSYNC_STRIPE_API_KEY": KEY,
                "BILLSYNC_STRIPE_API_BASE": f"http://127.0.0.1:{emulator_port}",
                "BILLSYNC_STRIPE_WEBHOOK_SECRETS": endpoint["secret"],
                "BILLSYNC_SYNC_POLICY": "interval",
                "BILLSYNC_SYNC_INTERVAL_SECONDS": "30",
                "BILLSYNC_SCHEDULER_TICK_SECONDS": "1",
                "BILLSYNC_SWEEP_INTERVAL_SECONDS": "60",
            }
            command = "serve" if args.topology == "one" else "api"
            worker = None
            if args.topology == "separate":  # syncs in their own process, as in production
                worker = subprocess.Popen(
                    [sys.executable, "-m", "billsync", "worker"],
                    env={**os.environ, **env, "BILLSYNC_API_TOKEN": TOKEN},
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            with billsync_server(env, port, command=command) as server:
                result = run(
                    args,
                    rate=rate,
                    port=port,
                    pid=server.pid,
                    stripe=stripe,
                    env=env,
                    directory=directory,
                )
            if worker is not None:
                worker.terminate()
                worker.wait(timeout=30)
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
    print(json.dumps({k: v for k, v in result.items() if k != "per_minute"}, indent=2))
    for row in result["per_minute"]:
        print(
            f"  minute {row['minute']}: {row['events_per_second']:,.0f} events/s, "
            f"RSS {row['rss_mib']} MiB, sync lag p50 {row['lag_p50_s']} s max {row['lag_max_s']} s"
        )
    result["topology"] = args.topology
    name = "soak" if args.topology == "one" else "soak_separate"
    print(f"wrote {write_results(name, result)}")


def run(
    args: argparse.Namespace,
    *,
    rate: float,
    port: int,
    pid: int,
    stripe: httpx.Client,
    env: dict[str, str],
    directory: str,
) -> dict[str, Any]:
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    )
    for n in range(args.accounts):
        api.post("/v1/accounts", json={"id": f"acct-{n:04d}", "currency": "usd"})
    api.post("/v1/accounts", json={"id": "probe", "currency": "usd"})
    sampler = RssSampler(pid, interval=1.0)
    sampler.start()
    load = Load(f"http://127.0.0.1:{port}", rate, args.accounts)
    threads = [threading.Thread(target=load.run, daemon=True) for _ in range(2)]
    started = time.monotonic()
    end = started + args.seconds
    for thread in threads:
        thread.start()
    lags: list[tuple[float, float | None]] = []
    progress: list[tuple[float, int]] = []
    probes: list[threading.Thread] = []

    def probe(n: int, at: float) -> None:
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=60,
        )  # fmt: skip
        lags.append((at, probe_lag(client, stripe, n, end + 120)))
        client.close()

    n = 0
    while time.monotonic() < end:
        at = time.monotonic() - started
        progress.append((at, load.sent))
        if n * 5 <= at:  # a probe every 5 s, each in its own thread (a lag can be ~a minute)
            thread = threading.Thread(target=probe, args=(n, at), daemon=True)
            thread.start()
            probes.append(thread)
            n += 1
        time.sleep(1)
    load.stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    for thread in probes:  # the last probes wait for the syncs still under way
        thread.join(timeout=180)
    sampler.stop()
    stats = stripe.get("/_emulator/stats").json()
    verify = subprocess.run(
        [sys.executable, "-m", "billsync", "verify", "--json"],
        env={**os.environ, **env, "BILLSYNC_API_TOKEN": TOKEN},
        capture_output=True,
        check=False,
    )
    verified = json.loads(verify.stdout) if verify.stdout else {"ok": False}
    measured = [lag for _, lag in lags if lag is not None]
    per_minute = []
    minutes = max(1, int(args.seconds // 60))
    for minute in range(minutes):
        window = [lag for at, lag in lags if minute * 60 <= at < (minute + 1) * 60 and lag]
        sent = [s for at, s in progress if minute * 60 <= at < (minute + 1) * 60]
        rss = [
            r
            for t, r in sampler.samples
            if minute * 60 <= t - sampler.samples[0][0] < (minute + 1) * 60
        ]
        per_minute.append(
            {
                "minute": minute + 1,
                "events_per_second": (sent[-1] - sent[0]) / 60 if len(sent) > 1 else 0,
                "rss_mib": round(sum(rss) / len(rss) / 2**20, 1) if rss else None,
                "lag_p50_s": round(statistics.median(window), 2) if window else None,
                "lag_max_s": round(max(window), 2) if window else None,
            }
        )
    api.close()
    return {
        "benchmark": "soak",
        "machine": {"cpus": os.cpu_count()},
        "seconds": round(elapsed, 1),
        "target_events_per_second": round(rate),
        "events_per_second": round(load.sent / elapsed),
        "events_sent": load.sent,
        "events_accepted": load.accepted,
        "errors": len(load.errors),
        "error_samples": load.errors[:5],
        "batch_latency_ms": {
            "p50": round(percentile(load.batch_ms, 0.5), 1),
            "p99": round(percentile(load.batch_ms, 0.99), 1),
        },
        "server_rss_mib": {
            "first_minute": per_minute[0]["rss_mib"],
            "last_minute": per_minute[-1]["rss_mib"],
            "peak": round(sampler.peak_mib(), 1),
        },
        "sync_lag_s": {
            "probes": len(lags),
            "unanswered": len(lags) - len(measured),
            "p50": round(percentile(measured, 0.5), 2),
            "p99": round(percentile(measured, 0.99), 2),
            "max": round(max(measured, default=0), 2),
        },
        "stripe": {
            "requests": stats["total"],
            "rate_limited": stats["rate_limited"],
            "webhooks": stats["webhooks"],
        },
        "verify": {
            "ok": verified.get("ok"),
            "violations": verified.get("violations_by_kind"),
            "pending_lines": verified.get("pending_lines"),
        },
        "per_minute": per_minute,
        "data_dir": str(Path(directory).name),
    }


if __name__ == "__main__":
    main()
