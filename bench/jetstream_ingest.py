"""Streaming ingestion end to end: events in a JetStream stream, `billsync consume` processes
committing them into the ledger.

    .venv/bin/python -m bench.jetstream_ingest [--events 1000000] [--stores postgresql,sqlite]
        [--consumers 1,2] [--batch 2000] [--quick] [--profile]

N events (200 accounts, 6 metrics, one event per message) are published into a fresh stream
first. Then, for each store and each number of consumer processes: a fresh ledger, a fresh
durable consumer on that stream, and that many `billsync consume` processes sharing it. The
clock runs from the first delivery to the moment the server has every message acked, so process
start-up is not counted; the figures are checked against the ledger (every event stored once).
Each run also reports the CPU seconds per 1,000 events of the consumers, PostgreSQL and the NATS
server (2 CPUs are shared by all of them), and the baseline measured in the same run: the same
events through `billsync ingest FILE` (JSON Lines, batches of 1,000, its start-up subtracted) and
through `billsync consume --batch 1` (one transaction per message, on the first events only).

`--profile` consumes in-process under cProfile instead (both the event loop and the thread that
commits) and prints where the time goes. Writes bench/results/jetstream_ingest.json
(bench/results/jetstream_ingest_batched.json with ``--events-per-message`` above 1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import nats
import orjson
import psutil

from bench.common import RESULTS, postgres_schema, write_results
from billsync.bootstrap import build
from billsync.config import Settings
from billsync.core.usage import Rejection, ValidEvent
from billsync.db import migrate
from billsync.db.database import Database
from billsync.jetstream import ConsumerSpec, JetStreamSource
from billsync.services.accounts import NewAccount
from billsync.services.ingest import IngestReport
from billsync.services.stream import StreamConsumer, StreamOptions

METRICS = [
    ("machine.shared-cpu-1x.seconds", None),
    ("machine.performance-2x.seconds", None),
    ("volume.gb_hours", None),
    ("bandwidth.egress.na-eu.gb", ["iad", "ord", "cdg", "fra"]),
    ("bandwidth.egress.apac-sa.gb", ["nrt", "syd", "gru"]),
    ("ip.ipv4.hours", None),
]
SUBJECT = "bench.usage"


def make_event(run: str, n: int, accounts: int, now: datetime) -> dict[str, Any]:
    """The n-th event: spread over accounts and metrics, timestamps in the last hour."""
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
    return event


async def publish(
    url: str, stream: str, events: int, accounts: int, *, jsonl: IO[bytes], per_message: int = 1
) -> int:
    """Create the stream and publish the events, ``per_message`` to a message (a JSON array
    when more than one), also writing them to ``jsonl``; returns the number of messages.

    Plain publishes, flushed every 10,000, then the stream's count checked: the server takes
    them as fast as it stores them, and a message lost would show there."""
    client = await nats.connect(url)
    jetstream = client.jetstream()
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await jetstream.delete_stream(stream)
    await jetstream.add_stream(name=stream, subjects=[f"{SUBJECT}.>"])
    run, now = uuid.uuid4().hex[:8], datetime.now(UTC)
    messages = 0
    for first in range(0, events, per_message):
        group = [
            orjson.dumps(make_event(run, n, accounts, now))
            for n in range(first, min(first + per_message, events))
        ]
        jsonl.write(b"\n".join(group) + b"\n")
        body = group[0] if per_message == 1 else b"[" + b",".join(group) + b"]"
        await client.publish(f"{SUBJECT}.{messages % accounts:04d}", body)
        messages += 1
        if messages % 10_000 == 0:
            await client.flush(timeout=60)
    await client.flush(timeout=60)
    deadline = time.monotonic() + 60
    while (stored := (await jetstream.stream_info(stream)).state.messages) < messages:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the stream holds {stored} messages, not {messages}")
        await asyncio.sleep(0.1)
    await client.close()
    return messages


async def delete_stream(url: str, stream: str) -> None:
    client = await nats.connect(url)
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await client.jetstream().delete_stream(stream)
    await client.close()


@contextlib.contextmanager
def fresh_ledger(store: str, args: argparse.Namespace) -> Iterator[str]:
    """A migrated, empty ledger with the accounts; yields its URL."""
    with contextlib.ExitStack() as stack:
        if store == "sqlite":
            directory = stack.enter_context(tempfile.TemporaryDirectory())
            url = f"sqlite:///{directory}/bench.db"
        else:
            url = stack.enter_context(postgres_schema(args.postgres_url))
        database = Database(url)
        migrate.upgrade(database)
        with tempfile.TemporaryDirectory() as data_dir:
            billsync = build(Settings(data_dir=Path(data_dir), database_url=url), database=database)
            with database.transaction() as connection:
                for index in range(args.accounts):
                    billsync.accounts.create(connection, NewAccount(f"acct-{index:04d}", "usd"))
            billsync.close()
        yield url


def stored_events(url: str) -> int:
    from sqlalchemy import func, select  # noqa: PLC0415 - only here

    from billsync.db.tables import usage_events  # noqa: PLC0415

    database = Database(url)
    with database.read() as connection:
        count = connection.execute(select(func.count()).select_from(usage_events)).scalar_one()
    database.dispose()
    return int(count)


def cpu_seconds(processes: list[psutil.Process]) -> dict[int, float]:
    """CPU seconds (user + system) used so far by each process, by pid."""
    used = {}
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            used[process.pid] = times.user + times.system
    return used


def cpu_since(before: dict[int, float], now: dict[int, float]) -> float:
    """CPU used between two samples; a process that appeared in between counts whole."""
    return sum(used - before.get(pid, 0.0) for pid, used in now.items())


def named(name: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name"]) if p.info["name"] == name]


async def consumer_progress(url: str, stream: str, durable: str) -> tuple[int, int]:
    """(stream sequence delivered up to, stream sequence acked through)."""
    client = await nats.connect(url)
    try:
        info = await client.jetstream().consumer_info(stream, durable)
    except nats.js.errors.NotFoundError:
        return 0, 0
    finally:
        await client.close()
    return info.delivered.stream_seq or 0, info.ack_floor.stream_seq or 0


def run_consumers(
    url: str,
    stream: str,
    events: int,
    args: argparse.Namespace,
    *,
    messages: int,
    processes: int,
    batch: int,
    max_events: int | None = None,
) -> dict[str, Any]:
    """``processes`` `billsync consume` processes on one durable consumer, timed from the
    first delivery until the first ``messages`` messages (``events`` events) are acked; then
    stopped with SIGTERM (or, with ``max_events``, left to stop by themselves)."""
    durable = f"bench-{uuid.uuid4().hex[:8]}"
    with contextlib.ExitStack() as stack:
        data_dir = stack.enter_context(tempfile.TemporaryDirectory())
        logs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in range(processes)]
        env = {**os.environ, "BILLSYNC_DATABASE_URL": url, "BILLSYNC_DATA_DIR": data_dir,
               "BILLSYNC_STRIPE_API_KEY": "", "COLUMNS": "200"}  # fmt: skip
        command = [
            sys.executable, "-m", "billsync", "consume", "--nats", args.nats, "--stream", stream,
            "--durable", durable, "--batch", str(batch),
        ]  # fmt: skip
        if max_events is not None:
            command += ["--max-events", str(max_events)]
        children = [
            subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT) for log in logs
        ]
        try:
            started = finished = None
            deadline = time.monotonic() + args.timeout
            while finished is None:
                delivered, acked = asyncio.run(consumer_progress(args.nats, stream, durable))
                now = time.perf_counter()
                if started is None and delivered > 0:
                    started = now
                    # Measured from here: the consumers' start-up and the database backends
                    # they opened are left out.
                    watched: dict[str, Callable[[], list[psutil.Process]]] = {
                        "consumers": lambda: [psutil.Process(c.pid) for c in children],
                        "postgres": lambda: named("postgres"),
                        "nats_server": lambda: named("nats-server"),
                    }
                    cpu_before = {name: cpu_seconds(find()) for name, find in watched.items()}
                if acked >= messages:
                    finished = now
                    cpu = {
                        name: cpu_since(cpu_before[name], cpu_seconds(find()))
                        for name, find in watched.items()
                    }
                elif time.monotonic() > deadline or any(c.poll() for c in children):
                    raise RuntimeError(f"consumers failed or timed out: {acked}/{messages} acked")
                else:
                    time.sleep(0.05)
        finally:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            for child in children:
                try:
                    child.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    child.kill()
        outputs = []
        for log in logs:
            log.seek(0)
            outputs.append(log.read())
    assert started is not None
    seconds = finished - started
    stored = stored_events(url)
    if stored != events:
        raise RuntimeError(f"{stored} events in the ledger, not {events}: {outputs}")
    return {
        "consumers": processes,
        "batch": batch,
        "messages": messages,
        "events": events,
        "seconds": round(seconds, 2),
        "events_per_second": round(events / seconds),
        "cpu_seconds_per_1000_events": {
            name: round(used * 1000 / events, 3) for name, used in cpu.items()
        },
        "exit_codes": [child.returncode for child in children],
    }


def baseline_ingest_file(url: str, path: Path, events: int) -> dict[str, Any]:
    """`billsync ingest FILE`, its start-up (the same command on a one-line file) subtracted."""
    with tempfile.TemporaryDirectory() as data_dir:
        env = {**os.environ, "BILLSYNC_DATABASE_URL": url, "BILLSYNC_DATA_DIR": data_dir}
        one = Path(data_dir) / "one.jsonl"
        with path.open("rb") as source:
            one.write_bytes(source.readline())
        command = [sys.executable, "-m", "billsync", "ingest", "--batch-size", "1000"]
        started = time.perf_counter()
        subprocess.run([*command, str(one)], env=env, check=True, capture_output=True)
        startup = time.perf_counter() - started
        started = time.perf_counter()
        subprocess.run([*command, str(path)], env=env, check=True, capture_output=True)
        seconds = time.perf_counter() - started - startup
    return {
        "events": events,
        "seconds": round(seconds, 2),
        "events_per_second": round(events / seconds),
    }


def bench_store(store: str, args: argparse.Namespace, stream: str, jsonl: Path) -> dict[str, Any]:
    runs = []
    for processes in args.consumers:
        with fresh_ledger(store, args) as url:
            runs.append(
                run_consumers(
                    url,
                    stream,
                    args.events,
                    args,
                    messages=args.messages,
                    processes=processes,
                    batch=args.batch,
                )
            )
        row = runs[-1]
        cpu = row["cpu_seconds_per_1000_events"]
        print(
            f"{store:>10} × {processes} consumer(s): {row['events_per_second']:>7,} events/s "
            f"({row['events']:,} in {row['seconds']} s)  CPU s per 1,000 events: consumers "
            f"{cpu['consumers']}, postgres {cpu['postgres']}, nats-server {cpu['nats_server']}",
            flush=True,
        )
    result: dict[str, Any] = {"store": store, "runs": runs}
    best = max(run["events_per_second"] for run in runs)
    with fresh_ledger(store, args) as url:
        file_baseline = baseline_ingest_file(url, jsonl, args.events)
    result["baseline_ingest_file"] = file_baseline
    result["best_vs_ingest_file"] = round(best / file_baseline["events_per_second"], 2)
    print(
        f"{store:>10} baseline `billsync ingest FILE`: {file_baseline['events_per_second']:,}/s "
        f"(best here ×{result['best_vs_ingest_file']})",
        flush=True,
    )
    if args.events_per_message == 1:  # one transaction per message: per event only here
        with fresh_ledger(store, args) as url:
            single = run_consumers(
                url, stream, args.batch1_events, args, messages=args.batch1_events,
                processes=1, batch=1, max_events=args.batch1_events,
            )  # fmt: skip
        result["baseline_batch_1"] = single
        result["best_vs_batch_1"] = round(best / single["events_per_second"], 1)
        print(
            f"{store:>10} baseline consume --batch 1: {single['events_per_second']:,}/s "
            f"(best here ×{result['best_vs_batch_1']})",
            flush=True,
        )
    return result


def profile(args: argparse.Namespace, stream: str) -> None:
    """One in-process consumer under cProfile: the event loop (pulls, decoding, acks) and the
    thread that commits (the ingest service, the driver), each printed."""
    store = args.stores[0]
    events = min(args.events, 200_000)
    with fresh_ledger(store, args) as url, tempfile.TemporaryDirectory() as data_dir:
        billsync = build(Settings(data_dir=Path(data_dir), database_url=url))
        loop_profile, commit_profile = cProfile.Profile(), cProfile.Profile()
        record = billsync.ingest.record
        local = threading.local()

        def profiled_record(
            outcomes: Sequence[ValidEvent | Rejection], now: datetime
        ) -> IngestReport:
            if not getattr(local, "on", False):
                commit_profile.enable()  # in the commit thread, once
                local.on = True
            return record(outcomes, now)

        billsync.ingest.record = profiled_record  # type: ignore[method-assign]
        spec = ConsumerSpec(stream=stream, durable=f"profile-{uuid.uuid4().hex[:8]}")
        source = JetStreamSource(args.nats, spec)
        consumer = StreamConsumer(
            billsync.ingest, source, StreamOptions(batch=args.batch, max_events=events)
        )

        async def consume() -> float:
            await source.connect()
            started = time.perf_counter()
            loop_profile.enable()
            await consumer.run()
            loop_profile.disable()
            await source.close()
            return time.perf_counter() - started

        import uvloop  # noqa: PLC0415 - as `billsync consume` runs

        seconds = uvloop.run(consume())
        commit_profile.disable()
        billsync.close()
    print(f"profiled: {events:,} events in {seconds:.1f} s ({events / seconds:,.0f}/s, slowed)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    loop_profile.dump_stats(RESULTS / "jetstream_ingest.loop.prof")
    commit_profile.dump_stats(RESULTS / "jetstream_ingest.commit.prof")
    for title, which in (("event loop", loop_profile), ("commit thread", commit_profile)):
        print(f"== {title}")
        pstats.Stats(which).sort_stats("tottime").print_stats(18)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--consumers", default="1,2")
    parser.add_argument("--batch1-events", type=int, default=2000)
    parser.add_argument(
        "--events-per-message", type=int, default=1, help="more than 1: JSON arrays of events"
    )
    parser.add_argument("--stores", default="postgresql,sqlite")
    parser.add_argument("--quick", action="store_true", help="100,000 events")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument(
        "--nats", default=os.environ.get("BILLSYNC_TEST_NATS_URL", "nats://127.0.0.1:4222")
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "BILLSYNC_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
    )
    args = parser.parse_args()
    if args.quick:
        args.events = min(args.events, 100_000)
    args.consumers = [int(n) for n in args.consumers.split(",")]
    args.stores = args.stores.split(",")
    args.batch1_events = min(args.batch1_events, args.events)
    stream = f"BILLSYNC_BENCH_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as directory:
        jsonl = Path(directory) / "events.jsonl"
        started = time.perf_counter()
        with jsonl.open("wb") as out:
            args.messages = asyncio.run(
                publish(
                    args.nats, stream, args.events, args.accounts, jsonl=out,
                    per_message=args.events_per_message,
                )
            )  # fmt: skip
        rate = args.messages / (time.perf_counter() - started)
        print(
            f"published {args.events:,} events in {args.messages:,} messages "
            f"({rate:,.0f} messages/s)",
            flush=True,
        )
        try:
            if args.profile:
                profile(args, stream)
                return
            results = [bench_store(store, args, stream, jsonl) for store in args.stores]
        finally:
            asyncio.run(delete_stream(args.nats, stream))
    path = write_results(
        # One event per message and arrays of events are two figures (two result files).
        "jetstream_ingest" if args.events_per_message == 1 else "jetstream_ingest_batched",
        {
            "benchmark": "jetstream_ingest",
            "machine": {"cpus": os.cpu_count()},
            "events": args.events,
            "accounts": args.accounts,
            "batch": args.batch,
            "events_per_message": args.events_per_message,
            "publish_messages_per_second": round(rate),
            "results": results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
