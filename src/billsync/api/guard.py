"""The gate in front of /v1: the API token and the body size limit, checked before any route
reads or parses a byte of the body (so an anonymous client cannot make billsync parse JSON).
Every request, /v1 or not, has its body bounded in size and in time: a client trickling bytes
cannot hold a connection and a worker for long (408 after ``body_timeout_seconds``).

Signed routes (Stripe's webhook) take no token, so anyone can call them: what an anonymous
caller can make billsync hold is bounded before a byte of the body is read. The signature
header must have the signer's shape (else 400 at once), the body has a small cap of its own
(a Content-Length over it: 413 at once), and only so many such requests are served at once
(more: 503 with Retry-After, which Stripe treats as a failed delivery and retries,
https://docs.stripe.com/webhooks#automatic-retries)."""

from __future__ import annotations

import asyncio
import hmac
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from billsync.errors import PayloadTooLarge, RequestTimeout

PROTECTED_PREFIX = "/v1/"
# What a customer token may call (its own account only): its bill, its portal, its usage.
CUSTOMER_ROUTES = re.compile(r"^/v1/accounts/([^/]+)/(?:billing|portal|usage)$")


@dataclass(frozen=True, slots=True)
class SignedRoute:
    """A route whose caller proves itself by a signature over the body, not by a token."""

    path: str
    method: str
    # The header carrying the signature (lower case, as ASGI gives header names).
    signature_header: bytes
    # Whether the header has the signer's shape: checked before the body is read.
    well_formed: Callable[[str | None], bool]
    max_body_bytes: int
    # Requests of this route served at once, body read included; more are answered 503.
    max_concurrent: int


def route_path(scope: Scope) -> str:
    """The path the router matches: the request's path without the prefix the app is served
    under (``--root-path``; ASGI puts it in both ``root_path`` and ``path``). Checking the raw
    path let ``/api/v1/…`` through with no token behind a prefix, while the router served it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


class ApiGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        tokens: Sequence[str],
        max_body_bytes: int,
        signed_routes: Sequence[SignedRoute] = (),
        customer_account_of: Callable[[str], str | None] | None = None,
        body_timeout_seconds: float = 30.0,
    ) -> None:
        self.app = app
        self.body_timeout_seconds = body_timeout_seconds
        # Reads a customer token: the account it opens, or None when it is not a valid one.
        self.customer_account_of = customer_account_of
        # Paths that prove their caller another way (Stripe's webhook signature): no token.
        self.signed_routes = {route.path: route for route in signed_routes}
        # Requests of each signed route in progress (one event loop: no lock needed).
        self.in_progress = dict.fromkeys(self.signed_routes, 0)
        self.tokens = [token.encode() for token in tokens]
        self.max_body_bytes = max_body_bytes

    def _authorized(self, scope: Scope) -> tuple[bool, str]:
        header = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value
                break
        scheme, _, presented = header.partition(b" ")
        presented = presented.strip()
        if scheme.lower() != b"bearer" or not presented:
            return False, "missing_token"
        # Constant time against every configured token (two are live during a rotation).
        matched = False
        for token in self.tokens:
            matched |= hmac.compare_digest(presented, token)
        return matched, "invalid_token"

    def _customer(self, scope: Scope) -> tuple[int, str, str] | None:
        """A customer token opens its own account's billing and portal, nothing else."""
        header = dict(scope["headers"]).get(b"authorization", b"")
        presented = header.partition(b" ")[2].strip().decode(errors="replace")
        assert self.customer_account_of is not None
        account = self.customer_account_of(presented)
        if account is None:
            return 401, "invalid_token", "the API token is not valid"
        match = CUSTOMER_ROUTES.match(route_path(scope))
        if match is None or match.group(1) != account:
            return 403, "forbidden", "this customer token opens only its own account's billing"
        scope.setdefault("state", {})["customer_account"] = account
        return None

    async def _refuse(
        self,
        send: Send,
        status: int,
        code: str,
        message: str,
        extra_headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        body = orjson.dumps({"error": {"code": code, "message": message}})
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *extra_headers,
        ]
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        if not path.startswith(PROTECTED_PREFIX):
            await self.app(scope, self._bounded(receive), send)
            return
        signed = self.signed_routes.get(path)
        if signed is not None:  # proven by a signature, not by a token
            if scope["method"] == signed.method:
                await self._signed(signed, scope, receive, send)
            else:  # answered 405 by the router, its body unread
                await self.app(scope, self._bounded(receive, signed.max_body_bytes), send)
            return
        authorized, code = self._authorized(scope)
        if not authorized and code == "invalid_token" and self.customer_account_of is not None:
            refusal = self._customer(scope)
            if refusal is not None:
                await self._refuse(send, *refusal)
                return
            authorized = True
        if not authorized:
            message = (
                "send the API token as 'Authorization: Bearer <token>'"
                if code == "missing_token"
                else "the API token is not valid"
            )
            await self._refuse(send, 401, code, message)
            return
        limit = self.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._refuse(
                send,
                413,
                "body_too_large",
                f"the body is {declared} bytes; the limit is {limit}: send smaller batches",
            )
            return
        await self.app(scope, self._bounded(receive), send)

    async def _signed(self, route: SignedRoute, scope: Scope, receive: Receive, send: Send) -> None:
        """A signed route: the header's shape, the declared length and a free place are checked
        before the body is read; the body is then capped at the route's own limit."""
        header = _header(scope, route.signature_header)
        if not route.well_formed(None if header is None else header.decode("latin-1")):
            name = route.signature_header.decode()
            await self._refuse(
                send, 400, "invalid_signature", f"the {name} header is missing or malformed"
            )
            return
        limit = route.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._refuse(
                send, 413, "body_too_large", f"the body is {declared} bytes; the limit is {limit}"
            )
            return
        if self.in_progress[route.path] >= route.max_concurrent:
            await self._refuse(
                send,
                503,
                "busy",
                f"{route.max_concurrent} deliveries are being received: retry in a moment",
                [(b"retry-after", b"1")],
            )
            return
        self.in_progress[route.path] += 1
        try:
            await self.app(scope, self._bounded(receive, limit), send)
        finally:
            self.in_progress[route.path] -= 1

    def _bounded(self, receive: Receive, limit: int | None = None) -> Receive:
        """``receive`` with the body capped in size and in time."""
        limit = self.max_body_bytes if limit is None else limit
        deadline = time.monotonic() + self.body_timeout_seconds
        received = 0

        async def bounded_receive() -> Message:
            nonlocal received
            try:
                message = await asyncio.wait_for(
                    receive(), timeout=max(0.0, deadline - time.monotonic())
                )
            except TimeoutError:
                raise RequestTimeout(
                    f"the request body did not arrive within {self.body_timeout_seconds:g} s",
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(
                        f"the body exceeds the limit of {limit} bytes: send smaller batches",
                        code="body_too_large",
                    )
            return message

        return bounded_receive


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _content_length(scope: Scope) -> int | None:
    """The declared body length, when it is a number (HTTP servers refuse a malformed one)."""
    value = _header(scope, b"content-length")
    if value is None or not value.isdigit():
        return None
    return int(value) if len(value) <= 18 else 10**18  # int() refuses 4,300 digits and more
