"""The API's ``Idempotency-Key`` header on the requests that create money (billsync.core.
request_keys): the same key sent again with the same request answers with what the first one
created, marked ``Idempotent-Replayed: true``, and creates nothing; with another request, it is
refused (422 ``idempotency_key_reused``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Header, Response

from billsync.bootstrap import Billsync
from billsync.core.request_keys import KEY_LIMIT, RequestKey
from billsync.errors import Conflict, DuplicateRequest, InvalidRequest
from billsync.repositories.console import PriorRequest, prior_request
from billsync.services.support_checks import checked_request

REPLAYED = "Idempotent-Replayed"

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description=(
            f"A key of yours (1–{KEY_LIMIT} visible ASCII characters; a UUID will do) for this "
            "request: sent again (its answer was lost), the same request answers with what "
            "the first created, and creates nothing more. Keys are kept with the audit log."
        ),
    ),
]


def key_of(key: str | None, what: str, parameters: dict[str, Any]) -> RequestKey | None:
    """The request's key, checked, with the digest of what it asks for."""
    return checked_request(key, what, parameters)


def replay(
    billsync: Billsync, duplicate: DuplicateRequest, request: RequestKey, response: Response
) -> PriorRequest:
    """The first request carried out with this key, when this one asks for the same; the
    response is marked as a replay."""
    with billsync.database.read() as connection:
        prior = prior_request(connection, duplicate.actor, duplicate.key)
    if prior is None:  # the key is on a committed entry: it cannot vanish
        raise Conflict(duplicate.message, code=duplicate.code)
    if prior.digest != request.digest:
        raise InvalidRequest(
            f"the Idempotency-Key {request.key!r} was used at {prior.at.isoformat()} for another "
            f"request ({prior.action}): a new request needs a new key",
            code="idempotency_key_reused",
        )
    response.headers[REPLAYED] = "true"
    return prior
