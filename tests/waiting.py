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
