"""One error type for everything billsync refuses on purpose.

Each error has an HTTP status, a stable machine code and a message a person can act on. The API
renders them as ``{"error": {"code", "message"}}``; the CLI prints the message.
"""

from __future__ import annotations

from typing import Any


class BillsyncError(Exception):
    status_code: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details


class InvalidRequest(BillsyncError):
    status_code = 422
    code = "invalid_request"


class NotFound(BillsyncError):
    status_code = 404
    code = "not_found"


class Conflict(BillsyncError):
    status_code = 409
    code = "conflict"


class DuplicateRequest(Conflict):
    """The client's key names a request already carried out (billsync.core.request_keys):
    nothing was done this time."""

    code = "duplicate_request"

    def __init__(self, actor: str, key: str, digest: str) -> None:
        super().__init__(
            f"the request with key {key!r} was already carried out; it was not done again"
        )
        self.actor = actor
        self.key = key
        self.digest = digest  # what this request asked for: the same as the first's, or not


class RequestTimeout(BillsyncError):
    status_code = 408
    code = "request_timeout"


class PayloadTooLarge(BillsyncError):
    status_code = 413
    code = "payload_too_large"


class Unauthorized(BillsyncError):
    status_code = 401
    code = "unauthorized"


class CatalogOutdated(BillsyncError):
    """This process rates with a catalog whose prices are no longer the ones applied to the
    ledger (``billsync catalog apply``; core.catalog_pricing): nothing was recorded, and the
    client retries (reaching a process with the applied catalog)."""

    status_code = 503
    code = "catalog_outdated"
