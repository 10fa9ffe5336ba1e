"""``billsync consume``: usage from NATS JetStream into the ledger, acked only after the commit.

Against a real NATS server with JetStream: ``BILLSYNC_TEST_NATS_URL``, or nats://127.0.0.1:4222
when unset. If nothing answers there the NATS tests are skipped with a message; in CI (``CI``
set), or when the variable is set, a missing NATS fails them instead. The stores are real
SQLite and PostgreSQL (see conftest.py). Each test uses a stream of its own, deleted after.

The NATS server's timers (ack wait, redelivery) run on real time; the tests wait for them only
where that is what they check, and poll the server's consumer state where it settles acks
asynchronously.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from billsync.bootstrap import Billsync, build
from billsync.clock import FileClock, ManualClock
from billsync.config import Settings
from billsync.core.catalog import Catalog
from billsync.core.usage import RejectionCode, UsageRules, ValidEvent
from billsync.core.usage_messages import INVALID_JSON, DecodedMessage, decode_message
from billsync.db.database import Database
from billsync.db.tables import lines, usage_events
from billsync.jetstream import ConsumerSpec, ConsumerState, JetStreamError, JetStreamSource
from billsync.services.stream import RejectsLog, StreamConsumer, StreamOptions, StreamStats
from tests.chaos.harness import TcpProxy
from tests.conftest import T0
from tests.factories import create_account, event
from tests.waiting import wait_until

NATS_URL_VARIABLE = "BILLSYNC_TEST_NATS_URL"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
SOURCE = Path(__file__).resolve().parent.parent / "src" / "billsync"
METRICS: tuple[tuple[str, Callable[[int], str], tuple[str, ...] | None], ...] = (
    ("machine.shared-cpu-1x.seconds", lambda n: str(30 + n % 7), None),
    ("volume.gb_hours", lambda n: f"0.{n % 1000:03d}125", None),
    ("bandwidth.egress.na-eu.gb", lambda n: f"{n % 5}.{n % 997:09d}", ("iad", "cdg")),
)


def _required() -> bool:
    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    return in_ci or bool(os.environ.get(NATS_URL_VARIABLE))


async def _probe(url: str) -> str | None:
    seen: list[Exception] = []

    async def remember(error: Exception) -> None:
        seen[:] = [error]

    try:  # the client retries on its own: give it a few seconds, not forever
        client = await asyncio.wait_for(nats.connect(url, error_cb=remember), timeout=3)
    except Exception as error:  # whatever the failure, the message says what it was
        cause = seen[0] if seen else error
        return f"nothing answers at {url} ({type(cause).__name__}: {cause})"
    try:
        await client.jetstream().account_info()
    except Exception as error:
        return f"NATS at {url} has no JetStream ({type(error).__name__}: {error})"
    finally:
        await client.close()
    return None


@pytest.fixture(scope="module")
def nats_url() -> str:
    url = os.environ.get(NATS_URL_VARIABLE) or DEFAULT_NATS_URL
    problem = asyncio.run(_probe(url))
    if problem is None:
        return url
    if _required():
        pytest.fail(f"NATS with JetStream is required here: {problem}", pytrace=False)
    pytest.skip(f"NATS tests skipped: {problem}; set {NATS_URL_VARIABLE} to run them")


@dataclass(frozen=True)
class Stream:
    url: str
    name: str
    subject: str

    def spec(self, **overrides: Any) -> ConsumerSpec:
        return ConsumerSpec(stream=self.name, **{"durable": "billsync", **overrides})

    def publish(self, bodies: list[bytes]) -> None:
        asyncio.run(publish(self.url, self.subject, bodies))

    def state(self, durable: str = "billsync") -> ConsumerState:
        return asyncio.run(consumer_state(self.url, self.name, durable))

    def acked_through(self, durable: str = "billsync") -> int:
        """0 until a process has created the consumer."""
        try:
            return self.state(durable).acked_through
        except nats.js.errors.NotFoundError:
            return 0

    def settled(self, durable: str = "billsync", timeout: float = 120.0) -> ConsumerState:
        """The consumer's state once the server has processed the acks sent to it (it does so
        asynchronously): nothing awaiting an ack, or the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.state(durable)
            if state.ack_pending == 0 or time.monotonic() > deadline:
                return state
            time.sleep(0.05)


