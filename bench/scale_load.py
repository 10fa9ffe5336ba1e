"""The platform's load against Stripe's live limits: ``bench.scale``'s second part.

On PostgreSQL, N accounts; usage arriving all the time (heavy-tailed: every account gets some,
a few get most) while ``billsync serve`` syncs it to the emulator, which answers in 200 ms and
enforces Stripe's live limits (100 requests/s per mode, 25/s per endpoint —
https://docs.stripe.com/rate-limits). billsync runs with a live key's defaults and an interval
(half of N/25 s) that N accounts cannot meet at 25 ``update_lines``/s: the interval
stretches, and the figures say how evenly. billsync's clock is a shared file
(``BILLSYNC_CLOCK_FILE``) moved forward with the real one, so the month's end can be reached
without waiting for it.

Phases, one after the other on the real clock:

1. ``cold``: the first sync of every account (a customer, a draft, ``add_lines``), usage
   arriving meanwhile;
2. ``steady``: about one effective window. Freshness: a sample of tracked accounts gets known
   usage (274 cents an event) and a watcher reads their drafts' totals twice a second (outside
   the limit, ``/_emulator/peek/totals``): the time from an event's ``accepted`` to the draft
   holding it. On demand: ``POST /v1/accounts/{id}/sync`` on other accounts, once a second,
   while the interval backlog holds the budget. Calls per account-window: the interval lane's
   Stripe calls per sync (``billsync_sync_stripe_calls`` ÷ ``billsync_syncs``);
3. ``close``: the clock jumps to the month's end (grace 0, a review window of N/25 s, the
   length of one wave of N calls: as the default hour is for 100,000 accounts); usage keeps
   arriving (now for December). The duration until every November invoice is finalized, against
   the lower bound the limits allow: the last draft is complete no sooner than N
   ``update_lines`` at 25/s, and finalized no sooner than its review window later.

429s and failed syncs are counted over the whole run; the scheduler's tick from its histogram.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Connection, create_engine, text

from bench.common import RESULTS, TOKEN, api, billsync_server, free_port, start_emulator
from bench.freshness import CENTS_PER_EVENT
from billsync.clock import FileClock
from billsync.db import migrate
from billsync.db.database import Database

KEY = "sk_live_benchScaleLoad000000001"
START = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
MONTH_END = datetime(2026, 12, 1, tzinfo=UTC)
ENDPOINT_RATE = 25.0  # Stripe's default per endpoint
GLOBAL_RATE = 100.0  # Stripe's live mode
LATENCY = 0.2
METRICS = ("ip.ipv4.hours", "machine.shared-cpu-1x.seconds", "volume.gb_hours")


class SimulatedClock:
    """billsync's clock file, moved forward with the real clock (and jumped on demand)."""

    def __init__(self, path: Path, start: datetime) -> None:
        self.path = str(path)
        self._base = start
        self._began = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        FileClock.write(self.path, start)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> datetime:
        with self._lock:
            return self._base + timedelta(seconds=time.monotonic() - self._began)

    def jump(self, moment: datetime) -> None:
        with self._lock:
            self._base, self._began = moment, time.monotonic()
            FileClock.write(self.path, moment)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            with self._lock:  # never an older time written after a jump's newer one
                moment = self._base + timedelta(seconds=time.monotonic() - self._began)
                FileClock.write(self.path, moment)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class _Loop:
    """A background thread running ``_run`` until stopped (``_stop`` says when)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class Producer(_Loop):
    """Usage for every account, heavy-tailed: each second, a batch of ``uniform`` events for
    accounts drawn evenly (so that nearly every account has usage in every window) and
    ``tail`` for accounts drawn by a Zipf-like weight (a few get most of it)."""

    def __init__(self, port: int, accounts: list[str], clock: SimulatedClock) -> None:
        super().__init__()
        self.port, self.accounts, self.clock = port, accounts, clock
        self.uniform, self.tail = 200, 100
        self.events = self.failures = 0

    def _run(self) -> None:
        rng = random.Random(7)
        ranked = self.accounts[:]
        rng.shuffle(ranked)
        weights, total = [], 0.0
        for rank in range(len(ranked)):
            total += 1.0 / (rank + 1) ** 1.1
            weights.append(total)
        serial = 0
        while not self._stop.wait(1.0):
            chosen = rng.choices(self.accounts, k=self.uniform)
            chosen += rng.choices(ranked, cum_weights=weights, k=self.tail)
            at = (self.clock.now() - timedelta(seconds=1)).isoformat()
            batch = []
            for account in chosen:
                serial += 1
                quantity = max(1, int(rng.paretovariate(1.3) * 10))
                batch.append({"id": f"bg-{serial}", "account": account, "timestamp": at,
                              "metric": rng.choice(METRICS), "quantity": quantity})  # fmt: skip
            status, body = api(self.port, "POST", "/v1/usage", {"events": batch})
            if status == 200 and body["accepted"] == len(batch):
                self.events += len(batch)
            else:
                self.failures += 1


@dataclass
class Tracked:
    """Known usage on a few accounts, and when their drafts came to hold it."""

    port: int
    emulator_port: int
    invoices: dict[str, str]  # account → its November draft
    clock: SimulatedClock
    pace: float  # seconds between two events (over all tracked accounts)
    sent: dict[str, int] = field(default_factory=dict)
    pending: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    freshness: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sending: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self.sent = dict.fromkeys(self.invoices, 1)  # each holds its seed event
        self.pending = {account: [] for account in self.invoices}
        self._sending.set()
        for target in (self._send, self._watch):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _send(self) -> None:
        order = list(self.invoices)
        serial = 0
        while self._sending.is_set() and not self._stop.wait(self.pace):
            account = order[serial % len(order)]
            serial += 1
            event = {"id": f"tracked-{serial}", "account": account, "metric": "ip.ipv4.hours",
                     "quantity": 1000, "timestamp": self.clock.now().isoformat()}  # fmt: skip
            status, body = api(self.port, "POST", "/v1/usage", {"events": [event]})
            accepted = time.monotonic()
            if status != 200 or body["accepted"] != 1:
                raise RuntimeError(f"a tracked event was not accepted: {body}")
            with self._lock:
                self.sent[account] += 1
                self.pending[account].append((accepted, self.sent[account] * CENTS_PER_EVENT))

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            totals = emulator_control(
                self.emulator_port,
                "POST",
                "peek/totals",
                {"invoices": list(self.invoices.values())},
            )["totals"]
            seen = time.monotonic()
            with self._lock:
                for account, invoice in self.invoices.items():
                    waiting = self.pending[account]
                    while waiting and waiting[0][1] <= totals.get(invoice, 0):
                        self.freshness.append(seen - waiting.pop(0)[0])

    def stop_sending(self) -> None:
        self._sending.clear()

    def waiting(self) -> int:
        with self._lock:
            return sum(len(events) for events in self.pending.values())

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


class OnDemand(_Loop):
    """A customer opening the billing page once a second: an event, then an on-demand sync."""

    def __init__(self, port: int, accounts: list[str], clock: SimulatedClock) -> None:
        super().__init__()
        self.port, self.accounts, self.clock = port, accounts, clock
        self.latencies: list[float] = []
        self.answers: dict[str, int] = {}

    def _run(self) -> None:
        rng = random.Random(11)
        serial = 0
        while not self._stop.wait(1.0):
            account = rng.choice(self.accounts)
            serial += 1
            event = {"id": f"ondemand-{serial}", "account": account, "metric": "volume.gb_hours",
                     "quantity": 5, "timestamp": self.clock.now().isoformat()}  # fmt: skip
            api(self.port, "POST", "/v1/usage", {"events": [event]})
            began = time.monotonic()
            status, body = api(self.port, "POST", f"/v1/accounts/{account}/sync")
            took = time.monotonic() - began
            answer = body.get("sync", f"http {status}") if status == 200 else f"http {status}"
            self.answers[answer] = self.answers.get(answer, 0) + 1
            if answer != "recent":  # "recent": answered as it is, no sync (spacing)
                self.latencies.append(took)


def emulator_control(port: int, method: str, path: str, body: Any = None) -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request(
        method, f"/_emulator/{path}", body=None if body is None else json.dumps(body)
    )
    return json.loads(connection.getresponse().read())


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    page = connection.getresponse().read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def tick_figures(samples: Samples) -> dict[str, float]:
    """Mean tick from the histogram's sum and count; p99 as the bucket bound it falls under."""
    count = total(samples, "billsync_scheduler_tick_seconds_count")
    buckets = sorted(
        (float(dict(ls)["le"]), v)
        for (n, ls), v in samples.items()
        if n == "billsync_scheduler_tick_seconds_bucket"
    )
    p99 = next((bound for bound, seen in buckets if seen >= 0.99 * count), float("inf"))
    mean = total(samples, "billsync_scheduler_tick_seconds_sum") / max(count, 1)
    return {"ticks": count, "mean_ms": round(mean * 1000, 1), "p99_under_ms": p99 * 1000}


