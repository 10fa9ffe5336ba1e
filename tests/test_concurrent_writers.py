"""Two writers of the same lines — ingest adding usage, a sync recording what Stripe now holds
— must queue, not deadlock (PostgreSQL locks rows as it goes); and a transaction the database
rolled back to break a deadlock anyway is run again rather than failing its request."""

from __future__ import annotations

import threading

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from billsync.bootstrap import Billsync
from billsync.core.usage import ValidEvent
from billsync.repositories import sync as sync_repository
from billsync.repositories.sync import Confirmation
from billsync.services.group_commit import GroupCommitter, is_retryable
from billsync.services.ingest import IngestReport
from tests.conftest import T0
from tests.factories import create_account, event
from tests.waiting import blocked_by, wait_until


@pytest.mark.postgres
def test_a_sync_confirming_lines_and_ingest_into_them_queue_instead_of_deadlocking(
    billsync: Billsync,
) -> None:
    if billsync.database.is_sqlite:
        pytest.skip("SQLite has one writer at a time: nothing to order")
    create_account(billsync, "acme")
    regions = ("iad", "cdg", "fra", "syd")
    billsync.ingest.ingest(
        [event("acme", "bandwidth.egress.na-eu.gb", "1", at=T0, region=r) for r in regions]
    )
    with billsync.database.read() as connection:
        ids = sorted(
            line.id
            for line in sync_repository.lines_of(connection, "acme", [T0.date().replace(day=1)])
        )
    ingested = threading.Event()
    errors: list[BaseException] = []

    def ingest_again() -> None:
        try:
            batch = [event("acme", "bandwidth.egress.na-eu.gb", "1", at=T0, region=r)
                     for r in regions]  # fmt: skip
            assert billsync.ingest.ingest(batch).accepted == len(regions)
        except BaseException as error:
            errors.append(error)
        ingested.set()

    with billsync.database.transaction() as connection:
        # The sync confirms the lines in the opposite order to the ingest's own.
        confirmations = [Confirmation(i, f"il_{i}", None, 100, 1) for i in reversed(ids)]
        sync_repository.confirm_lines(connection, confirmations, T0)
        holder = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        writer = threading.Thread(target=ingest_again)
        writer.start()
        # The ingest's session is seen waiting on this transaction's locks (PostgreSQL says
        # so itself: pg_blocking_pids), and it has not gone ahead.
        wait_until(
            lambda: blocked_by(billsync.database, holder), "the ingest waits on the sync's locks"
        )
        assert not ingested.is_set(), "ingest went ahead while the sync held the account"
    writer.join(timeout=30)
    assert ingested.is_set()
    assert errors == []


@pytest.mark.unit
def test_a_deadlock_victim_batch_is_run_again() -> None:
    calls = []

    def record(outcomes: list[ValidEvent], _now: object) -> IngestReport:
        calls.append(len(outcomes))
        if len(calls) == 1:
            raise OperationalError("UPDATE lines", {}, psycopg.errors.DeadlockDetected())
        return IngestReport([])

    committer = GroupCommitter(record)  # type: ignore[arg-type]
    try:
        assert committer.submit([], T0).results == []
    finally:
        committer.close()
    assert calls == [0, 0]
    assert is_retryable(psycopg.errors.SerializationFailure())
    assert not is_retryable(ValueError("not a database error"))