async def publish(url: str, subject: str, bodies: list[bytes]) -> None:
    client = await nats.connect(url)
    jetstream = client.jetstream()
    try:
        acks = [await jetstream.publish_async(subject, body) for body in bodies]
        for ack in acks:
            await ack
    finally:
        await client.close()


async def consumer_state(url: str, stream: str, durable: str) -> ConsumerState:
    client = await nats.connect(url)
    try:
        info = await client.jetstream().consumer_info(stream, durable)
    finally:
        await client.close()
    return ConsumerState(
        pending=info.num_pending or 0,
        ack_pending=info.num_ack_pending or 0,
        redelivered=info.num_redelivered or 0,
        acked_through=info.ack_floor.stream_seq if info.ack_floor else 0,
    )


@pytest.fixture
def stream(nats_url: str) -> Iterator[Stream]:
    tag = uuid.uuid4().hex[:12]
    name, subject = f"BILLSYNC_TEST_{tag}", f"billsync-test.{tag}.usage"

    async def create() -> None:
        client = await nats.connect(nats_url)
        await client.jetstream().add_stream(name=name, subjects=[f"billsync-test.{tag}.>"])
        await client.close()

    async def delete() -> None:
        client = await nats.connect(nats_url)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await client.jetstream().delete_stream(name)
        await client.close()

    asyncio.run(create())
    yield Stream(nats_url, name, subject)
    asyncio.run(delete())


# -- helpers ------------------------------------------------------------------------------


def usage(count: int, accounts: tuple[str, ...] = ("acme", "globex"), run: str = "u") -> list[Any]:
    """``count`` events over the accounts and three metrics (integer, 6 and 9 decimal places,
    one grouped by region), in the hour before T0."""
    events = []
    for n in range(count):
        metric, quantity, regions = METRICS[n % len(METRICS)]
        dimensions = {"region": regions[n % len(regions)]} if regions else {}
        events.append(
            event(
                accounts[n % len(accounts)],
                metric,
                quantity(n),
                at=T0 - timedelta(seconds=1 + n % 3600),
                event_id=f"{run}-{n}",
                **dimensions,
            )
        )
    return events


def bodies(events: list[Any]) -> list[bytes]:
    return [orjson.dumps(item) for item in events]


def expected_lines(events: list[Any]) -> dict[tuple[str, str, str | None], Decimal]:
    sums: dict[tuple[str, str, str | None], Decimal] = defaultdict(Decimal)
    for item in events:
        region = item["dimensions"].get("region")
        sums[item["account"], item["metric"], region] += Decimal(item["quantity"])
    return dict(sums)


def ledger_lines(database: Database) -> dict[tuple[str, str, str | None], Decimal]:
    with database.read() as connection:
        rows = connection.execute(
            select(lines.c.account_id, lines.c.metric, lines.c.grouping, lines.c.quantity)
        ).all()
    return {(a, m, (g or {}).get("region")): q for a, m, g, q in rows}


def ledger_events(database: Database) -> int:
    with database.read() as connection:
        count = connection.execute(select(func.count()).select_from(usage_events)).scalar_one()
    return int(count)


def consumer(
    billsync: Billsync, stream: Stream, *, spec: ConsumerSpec | None = None, **options: Any
) -> tuple[StreamConsumer, JetStreamSource]:
    source = JetStreamSource(stream.url, spec or stream.spec())
    settings = {
        "batch": 25, "fetch_wait": 0.2, "retry_first": 0.05, "retry_max": 0.2,
        "exit_when_idle": 10.0,  # a backstop: a test waiting for more than comes fails, not hangs
        **options,
    }  # fmt: skip
    return StreamConsumer(billsync.ingest, source, StreamOptions(**settings)), source


async def consume(stream_consumer: StreamConsumer, source: JetStreamSource) -> StreamStats:
    await source.connect(wait_seconds=5)
    try:
        return await stream_consumer.run()
    finally:
        await source.close()


# -- message bodies (pure) ----------------------------------------------------------------


@pytest.fixture
def rules(example_catalog: Catalog) -> UsageRules:
    return UsageRules(example_catalog, T0, timedelta(days=35))


def accepted_ids(decoded: DecodedMessage) -> list[str | None]:
    return [o.id if isinstance(o, ValidEvent) else None for o in decoded.outcomes]