def cpu_busy(since: Any) -> float:
    """The machine's CPUs busy since ``since`` (``psutil.cpu_times()``), 0–1: whether the
    machine, rather than Stripe's limits, bounded a phase."""
    now = psutil.cpu_times()
    spent = sum(now) - sum(since)
    idle = (now.idle + getattr(now, "iowait", 0.0)) - (since.idle + getattr(since, "iowait", 0.0))
    return round(1 - idle / spent, 3) if spent > 0 else 0.0


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values) or [float("nan")]
    return {
        "samples": len(values),
        "p50_s": round(statistics.median(ordered), 3),
        "p99_s": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 3),
        "max_s": round(ordered[-1], 3),
    }


def wait_for(what: str, condition: Any, timeout: float, every: float = 1.0) -> float:
    """Seconds until ``condition()`` held; an error after ``timeout`` (stuck, not slow)."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            raise RuntimeError(f"{what}: not done after {timeout:.0f} s")
        time.sleep(every)
    return time.monotonic() - began


def insert_accounts(connection: Connection, accounts: int, now: datetime) -> None:
    """``acct-0000001`` … in bulk (SQL); their sync rows are the caller's."""
    connection.execute(
        text(
            "INSERT INTO accounts (id, name, currency, created_at, updated_at)"
            " SELECT 'acct-' || lpad(n::text, 7, '0'), 'Account ' || n, 'usd', :now, :now"
            " FROM generate_series(1, :n) AS n"
        ),
        {"n": accounts, "now": now},
    )


