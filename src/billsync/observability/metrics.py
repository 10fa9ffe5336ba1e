"""Prometheus metrics of a billsync process: its own counters and histograms
(:mod:`billsync.observability.instruments`) and two collectors read at scrape time.

- :class:`BacklogCollector` reads the database: lines not yet in Stripe, how old the oldest such
  change is, the webhook inbox's backlog. Every process reports the same global truth, so any
  one of them can be scraped for it; a database that cannot be read makes
  ``billsync_database_up`` 0, never the scrape fail.
- :class:`SchedulerCollector` reads this process's Stripe rate budget, circuit breaker and sync
  queue, through the snapshots they offer.

The API serves the lot at ``GET /metrics``; a process without HTTP (``billsync worker``) on
``BILLSYNC_METRICS_PORT`` with :func:`serve_metrics`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from billsync.clock import Clock
from billsync.db.database import Database
from billsync.repositories import observability as repository
from billsync.sync.shared_budget import SharedEndpoints

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from billsync.bootstrap import Billsync, Syncing

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own variable

log = logging.getLogger("billsync.metrics")

CIRCUIT_STATES = ("closed", "open", "half_open")


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class BacklogCollector:
    """How far Stripe and the webhook processor are behind, read from the database."""

    def __init__(self, database: Database, clock: Clock) -> None:
        self.database = database
        self.clock = clock
        # One reading at a time: scrapes that arrive while one is stuck on a hanging database
        # answer at once (database down) instead of each holding a thread and a connection.
        self._reading = threading.Lock()

    def collect(self) -> Sequence[Metric]:
        up = GaugeMetricFamily(
            "billsync_database_up",
            "1 when this scrape could read billsync's database; 0 when it could not (the "
            "backlog metrics are then missing from the scrape).",
        )
        if not self._reading.acquire(blocking=False):
            up.add_metric([], 0)
            return [up]
        try:
            with self.database.read() as connection:
                backlog = repository.backlog(connection)
        except (SQLAlchemyError, OSError) as error:
            cause = error.orig if isinstance(error, DBAPIError) and error.orig else error
            log.warning("metrics.database.unreadable", extra={"error": type(cause).__name__})
            up.add_metric([], 0)
            return [up]
        finally:
            self._reading.release()
        up.add_metric([], 1)
        now = self.clock.now()

        def age(moment: datetime | None) -> float:
            return 0.0 if moment is None else max(0.0, (now - moment).total_seconds())

        return [
            up,
            _gauge(
                "billsync_sync_dirty_lines",
                "Invoice lines whose amount in Stripe is not the ledger's yet.",
                backlog.dirty_lines,
            ),
            _gauge(
                "billsync_sync_dirty_accounts",
                "Accounts with at least one line not in step with Stripe.",
                backlog.dirty_accounts,
            ),
            _gauge(
                "billsync_sync_lag_seconds",
                "Age of the oldest change not yet in Stripe: seconds since the least recently "
                "changed out-of-step line changed (0 when every line is in step).",
                age(backlog.oldest_dirty_change),
            ),
            _gauge(
                "billsync_sync_behind_accounts",
                "Accounts in the due queue: changes Stripe does not hold yet (the backlog the "
                "rate budget has to work through).",
                backlog.behind_accounts,
            ),
            _gauge(
                "billsync_sync_effective_interval_seconds",
                "Seconds since the least recently synced account with changes was last synced: "
                "the interval billsync actually achieves. Above the configured interval, the "
                "budget (or Stripe's per-endpoint limit) cannot keep up: see billsync capacity.",
                age(backlog.oldest_behind_sync),
            ),
            _gauge(
                "billsync_webhook_unhandled_events",
                "Stripe events in the webhook inbox not handled yet.",
                backlog.unhandled_webhooks,
            ),
            _gauge(
                "billsync_webhook_lag_seconds",
                "Seconds since the oldest unhandled Stripe event arrived in the inbox (0 when "
                "every event is handled).",
                age(backlog.oldest_unhandled_webhook),
            ),
        ]


class SchedulerCollector:
    """This process's Stripe rate budget, circuit breaker and sync queue. ``syncing`` is asked
    at every scrape (None: no Stripe key, nothing to report)."""

    def __init__(self, syncing: Callable[[], Syncing | None]) -> None:
        self.syncing = syncing

    def collect(self) -> Sequence[Metric]:
        syncing = self.syncing()
        if syncing is None:
            return []
        try:
            return [
                *self._budget(syncing),
                *self._shared_budget(syncing),
                *self._breaker(syncing),
                self._queue(syncing),
                *self._leases(syncing),
            ]
        except Exception:  # a broken snapshot must not take the other metrics down with it
            log.exception("metrics.scheduler.unreadable")
            return []

    @staticmethod
    def _budget(syncing: Syncing) -> list[Metric]:
        snapshot = syncing.guard.budget.snapshot()
        per_lane: list[Metric] = []
        for name, documentation, counts in (
            ("billsync_stripe_budget_granted", "Stripe calls the budget let through, by lane.",
             snapshot["granted"]),
            ("billsync_stripe_budget_waited", "Stripe calls that had to wait for the budget, "
             "by lane.", snapshot["waited"]),
            ("billsync_stripe_budget_timed_out", "Stripe calls that gave up waiting for the "
             "budget, by lane.", snapshot["timed_out"]),
        ):  # fmt: skip
            counter = CounterMetricFamily(name, documentation, labels=["lane"])
            for lane, count in counts.items():
                counter.add_metric([lane.lower()], count)
            per_lane.append(counter)
        waiting = GaugeMetricFamily(
            "billsync_stripe_budget_waiting",
            "Stripe calls waiting for the budget now, by lane.",
            labels=["lane"],
        )
        for lane, count in snapshot["waiting"].items():
            waiting.add_metric([lane.lower()], count)
        return [
            _gauge("billsync_stripe_budget_rate", "Stripe calls per second this process's "
                   "budget allows.", snapshot["rate"]),
            _gauge("billsync_stripe_budget_tokens", "Stripe calls the budget could let through "
                   "at once now.", snapshot["tokens"]),
            _gauge("billsync_stripe_budget_penalty_seconds", "Seconds left of the pause every "
                   "worker takes after Stripe answered 429.", snapshot["penalized_for"]),
            CounterMetricFamily("billsync_stripe_budget_penalties", "Pauses taken after Stripe "
                                "answered 429.", value=snapshot["penalties"]),
            *per_lane,
            waiting,
        ]  # fmt: skip

    @staticmethod
    def _shared_budget(syncing: Syncing) -> list[Metric]:
        shared = syncing.guard.shared
        if shared is None:
            return []
        snapshot = shared.snapshot()  # one read of the shared row
        endpoints = syncing.guard.shared_endpoint
        endpoints_late = endpoints.late() if isinstance(endpoints, SharedEndpoints) else 0
        return [
            _gauge("billsync_stripe_shared_budget_ahead_seconds", "How far ahead of now the "
                   "shared budget's reservations run (every process together).",
                   snapshot["ahead"]),
            CounterMetricFamily("billsync_stripe_shared_budget_granted", "Stripe call slots "
                                "the shared budget gave out, to every process.",
                                value=snapshot["granted"]),
            CounterMetricFamily("billsync_stripe_shared_budget_deferred", "Times this process "
                                "waited before reserving (background lanes keep the queue "
                                "short).", value=snapshot["deferred_here"]),
            CounterMetricFamily("billsync_stripe_shared_budget_late", "Call slots this process "
                                "gave up because its thread woke too late for them (a pause), "
                                "the global budget's and the endpoints'.",
                                value=snapshot["late_here"] + endpoints_late),
        ]  # fmt: skip

    @staticmethod
    def _leases(syncing: Syncing) -> list[Metric]:
        leases = syncing.scheduler.leases
        if leases is None:
            return []
        held = leases.held_counts()
        return [
            _gauge("billsync_leases_held", "Account leases this process holds: syncing now.",
                   held["syncing"]),
            _gauge("billsync_leases_claimed", "Account leases this process holds: claimed, "
                   "queued for a sync.", held["claimed"]),
            _gauge("billsync_scheduler_leader", "1 while this process runs the lifecycle and "
                   "periodic jobs (holds the scheduler lease).", 1 if leases.leading() else 0),
        ]  # fmt: skip

    @staticmethod
    def _breaker(syncing: Syncing) -> list[Metric]:
        snapshot = syncing.guard.breaker.snapshot()
        state = GaugeMetricFamily(
            "billsync_stripe_circuit_state",
            "The circuit breaker in front of Stripe: 1 for its current state (closed: calls go "
            "through; open: paused after repeated failures; half_open: one probe at a time).",
            labels=["state"],
        )
        for name in CIRCUIT_STATES:
            state.add_metric([name], 1 if snapshot["state"] == name else 0)
        return [
            state,
            CounterMetricFamily(
                "billsync_stripe_circuit_opened",
                "Times the circuit breaker opened (Stripe failing repeatedly).",
                value=snapshot["times_opened"],
            ),
        ]

    @staticmethod
    def _queue(syncing: Syncing) -> Metric:
        depth = GaugeMetricFamily(
            "billsync_sync_queue_depth",
            "Accounts queued for a sync in this process and not running yet, by lane.",
            labels=["lane"],
        )
        for lane, count in syncing.scheduler.depth().items():
            depth.add_metric([lane.lower()], count)
        return depth


def register(billsync: Billsync, registry: CollectorRegistry) -> None:
    """Add the scrape-time collectors for ``billsync`` to ``registry``."""
    registry.register(BacklogCollector(billsync.database, billsync.clock))
    registry.register(SchedulerCollector(lambda: billsync.sync))


def registry_for(billsync: Billsync) -> CollectorRegistry:
    """Everything a scrape of this process reports: the process-wide counters and histograms
    (with the process's CPU, memory and GC metrics) and ``billsync``'s collectors. One registry
    per application, so that several in one process (tests) never collide."""
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROCESS_DIR):
        # Several API processes (`billsync api --workers N`): each writes its counters to a
        # file there and whichever answers the scrape sums them all, so rates stay right.
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped upstream
    else:
        registry.register(REGISTRY)
    register(billsync, registry)
    return registry


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The scrape's body and content type: Prometheus's text format, or OpenMetrics when the
    scraper asks for it."""
    encode, content_type = choose_encoder(accept or "")
    return encode(registry), content_type


@dataclass
class MetricsServer:
    """The HTTP server of :func:`serve_metrics`, in a daemon thread."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(
    billsync: Billsync, port: int | None, *, host: str | None = None
) -> MetricsServer | None:
    """Serve ``/metrics`` on ``port`` (0: any free one) for a process without an HTTP API,
    such as ``billsync worker``; None does nothing. It listens on ``host``, by default the
    interface the API listens on (``BILLSYNC_HOST``)."""
    if port is None:
        return None
    address = host if host is not None else billsync.settings.host
    server, thread = start_http_server(port, addr=address, registry=registry_for(billsync))
    log.info("metrics.serving", extra={"host": address, "port": server.server_port})
    return MetricsServer(server, thread)