@pytest.mark.unit
def test_a_message_is_one_event_an_array_or_json_lines(rules: UsageRules) -> None:
    one, two, three = (orjson.dumps(item) for item in usage(3))
    single = decode_message(b"  " + one + b"\n", rules)
    assert accepted_ids(single) == ["u-0"]
    assert single.parts is None
    assert not single.malformed
    array_body = b"[" + one + b", " + two + b"]"
    array = decode_message(array_body, rules)
    assert accepted_ids(array) == ["u-0", "u-1"]
    assert array.part(1, array_body) == (1, two)
    jsonl = decode_message(one + b"\n\n" + two + b"\r\n{oops\n" + three, rules)
    assert accepted_ids(jsonl) == ["u-0", "u-1", "u-2"]
    assert [part[0] for part in jsonl.parts or []] == [0, 1, 3]
    assert [(u.position, u.text) for u in jsonl.unreadable] == [(2, b"{oops")]
    assert not jsonl.malformed


@pytest.mark.unit
@pytest.mark.parametrize("body", [b"", b"  \n", b"not json", b"{oops", b"[1, 2", b"\xff\xfe"])
def test_a_body_that_is_not_json_is_malformed(rules: UsageRules, body: bytes) -> None:
    decoded = decode_message(body, rules)
    assert decoded.malformed
    assert [u.position for u in decoded.unreadable] == [None]


@pytest.mark.unit
def test_each_event_of_a_message_is_validated_on_its_own(rules: UsageRules) -> None:
    good, bad = usage(2)
    bad = {**bad, "metric": "no.such.metric"}
    body = orjson.dumps([good, bad, {**good, "id": 7}, "x"])
    decoded = decode_message(body, rules)
    codes = [getattr(outcome, "code", None) for outcome in decoded.outcomes]
    assert codes == [
        None, RejectionCode.UNKNOWN_METRIC, RejectionCode.INVALID_ID, RejectionCode.INVALID_EVENT,
    ]  # fmt: skip
    assert decoded.part(3, body) == (3, b'"x"')


DEEP = b"[" * 100_000 + b"]" * 100_000  # deeper than any decoder's recursion limit


@pytest.mark.unit
@pytest.mark.parametrize(
    "body",
    [DEEP, b'{"id": ' + DEEP + b"}", b"[" + DEEP + b"]", b'{"id": "\xff"}', b'"\xed\xa0\x80"'],
    ids=["deep", "deep-in-event", "deep-in-array", "not-utf8", "utf8-surrogate"],
)
def test_a_body_nested_too_deep_or_not_utf8_is_malformed(rules: UsageRules, body: bytes) -> None:
    decoded = decode_message(body, rules)
    assert decoded.malformed
    assert [u.position for u in decoded.unreadable] == [None]


@pytest.mark.unit
def test_an_unreadable_line_or_item_costs_only_itself(rules: UsageRules) -> None:
    one, two = (orjson.dumps(item) for item in usage(2))
    decoded = decode_message(one + b"\n" + DEEP + b"\n" + b'{"id": "\xff"}\n' + two, rules)
    assert accepted_ids(decoded) == ["u-0", "u-1"]
    assert [u.position for u in decoded.unreadable] == [1, 2]
    assert "too deeply" in decoded.unreadable[0].reason
    array = b"[" + one + b', {"id": "\xff"}, ' + two + b"]"
    decoded = decode_message(array, rules)
    assert accepted_ids(decoded) == ["u-0", "u-1"]
    assert [(u.position, u.text) for u in decoded.unreadable] == [(1, b'{"id": "\xff"}')]
    assert decoded.part(1, array) == (2, two)


# -- against NATS and the stores -----------------------------------------------------------


def test_every_event_reaches_the_ledger_once_and_every_message_is_acked(
    billsync: Billsync, stream: Stream
) -> None:
    create_account(billsync, "acme")
    create_account(billsync, "globex")
    singles = usage(240)
    in_array, in_lines = usage(7, run="array"), usage(5, run="lines")
    stream.publish(
        [
            *bodies(singles[:120]),
            orjson.dumps(in_array),
            b"\n".join(bodies(in_lines)),
            *bodies(singles[120:]),
        ]
    )
    total = len(singles) + len(in_array) + len(in_lines)
    stats = asyncio.run(consume(*consumer(billsync, stream, max_events=total)))

    assert (stats.accepted, stats.duplicates, stats.rejected) == (total, 0, 0)
    assert stats.messages == len(singles) + 2
    assert ledger_lines(billsync.database) == expected_lines(singles + in_array + in_lines)
    assert ledger_events(billsync.database) == total
    state = stream.settled()
    assert (state.pending, state.ack_pending, state.redelivered) == (0, 0, 0)
    assert state.acked_through == len(singles) + 2