@contextlib.contextmanager
def _environment(
    url: str, accounts: int, interval: int, review_window: int
) -> Iterator[tuple[Database, SimulatedClock, int, int]]:
    emulator_port = free_port()
    emulator = start_emulator(emulator_port, rate_limit=None)  # Stripe's limits
    try:
        limits = {"rate_limit_live": GLOBAL_RATE, "rate_limit_endpoint": ENDPOINT_RATE}
        emulator_control(emulator_port, "POST", "config", limits)
        latency = {"endpoint": "*", "kind": "latency", "rate": 1.0, "seconds": LATENCY}
        emulator_control(emulator_port, "POST", "faults", latency)
        database = Database(url)
        migrate.upgrade(database)
        with database.transaction() as connection:
            insert_accounts(connection, accounts, START)
            connection.execute(
                text(
                    "INSERT INTO account_sync (account_id, consecutive_failures, stripe_calls,"
                    " updated_at, lease_generation, behind) SELECT id, 0, 0, :now, 0, false"
                    " FROM accounts"
                ),
                {"now": START},
            )
        with tempfile.TemporaryDirectory() as directory:
            clock = SimulatedClock(Path(directory) / "clock", START)
            port = free_port()
            env = {
                "BILLSYNC_DATA_DIR": directory,
                "BILLSYNC_DATABASE_URL": url,
                "BILLSYNC_CLOCK_FILE": clock.path,
                "BILLSYNC_STRIPE_API_KEY": KEY,
                "BILLSYNC_STRIPE_API_BASE": f"http://127.0.0.1:{emulator_port}",
                "BILLSYNC_SYNC_POLICY": "interval",
                "BILLSYNC_SYNC_INTERVAL_SECONDS": str(interval),
                "BILLSYNC_SYNC_WORKERS": os.environ.get("BENCH_SYNC_WORKERS", "16"),
                "BILLSYNC_SCHEDULER_TICK_SECONDS": "1",
                "BILLSYNC_CLOSE_GRACE_SECONDS": "0",
                "BILLSYNC_REVIEW_WINDOW_SECONDS": str(review_window),
                "BILLSYNC_RECONCILE_INTERVAL_SECONDS": "0",
                "BILLSYNC_LOG_LEVEL": "warning",
                "BILLSYNC_LOG_FORMAT": "json",
            }
            try:
                RESULTS.mkdir(parents=True, exist_ok=True)
                log = RESULTS / f"scale_load_{accounts}.log"
                with billsync_server(env, port, log_path=log):
                    yield database, clock, port, emulator_port
            finally:
                clock.stop()
                database.dispose()
    finally:
        emulator.terminate()
        try:
            emulator.wait(timeout=15)
        except subprocess.TimeoutExpired:
            emulator.kill()  # the figures are taken: do not lose them to a slow stop
            emulator.wait()


