"""``billsync consume`` exits 1 when events were rejected, as ``billsync ingest`` does (a
script running it can tell), and 0 when every event was taken."""

# The stream fixtures are imported from the stream tests: a test naming one as its argument
# is what pytest expects, not a redefinition.
# ruff: noqa: F811

from __future__ import annotations

import subprocess
from pathlib import Path

import orjson

from billsync.bootstrap import Billsync
from billsync.db.database import Database
from tests.factories import create_account
from tests.test_stream_consume import (  # noqa: F401 - the fixtures: NATS, a fresh stream
    SUMMARY,
    Stream,
    billsync_consume,
    bodies,
    cli_environment,
    nats_url,
    stream,
    usage,
)


def consume(stream: Stream, database: Database, tmp_path: Path, events: int) -> tuple[int, str]:
    result = subprocess.run(
        billsync_consume(stream, "--max-events", str(events), "--exit-when-idle", "5"),
        env=cli_environment(database.url, tmp_path), capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    return result.returncode, result.stdout + result.stderr


def test_consume_exits_1_when_events_were_rejected(
    billsync: Billsync, database: Database, stream: Stream, tmp_path: Path
) -> None:
    create_account(billsync, "acme")
    create_account(billsync, "globex")
    good = usage(6)
    stream.publish([*bodies(good), orjson.dumps({**good[0], "id": "ghost-1", "account": "ghost"})])
    code, output = consume(stream, database, tmp_path, 7)
    assert code == 1, output
    found = SUMMARY.search(output)
    assert found is not None, output
    assert found.group(5) == "1"  # rejected
    assert "unknown_account" in output


def test_consume_exits_0_when_every_event_was_taken(
    billsync: Billsync, database: Database, stream: Stream, tmp_path: Path
) -> None:
    create_account(billsync, "acme")
    create_account(billsync, "globex")
    stream.publish(bodies(usage(4, run="ok")))
    code, output = consume(stream, database, tmp_path, 4)
    assert code == 0, output
