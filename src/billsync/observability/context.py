"""Correlation ids: which HTTP request, which account sync a log line or a Stripe call belongs to.

They live in context variables so that they follow the work and nothing else: a request's id is
seen by the route running in a thread pool (anyio copies the context into it), a sync run's id by
every log line and Stripe call made during the run in whichever worker thread runs it, and two
requests or runs at the same time never see each other's.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from functools import wraps
from typing import ParamSpec, TypeVar

REQUEST_ID: ContextVar[str | None] = ContextVar("billsync_request_id", default=None)
SYNC_ID: ContextVar[str | None] = ContextVar("billsync_sync_id", default=None)

# A caller's X-Request-ID is logged and echoed back only when it is short and plain: no spaces,
# no control characters (a header or a log line cannot be forged through it), at most 128.
_ACCEPTABLE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+=/-]{0,127}")

P = ParamSpec("P")
R = TypeVar("R")


def request_id_from(header: str | None) -> str:
    """The caller's request id when it is safe to log and echo; otherwise a fresh one."""
    if header is not None and _ACCEPTABLE_REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


def current_ids() -> dict[str, str]:
    """The correlation ids in force here, by log field name (none outside a request or run)."""
    ids: dict[str, str] = {}
    request_id = REQUEST_ID.get()
    if request_id is not None:
        ids["request_id"] = request_id
    sync_id = SYNC_ID.get()
    if sync_id is not None:
        ids["sync_id"] = sync_id
    return ids


def sync_run(function: Callable[P, R]) -> Callable[P, R]:
    """Runs each call under a fresh ``sync_id``, restored afterwards: a sync started inside
    another (a lifecycle step syncing what it closes) gets its own id, and the outer run keeps
    its id for what it logs after."""

    @wraps(function)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        token = SYNC_ID.set(secrets.token_hex(8))
        try:
            return function(*args, **kwargs)
        finally:
            SYNC_ID.reset(token)

    return run