def _close_phases(engine: Any, review_window: int) -> dict[str, dict[str, float]]:
    """When, after the month's end (billsync's clock, which moves with the real one), the
    November drafts were whole (their window's start), their finalize asked, and done: first,
    median and last, in seconds — where a close's time goes."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT review_ends_at, finalize_requested_at, finalized_at FROM billing_periods"
                " WHERE start = DATE '2026-11-01'"
            )
        ).all()
    window = timedelta(seconds=review_window)
    moments = {
        "draft_whole": [r[0] - window for r in rows if r[0] is not None],
        "finalize_asked": [r[1] for r in rows if r[1] is not None],
        "finalized": [r[2] for r in rows if r[2] is not None],
    }
    return {
        phase: {
            "first_s": round(min(seconds), 1),
            "median_s": round(statistics.median(seconds), 1),
            "last_s": round(max(seconds), 1),
        }
        for phase, values in moments.items()
        if (seconds := [(v - MONTH_END).total_seconds() for v in values])
    }


def run(url: str, accounts: int, *, windows: float = 1.0) -> dict[str, Any]:
    names = [f"acct-{n:07d}" for n in range(1, accounts + 1)]
    window = accounts / ENDPOINT_RATE  # what N accounts can have at 25 update_lines/s
    interval = max(2, round(window / 2))  # asked for: more than the limits allow
    review_window = round(window)
    engine = create_engine(url)

    def scalar(query: str) -> int:
        with engine.connect() as connection:
            return int(connection.execute(text(query)).scalar_one())

    with _environment(url, accounts, interval, review_window) as (
        _database,
        clock,
        port,
        emulator_port,
    ):
        rng = random.Random(3)
        tracked_names = rng.sample(names, min(40, max(4, accounts // 25)))
        background = sorted(set(names) - set(tracked_names))
        at = clock.now().isoformat()
        seed = [{"id": f"seed-{name}-{metric}", "account": name, "metric": metric,
                 "quantity": 1000 if metric == "ip.ipv4.hours" else 10, "timestamp": at}
                for name in names for metric in METRICS
                if name in background or metric == "ip.ipv4.hours"]  # fmt: skip
        for start in range(0, len(seed), 5000):
            status, body = api(port, "POST", "/v1/usage", {"events": seed[start : start + 5000]})
            assert status == 200 and body["accepted"] == len(seed[start : start + 5000]), body  # noqa: PT018
        producer = Producer(port, background, clock)
        producer.start()
        began = scrape(port)

        # 1. cold: every account's first sync.
        cold = wait_for(
            "the first sync of every account",
            lambda: scalar("SELECT count(*) FROM account_sync WHERE last_synced_at IS NULL") == 0,
            timeout=6 * window + 300,
        )

        # 2. steady: about one effective window of freshness and on-demand samples.
        with engine.connect() as connection:
            invoices: dict[str, str] = dict(
                connection.execute(
                    text(
                        "SELECT account_id, stripe_invoice_id FROM billing_periods"
                        " WHERE start = DATE '2026-11-01' AND account_id = ANY(:ids)"
                    ),
                    {"ids": tracked_names},
                ).all()
            )
        steady_before = scrape(port)
        calls_before = emulator_control(emulator_port, "GET", "stats")
        tracked = Tracked(port, emulator_port, invoices, clock,
                          pace=window / 6 / len(tracked_names))  # fmt: skip
        on_demand = OnDemand(port, background, clock)
        tracked.start()
        on_demand.start()
        effective: list[float] = []
        steady_began, steady_cpu = time.monotonic(), psutil.cpu_times()
        while time.monotonic() - steady_began < windows * window:
            time.sleep(5)
            effective.append(total(scrape(port), "billsync_sync_effective_interval_seconds"))
        tracked.stop_sending()
        on_demand.stop()
        wait_for("the tracked usage on Stripe", lambda: tracked.waiting() == 0, 4 * window + 120)
        tracked.stop()
        steady_busy = cpu_busy(steady_cpu)
        steady_after = scrape(port)
        calls_after = emulator_control(emulator_port, "GET", "stats")

        # 3. close: the month ends; usage goes on (for December).
        close_stats = emulator_control(emulator_port, "GET", "stats")
        close_before = scrape(port)
        clock.jump(MONTH_END + timedelta(seconds=1))
        jumped, close_cpu = time.monotonic(), psutil.cpu_times()
        timeline: list[dict[str, Any]] = []

        def closed() -> bool:
            with engine.connect() as connection:
                counts: dict[str, int] = dict(connection.execute(text(
                    "SELECT status, count(*) FROM billing_periods"
                    " WHERE start = DATE '2026-11-01' GROUP BY status")).all())  # fmt: skip
            timeline.append({"at_s": round(time.monotonic() - jumped, 1), **counts})
            return bool(counts.get("finalized", 0) == accounts)

        close = wait_for("every November invoice finalized", closed, 6 * window + 300)
        close_busy = cpu_busy(close_cpu)
        close_phases = _close_phases(engine, review_window)
        producer.stop()
        ended = scrape(port)
        stats = emulator_control(emulator_port, "GET", "stats")
    engine.dispose()

    def moved(name: str, before: Samples, after: Samples, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    interval_syncs = moved("billsync_syncs_total", steady_before, steady_after,
                           lane="interval", result="synced")  # fmt: skip
    interval_calls = moved("billsync_sync_stripe_calls_total", steady_before, steady_after,
                           lane="interval")  # fmt: skip
    finalized = stats["by_endpoint"].get("POST /v1/invoices/{id}/finalize", 0) - close_stats[
        "by_endpoint"
    ].get("POST /v1/invoices/{id}/finalize", 0)
    bound = accounts / ENDPOINT_RATE + review_window + 2 * LATENCY
    freshness = summary(tracked.freshness)
    effective_interval = statistics.median(effective) if effective else float("nan")
    return {
        "accounts": accounts,
        "configured_interval_s": interval,
        "window_at_25_per_s": round(window, 1),
        "cold_seconds": round(cold, 1),
        "tick": tick_figures(ended),
        "effective_interval_s": round(effective_interval, 1),
        "effective_interval_max_s": round(max(effective, default=float("nan")), 1),
        "freshness": freshness,
        "freshness_p99_over_effective": round(freshness["p99_s"] / effective_interval, 3),
        "on_demand": {**summary(on_demand.latencies), "answers": on_demand.answers},
        "interval_syncs": int(interval_syncs),
        "calls_per_account_window": round(interval_calls / max(interval_syncs, 1), 3),
        "steady_calls_by_endpoint": {
            endpoint: count - calls_before["by_endpoint"].get(endpoint, 0)
            for endpoint, count in calls_after["by_endpoint"].items()
            if count - calls_before["by_endpoint"].get(endpoint, 0)
        },
        "review_window_s": review_window,
        "close_seconds": round(close, 1),
        "cpu_busy": {"steady": steady_busy, "close": close_busy},
        "close_lower_bound_s": round(bound, 1),
        "close_over_bound": round(close / bound, 3),
        "close_finalize_calls": finalized,
        "close_phases": close_phases,
        "close_syncs": {
            lane: {
                "syncs": int(syncs),
                "calls_per_sync": round(
                    moved("billsync_sync_stripe_calls_total", close_before, ended, lane=lane)
                    / max(syncs, 1),
                    2,
                ),
                "mean_s": round(
                    moved("billsync_sync_seconds_sum", close_before, ended, lane=lane)
                    / max(syncs, 1),
                    3,
                ),
            }
            for lane in ("on_demand", "closing", "threshold", "interval")
            if (syncs := moved("billsync_sync_seconds_count", close_before, ended, lane=lane))
        },
        "close_timeline": timeline[:: max(1, len(timeline) // 20)] + timeline[-1:],
        "usage_events": producer.events,
        "usage_batches_refused": producer.failures,
        "failed_syncs": int(moved("billsync_syncs_total", began, ended, result="failed")),
        "stripe_calls": stats["total"],
        "rate_limited_429": stats["rate_limited"],
        "budget_slots_given_up_late": int(total(ended, "billsync_stripe_shared_budget_late_total")),
    }
