"""A request rate per customer token on the routes a customer token opens (its billing page,
bill and portal): a token handed to a browser must not be able to spend the API's capacity —
or, through the portal, the Stripe budget everyone shares. A token bucket per token: bursts
up to ``per_minute`` requests, refilled at ``per_minute`` a minute; past it, 429 with
Retry-After. Counted per API process (N processes allow N times the rate: the bound is on
each process's work, which is what it protects). The platform's API token is not limited."""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from billsync.api.guard import CUSTOMER_ROUTES, route_path
from billsync.core.customer_tokens import PREFIX

PAGE_ROUTES = re.compile(r"^/billing/[^/]+(?:/portal|/usage\.csv)?$")
PAGE_COOKIE = "billsync_customer"
MAX_TRACKED = 100_000  # buckets kept (least recently used dropped first)


class TokenBuckets:
    """One bucket per key; ``take`` answers 0 (go) or the seconds until a request may go."""

    def __init__(self, per_minute: int, now: Callable[[], float]) -> None:
        self.capacity = float(per_minute)
        self.refill = per_minute / 60.0
        self._now = now
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        now = self._now()
        with self._lock:
            tokens, since = self._buckets.pop(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + max(0.0, now - since) * self.refill)
            wait = 0.0
            if tokens >= 1:
                tokens -= 1
            else:
                wait = (1 - tokens) / self.refill
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > MAX_TRACKED:
                self._buckets.popitem(last=False)
        return wait


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return ""


def customer_token_of(scope: Scope) -> str | None:
    """The customer token a request to a customer route presents, if any."""
    path = route_path(scope)
    if CUSTOMER_ROUTES.match(path):
        presented = _header(scope, b"authorization").partition(" ")[2].strip()
        return presented if presented.startswith(PREFIX) else None
    if PAGE_ROUTES.match(path):
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        token = next(iter(query.get("token", [])), "")
        if not token:
            cookie = SimpleCookie()
            try:
                cookie.load(_header(scope, b"cookie"))
            except Exception:  # a malformed Cookie header: no token from it
                return None
            morsel = cookie.get(PAGE_COOKIE)
            token = morsel.value if morsel is not None else ""
        return token if token.startswith(PREFIX) else None
    return None


class CustomerRateLimit:
    def __init__(self, app: ASGIApp, *, per_minute: int, now: Callable[[], float]) -> None:
        self.app = app
        self.buckets = TokenBuckets(per_minute, now)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            token = customer_token_of(scope)
            if token is not None:
                wait = self.buckets.take(hashlib.sha256(token.encode()).hexdigest())
                if wait > 0:
                    await _too_many(send, math.ceil(wait))
                    return
        await self.app(scope, receive, send)


async def _too_many(send: Send, retry_after: int) -> None:
    body = orjson.dumps(
        {
            "error": {
                "code": "rate_limited",
                "message": f"too many requests with this customer token: retry in {retry_after} s",
            }
        }
    )
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(retry_after).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