def test_rejected_events_go_to_the_rejects_file_and_are_acked(
    billsync: Billsync, stream: Stream, tmp_path: Path
) -> None:
    create_account(billsync, "acme")
    good = usage(6, accounts=("acme",))
    messages = [
        orjson.dumps(good[0]),  # 1: accepted
        orjson.dumps({**good[1], "metric": "no.such.metric"}),  # 2: unknown_metric
        orjson.dumps([good[2], {**good[3], "quantity": "-5"}, good[4]]),  # 3: the middle one
        orjson.dumps(good[5]) + b"\nnot json\n" + orjson.dumps(usage(1, run="l")[0]),  # 4
        b"this is not JSON",  # 5: malformed, terminated
        orjson.dumps({**good[0], "id": "w-1", "account": "wayne"}),  # 6: unknown_account
        b"",  # 7: empty, terminated
        orjson.dumps({**good[0], "quantity": "999"}),  # 8: duplicate_conflict with message 1
    ]
    stream.publish(messages)
    path = tmp_path / "rejects.jsonl"
    with path.open("ab") as out:
        stream_consumer, source = consumer(billsync, stream, max_events=12)
        stream_consumer.rejects = RejectsLog(out)
        stats = asyncio.run(consume(stream_consumer, source))

    assert (stats.accepted, stats.duplicates, stats.rejected) == (5, 0, 7)
    assert stats.malformed_messages == 2
    assert {code: count for code, (count, _) in stats.rejections.items()} == {
        "unknown_metric": 1, "negative_quantity": 1, INVALID_JSON: 3, "unknown_account": 1,
        "duplicate_conflict": 1,
    }  # fmt: skip
    assert ledger_events(billsync.database) == 5
    rows = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    found = sorted((row["stream_sequence"], row["position"], row["error"]["code"]) for row in rows)
    assert found == [
        (2, 0, "unknown_metric"),
        (3, 1, "negative_quantity"),
        (4, 1, INVALID_JSON),
        (5, None, INVALID_JSON),
        (6, 0, "unknown_account"),
        (7, None, INVALID_JSON),
        (8, 0, "duplicate_conflict"),
    ]
    by_sequence = {row["stream_sequence"]: row for row in rows}
    assert orjson.loads(by_sequence[3]["raw"])["quantity"] == "-5"
    assert by_sequence[4]["raw"] == "not json"
    assert by_sequence[5]["raw"] == "this is not JSON"
    assert all(row["subject"] == stream.subject for row in rows)
    state = stream.settled()
    assert (state.pending, state.ack_pending) == (0, 0)
    assert state.acked_through == len(messages)


