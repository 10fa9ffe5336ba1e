"""Waiting for what another thread or process does, without asserting on the machine's speed.

A test that waits for a worker, a server or the emulator polls a condition; the limit is a
backstop against a hang (a stuck test fails with a message instead of blocking the suite), set
far above how long the thing takes on a loaded machine, so that only billsync being stuck or
wrong can reach it — never billsync being slow.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import text

from billsync.db.database import Database

T = TypeVar("T")

BACKSTOP_SECONDS = 120.0


def wait_until(
    condition: Callable[[], T | None],
    what: str = "the condition",
    *,
    timeout: float = BACKSTOP_SECONDS,
    every: float = 0.02,
) -> T:
    """Poll ``condition`` until it returns something true, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still not so after {timeout:g} s (stuck, not slow)")
        time.sleep(every)


def blocked_by(database: Database, pid: int) -> bool:
    """Whether one of this test process's PostgreSQL sessions waits for a lock the session
    ``pid`` holds. Only its own: advisory locks are keyed by account id across the whole
    database, so another test process's session on an account of the same name can wait on
    ``pid`` too (its application_name is its schema: tests.conftest)."""
    with database.engine.connect() as connection:
        waiting = connection.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid)) "
                "AND application_name = current_setting('application_name')"
            ),
            {"pid": pid},
        ).scalar_one()
    return int(waiting) > 0
