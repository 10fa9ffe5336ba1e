"""Requests that change money are carried out once, however often they are sent.

A client that sends a request again (its answer was lost; a person clicked twice; a browser
re-posted a form) names it with a key: the API's ``Idempotency-Key`` header, the console's
one-time ``submission`` field in each form. The key is written on the action's audit entry, in
the same transaction as what the action changes, under a unique index on (actor, key): of two
sends, one commits and the other is refused (``billsync.errors.DuplicateRequest``) with
nothing done, and the caller answers with what the first one did.

As Stripe's own keys (https://docs.stripe.com/idempotency): at most 255 characters, compared
with the request's parameters (a key sent again with other parameters is an error, not a
replay), and only an action that was carried out keeps its key — a request refused for its
input holds no key, so the corrected request can be sent with the same one. Unlike Stripe's,
billsync's keys are never pruned after a day: they live on the audit entry.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import orjson

KEY_LIMIT = 255
# Visible ASCII: a key is an opaque token (a UUID, a random string), printed in audit logs.
KEY_PATTERN = re.compile(r"[\x21-\x7e]{1,255}")


@dataclass(frozen=True, slots=True)
class RequestKey:
    """The client's key for one request, and a digest of what the request asked for."""

    key: str
    digest: str


class InvalidKey(ValueError):
    """A key that is not 1 to 255 visible ASCII characters."""


def request_key(key: str | None, what: str, parameters: dict[str, Any]) -> RequestKey | None:
    """The key of a request for ``what`` (its route or action) with ``parameters``, checked;
    None when the client sent none."""
    if key is None or key == "":
        return None
    if not KEY_PATTERN.fullmatch(key):
        raise InvalidKey(
            f"an idempotency key is 1 to {KEY_LIMIT} visible ASCII characters (a UUID will do)"
        )
    body = orjson.dumps(
        {"what": what, "parameters": parameters}, option=orjson.OPT_SORT_KEYS, default=str
    )
    return RequestKey(key, hashlib.sha256(body).hexdigest())
