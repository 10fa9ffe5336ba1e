"""Group commit: concurrent batches share a transaction, each still answered for itself."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any

from billsync.bootstrap import Billsync
from billsync.core.usage import Rejection, ValidEvent, validate_event
from billsync.services.group_commit import GroupCommitter
from billsync.services.ingest import EventStatus, IngestReport
from tests.conftest import T0
from tests.factories import create_account, event
from tests.waiting import wait_until

Outcomes = Sequence[ValidEvent | Rejection]


def validated(billsync: Billsync, events: list[dict[str, Any]]) -> Outcomes:
    rules = billsync.ingest.rules()
    return [validate_event(raw, rules) for raw in events]


def wait_for_queue(committer: GroupCommitter, size: int) -> None:
    """Until ``size`` batches wait behind the running group (bounded, no fixed sleep)."""
    wait_until(lambda: committer._queue.qsize() >= size, "the batches queue", every=0.005)


def test_waiting_batches_commit_together_and_duplicates_across_them_count_once(
    billsync: Billsync,
) -> None:
    create_account(billsync)
    gate = threading.Event()
    calls: list[int] = []

    def record(outcomes: Outcomes, now: datetime) -> IngestReport:
        calls.append(len(outcomes))
        if len(calls) == 1:
            gate.wait(10)
        return billsync.ingest.record(outcomes, now)

    committer = GroupCommitter(record)
    shared = event("acme", quantity=7, at=T0, event_id="shared")
    first = validated(billsync, [event("acme", quantity=1, at=T0)])
    second = validated(billsync, [event("acme", quantity=2, at=T0), shared])
    third = validated(billsync, [shared, event("acme", quantity=3, at=T0)])
    with ThreadPoolExecutor(3) as pool:
        a: Future[IngestReport] = pool.submit(committer.submit, first, T0)
        while not calls:
            gate.wait(0.005)
        b = pool.submit(committer.submit, second, T0)
        c = pool.submit(committer.submit, third, T0)
        wait_for_queue(committer, 2)
        gate.set()
        reports = [a.result(10), b.result(10), c.result(10)]
    committer.close()
    assert calls == [1, 4]  # one group for the first batch, one for the two that waited
    assert (committer.groups, committer.batches) == (2, 3)
    assert [r.status for r in reports[1].results] == [EventStatus.ACCEPTED] * 2
    assert [r.status for r in reports[2].results] == [EventStatus.DUPLICATE, EventStatus.ACCEPTED]
    with billsync.database.read() as connection:
        view = billsync.lines.period_lines(
            connection, billsync.accounts.get(connection, "acme"), "current"
        )
    assert [line.quantity for line in view.lines] == [1 + 2 + 7 + 3]


def test_a_failing_group_is_retried_batch_by_batch(billsync: Billsync) -> None:
    create_account(billsync)
    gate = threading.Event()
    seen: list[int] = []

    def record(outcomes: Outcomes, now: datetime) -> IngestReport:
        seen.append(len(outcomes))
        if len(seen) == 1:
            gate.wait(10)
        if len(outcomes) > 1:
            raise RuntimeError("one bad batch in the group")
        return billsync.ingest.record(outcomes, now)

    committer = GroupCommitter(record)
    batches = [validated(billsync, [event("acme", quantity=n, at=T0)]) for n in (1, 2, 3)]
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(committer.submit, batches[0], T0)]
        while not seen:
            gate.wait(0.005)
        futures += [pool.submit(committer.submit, batch, T0) for batch in batches[1:]]
        wait_for_queue(committer, 2)
        gate.set()
        reports = [future.result(10) for future in futures]
    committer.close()
    assert seen == [1, 2, 1, 1]  # the group of two failed, each was then stored alone
    assert all(report.accepted == 1 for report in reports)
