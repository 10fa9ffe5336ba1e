"""The process's own counters and histograms, updated where the work happens: ingest, Stripe
requests, HTTP requests. They live in prometheus_client's default registry, with the process's
CPU, memory and garbage-collector metrics; :mod:`billsync.observability.metrics` adds the
numbers read from the database and from the scheduler at scrape time.

Every label has a bounded set of values: results, route templates, Stripe endpoints with their
ids replaced — never an account, an event or an invoice id.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from prometheus_client import Counter, Histogram, disable_created_metrics

# A ``<name>_created`` series per counter and histogram doubles the series and says nothing a
# scrape's own restart detection does not.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client

INGEST_EVENTS = Counter(
    "billsync_ingest_events",
    "Usage events ingested, by result: accepted (stored and billed), duplicate (an id already "
    "stored: ignored) or rejected (invalid, or an id reused with a different payload).",
    ["result"],
)
for _result in ("accepted", "duplicate", "rejected"):
    INGEST_EVENTS.labels(_result)
INGEST_BATCHES = Counter(
    "billsync_ingest_batches",
    "Batches of usage events committed: an HTTP request (one each, even when requests are "
    "group-committed together), a chunk of a file, a pull of messages from the stream.",
)
STRIPE_REQUESTS = Counter(
    "billsync_stripe_requests",
    "HTTP requests to Stripe, retries included, by endpoint (method and path, ids as {id}) and "
    "status (the HTTP status, or network_error when no answer came).",
    ["endpoint", "status"],
)
STRIPE_RATE_LIMITED = Counter(
    "billsync_stripe_rate_limited",
    "Stripe answers 429 (rate limited, or a lock timeout), retries included.",
)
STRIPE_DURATION = Histogram(
    "billsync_stripe_request_duration_seconds",
    "How long each HTTP request to Stripe took, answer or not, by endpoint.",
    ["endpoint"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
HTTP_REQUESTS = Counter(
    "billsync_http_requests",
    "HTTP requests answered by billsync's API, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "billsync_http_request_duration_seconds",
    "How long billsync's API took to answer, by method and route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

SCHEDULER_TICK = Histogram(
    "billsync_scheduler_tick_seconds",
    "How long one scheduler tick took: the lifecycle's steps when this process leads, then "
    "reading the due accounts and claiming them (a running worker's periodic jobs — webhooks, "
    "sweep, reconciliation — have a thread of their own).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
SYNCS = Counter(
    "billsync_syncs",
    "Account syncs run by the scheduler's workers, by lane (on_demand, closing, threshold, "
    "interval) and result: synced, failed, or skipped (another process was syncing it, or an "
    "on-demand request came too soon after the last sync).",
    ["lane", "result"],
)
SYNC_CALLS = Counter(
    "billsync_sync_stripe_calls",
    "Stripe calls made by the scheduler's syncs, by lane: with billsync_syncs, the calls per "
    "sync (one update_lines when only amounts changed).",
    ["lane"],
)
SYNC_DURATION = Histogram(
    "billsync_sync_seconds",
    "How long one account's sync took in a worker, by lane: waits for the budget and for Stripe "
    "included (with the rate and the number of workers, what bounds a backlog's pace).",
    ["lane"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)

# How many callers' batches the current ingest transaction stores: the group committer stores
# the batches of several requests in one transaction, and each of them is still one batch.
_BATCHES_IN_TRANSACTION: ContextVar[int] = ContextVar("billsync_batches", default=1)


@contextmanager
def batches_in_transaction(count: int) -> Iterator[None]:
    """The ingest transaction run inside this block stores ``count`` callers' batches."""
    token = _BATCHES_IN_TRANSACTION.set(count)
    try:
        yield
    finally:
        _BATCHES_IN_TRANSACTION.reset(token)


def observe_ingest(accepted: int, duplicates: int, rejected: int) -> None:
    """A committed ingest transaction and the results of its events."""
    INGEST_BATCHES.inc(_BATCHES_IN_TRANSACTION.get())
    for result, count in (("accepted", accepted), ("duplicate", duplicates),
                          ("rejected", rejected)):  # fmt: skip
        if count:
            INGEST_EVENTS.labels(result).inc(count)


def observe_stripe(endpoint: str, status: int | None, seconds: float) -> None:
    """One HTTP request to Stripe; ``status`` None: no answer (timeout, lost connection)."""
    STRIPE_REQUESTS.labels(endpoint, "network_error" if status is None else str(status)).inc()
    STRIPE_DURATION.labels(endpoint).observe(seconds)
    if status == 429:
        STRIPE_RATE_LIMITED.inc()


def observe_tick(seconds: float) -> None:
    SCHEDULER_TICK.observe(seconds)


def observe_sync(lane: str, result: str, calls: int, seconds: float) -> None:
    """One sync run by a worker: ``result`` is synced, failed or skipped."""
    SYNCS.labels(lane, result).inc()
    SYNC_DURATION.labels(lane).observe(seconds)
    if calls:
        SYNC_CALLS.labels(lane).inc(calls)


def observe_http(method: str, route: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_DURATION.labels(method, route).observe(seconds)
