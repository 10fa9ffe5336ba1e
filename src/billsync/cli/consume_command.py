"""``billsync consume``: usage events from a NATS JetStream stream into the ledger."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import IO, Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy.exc import DBAPIError

from billsync.bootstrap import Billsync
from billsync.cli.common import DATABASE_WAIT_SECONDS, console, errors, fail, open_billsync
from billsync.errors import BillsyncError
from billsync.jetstream import ConsumerSpec, ConsumerState, JetStreamError, JetStreamSource
from billsync.observability.metrics import serve_metrics
from billsync.runtime import settle_heap
from billsync.services.stream import RejectsLog, StreamConsumer, StreamOptions, StreamStats

NATS_WAIT_SECONDS = 60.0  # how long a starting consumer waits for NATS (as for its database)
FAULT_EXIT_CODE = 75
T = TypeVar("T")


def consume_command(
    *,
    nats_url: Annotated[
        str, typer.Option("--nats", metavar="URL", help="NATS server, e.g. nats://127.0.0.1:4222.")
    ],
    stream: Annotated[
        str, typer.Option("--stream", metavar="NAME", help="The JetStream stream to read.")
    ],
    durable: Annotated[
        str,
        typer.Option(
            metavar="NAME",
            help="Durable pull consumer (created if missing; processes sharing it share the work).",
        ),
    ] = "billsync",
    subject: Annotated[
        str | None,
        typer.Option(
            metavar="SUBJECT",
            help="Only this subject (wildcards allowed), when creating the consumer.",
            show_default="every subject of the stream",
        ),
    ] = None,
    batch: Annotated[
        int,
        typer.Option(metavar="N", min=1, max=20_000, help="Messages per pull, committed as one."),
    ] = 2000,
    rejects: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Append rejected events, with where they came from and why (JSONL).",
        ),
    ] = None,
    max_events: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            min=1,
            help="Stop once this many events were handled.",
            show_default="never",
        ),
    ] = None,
    exit_when_idle: Annotated[
        float | None,
        typer.Option(
            min=0.1,
            metavar="SECONDS",
            help="Stop after this long without a message.",
            show_default="never",
        ),
    ] = None,
    ack_wait: Annotated[
        float,
        typer.Option(
            min=1.0,
            metavar="SECONDS",
            help="Redelivery delay of an unacked message, when creating the consumer.",
        ),
    ] = 30.0,
    max_ack_pending: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            min=1,
            help="Messages out without an ack, across all processes, when creating the consumer.",
            show_default="50,000 or 8 batches, the more",
        ),
    ] = None,
    fault_exit_after_commit: Annotated[
        int | None,
        typer.Option(
            hidden=True,
            help="Fault injection for tests: exit at once, without acking, right after "
            "committing batch N — as a crash there would.",
        ),
    ] = None,
) -> None:
    """Consume usage events from a NATS JetStream stream: each message is one event (a JSON
    object as in POST /v1/usage), a JSON array of events, or JSON Lines. Messages are acked
    only once their events are committed; rejected events are logged (and appended to
    --rejects) and acked. Ctrl-C or SIGTERM finishes the batch in flight, then stops. Exit 1
    if any event was rejected, as ingest does."""
    spec = ConsumerSpec(
        stream=stream,
        durable=durable,
        subject=subject,
        ack_wait=ack_wait,
        max_ack_pending=max_ack_pending or max(50_000, 8 * batch),
    )
    options = StreamOptions(batch=batch, max_events=max_events, exit_when_idle=exit_when_idle)
    billsync = open_billsync(wait=DATABASE_WAIT_SECONDS)
    try:
        serve_metrics(billsync, billsync.settings.metrics_port)  # ingest counters, backlog gauges
    except OSError as error:
        billsync.close()
        raise fail(
            f"cannot serve /metrics on port {billsync.settings.metrics_port} ({error.strerror}): "
            "choose another with BILLSYNC_METRICS_PORT"
        ) from None
    out = rejects.open("ab") if rejects else None
    try:
        stats, state = _run(
            _consume(
                billsync,
                nats_url,
                spec,
                options,
                out=out,
                fault_exit_after_commit=fault_exit_after_commit,
            )
        )
    except JetStreamError as error:
        raise fail(str(error)) from None
    except DBAPIError as error:
        raise fail(
            f"the database refused a batch ({error.orig or error}); its messages were handed "
            "back to JetStream"
        ) from None
    except BillsyncError as error:  # e.g. catalog_outdated: restart with the applied catalog
        raise fail(f"{error.message}; the batch's messages were handed back to JetStream") from None
    finally:
        if out is not None:
            out.close()
        billsync.close()
    print_summary(stats, state)
    if stats.rejected:
        raise typer.Exit(1)


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """On uvloop where there is one (the client's parsing and callbacks run faster on it)."""
    if sys.platform == "win32":
        return asyncio.run(coroutine)
    import uvloop  # noqa: PLC0415 - not installed on Windows

    return uvloop.run(coroutine)


async def _consume(
    billsync: Billsync,
    nats_url: str,
    spec: ConsumerSpec,
    options: StreamOptions,
    *,
    out: IO[bytes] | None,
    fault_exit_after_commit: int | None,
) -> tuple[StreamStats, ConsumerState | None]:
    source = JetStreamSource(nats_url, spec)
    try:
        await source.connect(NATS_WAIT_SECONDS)
        console.print(
            f"[bold]billsync consume[/]: stream {escape(spec.stream)}, consumer "
            f"{escape(spec.durable)} (ack wait {source.ack_wait:g} s), batches of "
            f"{options.batch:,} into {billsync.database.dialect}; Ctrl-C to stop",
            highlight=False,
        )
        stop = asyncio.Event()
        _on_signals(stop)
        settle_heap()  # connected, built: the long-lived heap is all here

        def crash(number: int) -> None:
            if fault_exit_after_commit is not None and number >= fault_exit_after_commit:
                errors.print(f"fault injection: exiting after committing batch {number}, unacked")
                sys.stderr.flush()
                os._exit(FAULT_EXIT_CODE)

        consumer = StreamConsumer(
            billsync.ingest,
            source,
            options,
            rejects=RejectsLog(out) if out is not None else None,
            on_progress=ProgressLine(),
            after_commit=crash if fault_exit_after_commit is not None else None,
        )
        stats = await consumer.run(stop)
        try:
            state: ConsumerState | None = await source.state()
        except JetStreamError:  # the summary can do without it
            state = None
    finally:
        await source.close()
    return stats, state


def _on_signals(stop: asyncio.Event) -> None:
    """The first SIGINT or SIGTERM stops after the batch in flight; a second one, at once
    (its messages are then redelivered after the ack wait)."""
    loop = asyncio.get_running_loop()

    def first(signum: int) -> None:
        console.print(
            f"{signal.Signals(signum).name}: finishing the batch in flight, then stopping "
            "(again to stop at once)"
        )
        stop.set()
        for each in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(each)

    for each in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(each, first, each)


class ProgressLine:
    """A line every few seconds: events/s since the last line, the tallies, how far behind."""

    def __init__(self) -> None:
        self._last_events = 0
        self._last_time = time.monotonic()

    def __call__(self, stats: StreamStats) -> None:
        now = time.monotonic()
        elapsed = now - self._last_time
        rate = (stats.events - self._last_events) / elapsed if elapsed > 0 else 0.0
        self._last_events, self._last_time = stats.events, now
        if stats.waiting_for_database is not None:
            console.print(
                f"[yellow]database unavailable[/] ({escape(stats.waiting_for_database)}): "
                f"nothing acked, retrying ({stats.retries} so far)",
                highlight=False,
            )
            return
        behind = "" if stats.behind is None else f"  {stats.behind:,} behind"
        console.print(
            f"{stats.events:,} events  {rate:,.0f}/s  accepted {stats.accepted:,}  "
            f"duplicates {stats.duplicates:,}  rejected {stats.rejected:,}{behind}",
            highlight=False,
        )


def print_summary(stats: StreamStats, state: ConsumerState | None) -> None:
    table = Table(title="consumed")
    columns = ("messages", "events", "accepted", "duplicates", "rejected", "events/s")
    for column in columns:
        table.add_column(column, justify="right")
    table.add_row(
        *(f"{n:,}" for n in (stats.messages, stats.events, stats.accepted, stats.duplicates)),
        f"{stats.rejected:,}",
        f"{stats.rate():,.0f}",
    )
    console.print(table)
    for code, (count, message) in sorted(stats.rejections.items()):
        errors.print(escape(f"rejected: {code} ×{count:,}, the first: {message}"), highlight=False)
    console.print(
        f"consumed {stats.events:,} events from {stats.messages:,} messages in "
        f"{stats.busy_seconds():.1f} s: {stats.accepted:,} accepted, {stats.duplicates:,} "
        f"duplicates, {stats.rejected:,} rejected ({stats.malformed_messages:,} messages not JSON)",
        highlight=False,
        soft_wrap=True,
    )
    if state is not None:
        console.print(
            f"consumer: {state.pending:,} messages not yet delivered, {state.ack_pending:,} "
            f"awaiting an ack",
            highlight=False,
        )