def test_bad_text_is_rejected_per_event_on_every_store_and_never_wedges_the_stream(
    billsync: Billsync, stream: Stream, tmp_path: Path
) -> None:
    """NUL in a dimension made PostgreSQL refuse the batch's transaction: the consumer exited
    and the message came back on every start. Every kind of bad text is now a rejection (or an
    unreadable message) on both stores alike, acked, and the good events beside it count."""
    create_account(billsync, "acme")
    good = usage(4, accounts=("acme",), run="clean")
    egress = good[2]  # grouped by region
    messages = [
        orjson.dumps(good[0]),  # 1
        orjson.dumps({**egress, "id": "nul", "dimensions": {"region": "a\x00b"}}),  # 2
        orjson.dumps(
            [
                good[1],
                {**egress, "id": "bidi", "dimensions": {"region": "iad\u202e"}},
                {**good[0], "id": "digits", "quantity": "١٢"},
                {**good[0], "id": "nul-id\x00"},
            ]
        ),  # 3
        DEEP,  # 4: unreadable, terminated
        b'{"id": "\xff"}',  # 5: not UTF-8, terminated
        orjson.dumps({**good[0], "id": "zero", "quantity": "0e999999999"}),  # 6
        json.dumps({**egress, "id": "surrogate", "dimensions": {"region": "\ud800"}}).encode(),
        orjson.dumps(good[2]),  # 8
        orjson.dumps(good[3]),  # 9
    ]
    stream.publish(messages)
    path = tmp_path / "rejects.jsonl"
    with path.open("ab") as out:
        stream_consumer, source = consumer(billsync, stream, max_events=12)
        stream_consumer.rejects = RejectsLog(out)
        stats = asyncio.run(consume(stream_consumer, source))

    assert (stats.accepted, stats.duplicates, stats.rejected) == (4, 0, 8)
    assert stats.malformed_messages == 3
    assert {code: count for code, (count, _) in stats.rejections.items()} == {
        "invalid_dimensions": 2, "invalid_quantity": 2, "invalid_id": 1, INVALID_JSON: 3,
    }  # fmt: skip
    assert ledger_events(billsync.database) == 4
    assert ledger_lines(billsync.database) == expected_lines(good)
    rows = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert sorted((row["stream_sequence"], row["position"]) for row in rows) == [
        (2, 0), (3, 1), (3, 2), (3, 3), (4, None), (5, None), (6, 0), (7, None),
    ]  # fmt: skip
    state = stream.settled()
    assert (state.pending, state.ack_pending) == (0, 0)
    assert state.acked_through == len(messages)


def test_an_existing_consumer_that_acks_otherwise_is_refused(stream: Stream) -> None:
    async def scenario() -> str:
        client = await nats.connect(stream.url)
        await client.jetstream().add_consumer(
            stream.name,
            nats.js.api.ConsumerConfig(
                durable_name="ack-all", ack_policy=nats.js.api.AckPolicy.ALL
            ),
        )
        await client.close()
        source = JetStreamSource(stream.url, stream.spec(durable="ack-all"))
        try:
            await source.connect(wait_seconds=5)
        except JetStreamError as error:
            return str(error)
        finally:
            await source.close()
        return "connected"

    assert "explicit" in asyncio.run(scenario())


def test_a_missing_stream_is_reported(nats_url: str) -> None:
    async def scenario() -> None:
        source = JetStreamSource(nats_url, ConsumerSpec(stream=f"NO_SUCH_{uuid.uuid4().hex}"))
        try:
            await source.connect(wait_seconds=5)
        finally:
            await source.close()

    with pytest.raises(JetStreamError, match="does not exist"):
        asyncio.run(scenario())


def test_nats_out_of_reach_at_start_is_reported_after_the_wait() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def scenario() -> None:
        source = JetStreamSource(f"nats://127.0.0.1:{port}", ConsumerSpec(stream="USAGE"))
        try:
            await source.connect(wait_seconds=1)
        finally:
            await source.close()

    with pytest.raises(JetStreamError, match="cannot reach NATS"):
        asyncio.run(scenario())


def test_a_cut_nats_connection_loses_nothing_and_counts_nothing_twice(
    billsync: Billsync, stream: Stream
) -> None:
    """The connection to NATS is cut mid-stream and restored: the client reconnects, acks
    sent meanwhile reach the server afterwards, and what the cut lost is redelivered after the
    ack wait (1 s here) and counted once."""
    create_account(billsync, "acme")
    create_account(billsync, "globex")
    events = usage(300)
    stream.publish(bodies(events))
    url = make_url(stream.url.replace("nats://", "postgresql://"))  # host and port only
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 4222)
    proxied = Stream(f"nats://127.0.0.1:{proxy.port}", stream.name, stream.subject)

    cuts: list[bool] = []

    async def scenario() -> StreamStats:
        def cut_once(stats: StreamStats) -> None:
            if stats.events >= 60 and not cuts:
                cuts.append(True)
                proxy.cut()
                threading.Timer(0.3, proxy.restore).start()

        stream_consumer, source = consumer(
            billsync, proxied, spec=stream.spec(ack_wait=1.0), batch=20, exit_when_idle=2.5,
            progress_every=0,
        )  # fmt: skip
        stream_consumer.on_progress = cut_once
        return await consume(stream_consumer, source)

    try:
        stats = asyncio.run(scenario())
    finally:
        proxy.close()
    assert cuts == [True]
    assert stats.accepted == len(events)
    assert (stats.duplicates, stats.rejected) == (stats.messages - len(events), 0)
    assert ledger_events(billsync.database) == len(events)
    assert ledger_lines(billsync.database) == expected_lines(events)
    state = stream.settled()
    assert (state.pending, state.ack_pending) == (0, 0)


# -- the database away: nothing acked, nothing more pulled, then everything once --------------


@contextlib.contextmanager
def sqlite_outage(database: Database) -> Iterator[Callable[[], None]]:
    """A real lock: another connection holds the write lock of the SQLite file, and this
    process's connections give up waiting for it after 100 ms ("database is locked"), as they
    would after the production busy timeout. Yields the function that releases it."""

    @sqlalchemy_event.listens_for(database.engine, "connect")
    def _short_wait(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA busy_timeout=100")

    database.engine.dispose()
    path = make_url(database.url).database
    assert path
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        yield blocker.rollback
    finally:
        blocker.close()


@contextlib.contextmanager
def postgres_outage(database: Database) -> Iterator[tuple[Database, Callable[[], None]]]:
    """The connection cut: billsync reaches PostgreSQL through a proxy that drops every
    connection and refuses new ones until restored (tests/chaos/harness.py)."""
    url = make_url(database.url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    proxied = Database(url.set(host="127.0.0.1", port=proxy.port).render_as_string(False))
    try:
        proxy.cut()
        yield proxied, proxy.restore
    finally:
        proxied.dispose()
        proxy.close()


def test_while_the_database_is_away_nothing_is_acked_then_everything_lands_once(
    billsync: Billsync,
    database: Database,
    stream: Stream,
    settings: Settings,
    example_catalog: Catalog,
) -> None:
    create_account(billsync, "acme")
    create_account(billsync, "globex")
    events = usage(30)
    stream.publish(bodies(events))
    # A short ack wait, so that the outage outlasts it: the messages held must not be
    # redelivered meanwhile (in_progress keeps them).
    spec = stream.spec(ack_wait=1.0)

    with contextlib.ExitStack() as stack:
        if database.is_sqlite:
            target = database
            restore = stack.enter_context(sqlite_outage(database))
        else:
            target, restore = stack.enter_context(postgres_outage(database))
        writer = build(settings, clock=ManualClock(T0), database=target, catalog=example_catalog)

        async def scenario() -> tuple[StreamStats, ConsumerState, int]:
            refused = asyncio.Event()

            def watch(stats: StreamStats) -> None:
                if stats.waiting_for_database is not None:
                    refused.set()

            stream_consumer, source = consumer(writer, stream, spec=spec, batch=10, max_events=30)
            stream_consumer.on_progress = watch
            await source.connect(wait_seconds=5)
            running = asyncio.create_task(stream_consumer.run())
            await asyncio.wait_for(refused.wait(), timeout=20)
            # Outlast the ack wait (the server's clock: real time) while the batch is refused.
            await asyncio.sleep(2.5)
            during = await source.state()
            events_during = ledger_events(database)
            restore()
            stats = await asyncio.wait_for(running, timeout=30)
            await source.close()
            return stats, during, events_during

        stats, during, events_during = asyncio.run(scenario())
        writer.close()

    assert events_during == 0
    # Two batches held at most (the one refused, the next one pulled): the rest not pulled.
    assert (during.ack_pending, during.pending) == (20, 10)
    assert (during.acked_through, during.redelivered) == (0, 0)
    assert stats.retries >= 2
    assert (stats.accepted, stats.duplicates, stats.rejected) == (30, 0, 0)
    assert ledger_events(database) == 30
    assert ledger_lines(database) == expected_lines(events)
    state = stream.settled()
    assert (state.pending, state.ack_pending, state.redelivered) == (0, 0, 0)


# -- a real process: killed between commit and ack, and stopped by SIGTERM --------------------


def cli_environment(database_url: str, tmp_path: Path) -> dict[str, str]:
    """``billsync consume``'s environment: this test's store, its clock at T0."""
    clock = tmp_path / "clock"
    FileClock.write(str(clock), T0)
    return {
        **os.environ,
        "BILLSYNC_DATABASE_URL": database_url,
        "BILLSYNC_DATA_DIR": str(tmp_path / "var"),
        "BILLSYNC_CLOCK_FILE": str(clock),
        "BILLSYNC_STRIPE_API_KEY": "",
        "COLUMNS": "200",
    }


def billsync_consume(stream: Stream, *options: str) -> list[str]:
    return [
        sys.executable, "-m", "billsync", "consume",
        "--nats", stream.url, "--stream", stream.name, *options,
    ]  # fmt: skip


SUMMARY = re.compile(
    r"consumed ([\d,]+) events from ([\d,]+) messages in [\d.]+ s: ([\d,]+) accepted, "
    r"([\d,]+) duplicates, ([\d,]+) rejected"
)


def summary(output: str) -> tuple[int, ...]:
    found = SUMMARY.search(output)
    assert found, output
    return tuple(int(group.replace(",", "")) for group in found.groups())


def test_a_crash_between_commit_and_ack_counts_nothing_twice(
    billsync: Billsync, database: Database, stream: Stream, tmp_path: Path
) -> None:
    create_account(billsync, "acme")
    create_account(billsync, "globex")
    events = usage(400)
    stream.publish(bodies(events))
    environment = cli_environment(database.url, tmp_path)

    crash_after_one_batch = ("--ack-wait", "2", "--fault-exit-after-commit", "1")
    crashed = subprocess.run(
        billsync_consume(stream, "--batch", "50", *crash_after_one_batch),
        env=environment, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert crashed.returncode == 75, crashed.stdout + crashed.stderr
    assert ledger_events(database) == 50  # the first batch is committed ...
    assert stream.state().acked_through == 0  # ... and nothing was acked

    # The restart gets the untouched messages at once and, after the ack wait, the crashed
    # process's: the 50 it committed come back as duplicates.
    restarted = subprocess.run(
        billsync_consume(stream, "--batch", "50", "--max-events", "400"),
        env=environment, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert summary(restarted.stdout) == (400, 400, 350, 50, 0)
    assert ledger_events(database) == 400
    assert ledger_lines(database) == expected_lines(events)
    state = stream.settled()
    assert (state.pending, state.ack_pending) == (0, 0)


def test_sigterm_finishes_the_batch_in_flight_and_hands_back_the_rest(
    billsync: Billsync, database: Database, stream: Stream, tmp_path: Path
) -> None:
    create_account(billsync, "acme")
    create_account(billsync, "globex")
    events = usage(4000)
    stream.publish(bodies(events))
    process = subprocess.Popen(
        # An ack wait of an hour: what the successor below gets, it gets because the stopping
        # process handed it back, not because JetStream's ack wait ran out.
        billsync_consume(stream, "--batch", "10", "--ack-wait", "3600"),
        env=cli_environment(database.url, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: stream.acked_through() >= 100, "the consumer acks 100 events")
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, out + err
    assert "SIGTERM: finishing the batch in flight" in out
    handled, _, accepted, _, _ = summary(out)
    # What it handled is committed and acked; what it pulled but had not started, at most one
    # batch, is handed back (JetStream keeps it as pending an ack until redelivered).
    assert accepted == handled == ledger_events(database)
    assert 100 <= accepted < len(events)
    state = stream.state()
    assert state.acked_through == accepted
    assert state.ack_pending <= 10

    # Handed back for redelivery at once, not after the hour's ack wait: a successor gets
    # everything left (it stops when idle for 10 s, far inside the hour), counting nothing twice.
    successor = consumer(
        billsync, stream, spec=stream.spec(ack_wait=3600), max_events=len(events) - accepted
    )
    rest = asyncio.run(consume(*successor))
    assert (rest.accepted, rest.duplicates) == (len(events) - accepted, 0)
    assert ledger_events(database) == len(events)
    assert ledger_lines(database) == expected_lines(events)
    state = stream.settled()
    assert (state.pending, state.ack_pending) == (0, 0)


def test_the_cli_reports_a_missing_stream(nats_url: str, tmp_path: Path) -> None:
    missing = Stream(nats_url, f"NO_SUCH_{uuid.uuid4().hex[:8]}", "nothing")
    environment = cli_environment(f"sqlite:///{tmp_path}/billsync.db", tmp_path)
    result = subprocess.run(
        billsync_consume(missing, "--exit-when-idle", "1"),
        env=environment, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "does not exist" in result.stderr
