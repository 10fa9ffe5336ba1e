"""The emulator's HTTP server: Stripe's API under /v1, the control plane under /_emulator."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable, Hashable
from typing import Any
from urllib.parse import unquote

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HttpRoute
from starlette.types import Receive, Scope, Send

from billsync.emulator import control, invoices, render
from billsync.emulator.billing import Context
from billsync.emulator.errors import StripeError
from billsync.emulator.faults import FaultRule, Faults
from billsync.emulator.forms import decode
from billsync.emulator.params import convert_params, params_class
from billsync.emulator.routes import Route, match, path_exists
from billsync.emulator.state import API_VERSION, EmulatorConfig, IdempotentResult, State, new_id
from billsync.emulator.webhooks import WebhookDispatcher

_KEY = re.compile(r"^(sk|rk)_(test|live)_[A-Za-z0-9]{8,247}$")


class RateLimiter:
    """A token bucket per key (a mode, or a mode and an endpoint), refilled continuously;
    ``rate`` requests/s, 1 s of burst."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self._buckets: dict[Hashable, tuple[float, float]] = {}

    def allow(self, key: Hashable, rate: float) -> bool:
        if rate <= 0:
            return True
        now = self._now()
        tokens, last = self._buckets.get(key, (rate, now))
        tokens = min(rate, tokens + (now - last) * rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1, now)
        return True


class Emulator:
    """State, faults, rate limiter and webhook dispatcher behind one ASGI app."""

    def __init__(
        self, config: EmulatorConfig | None = None, api_keys: set[str] | None = None
    ) -> None:
        self.state = State(config)
        self.faults = Faults()
        self.limiter = RateLimiter()
        self.api_keys = api_keys
        self.locked_invoices: set[str] = set()
        self.webhooks = WebhookDispatcher(self.state)
        self.app = Starlette(
            routes=[
                HttpRoute("/v1/{path:path}", self.api, methods=["GET", "POST", "DELETE"]),
                *control.routes(self),
            ],
            lifespan=self._lifespan,
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(self.webhooks.run()), asyncio.create_task(self._on_its_own())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.webhooks.close()

    async def _on_its_own(self) -> None:
        """What Stripe does without being asked (drafts finalizing, payment attempts), checked
        a few times a second besides at every request."""
        while True:
            await asyncio.sleep(0.1)
            invoices.advance_due_drafts(self.state)
            self.webhooks.wake()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    # --- the Stripe API --------------------------------------------------------------

    def _authenticate(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        key = ""
        if scheme.lower() == "bearer":
            key = credential.strip()
        elif scheme.lower() == "basic":
            with contextlib.suppress(ValueError):
                key = base64.b64decode(credential).decode().partition(":")[0]
        if not key:
            raise StripeError(
                401,
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth "
                "(e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            )
        if not _KEY.match(key) or (self.api_keys is not None and key not in self.api_keys):
            raise StripeError(401, f"Invalid API Key provided: {key[:8]}****{key[-4:]}")
        return key.split("_")[1] == "live"

    async def api(self, request: Request) -> Response:
        request_id = new_id("req")
        headers = {"Request-Id": request_id, "Stripe-Version": API_VERSION}
        idempotency_key = request.headers.get("idempotency-key")
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        try:
            return await self._api(request, request_id, idempotency_key, headers)
        except StripeError as error:
            if error.status == 429:
                self.state.stats.rate_limited += 1
            self.state.stats.by_status[error.status] += 1
            return Response(
                orjson.dumps(error.body(request_id)),
                error.status,
                {**headers, **error.headers},
                media_type="application/json",
            )

    async def _api(
        self,
        request: Request,
        request_id: str,
        idempotency_key: str | None,
        headers: dict[str, str],
    ) -> Response:
        state = self.state
        path = "/" + unquote(request.url.path).lstrip("/")
        found = match(request.method, path)
        endpoint = f"{request.method} {found[0].path}" if found else f"{request.method} {path}"
        state.stats.total += 1
        state.stats.by_endpoint[endpoint] += 1
        state.stats.per_second[int(time.time())] += 1
        livemode = self._authenticate(request)
        rate = state.config.rate_limit_live if livemode else state.config.rate_limit_test
        per_endpoint = state.config.endpoint_rates.get(endpoint, state.config.rate_limit_endpoint)
        if not self.limiter.allow(livemode, rate) or not self.limiter.allow(
            (livemode, endpoint), float(per_endpoint)
        ):
            raise StripeError(
                429,
                "Request rate limit exceeded. Learn more about rate limits here "
                "https://stripe.com/docs/rate-limits.",
                code="rate_limit",
            )
        if found is None:
            status = 405 if path_exists(path) else 404
            raise StripeError(status, f"Unrecognized request URL ({request.method}: {path}).")
        route, path_args = found
        raw = (await request.body()).decode() if request.method == "POST" else request.url.query
        fired = self.faults.pick(endpoint)
        kinds = {rule.kind: rule for rule in fired}
        for kind in fired:
            state.stats.faults[kind.kind] += 1
        await self._early_faults(kinds)

        replay = self._idempotency_check(request, path, raw, idempotency_key, livemode)
        if replay is not None:
            state.stats.idempotent_replays += 1
            state.stats.by_status[replay.status] += 1
            return Response(
                orjson.dumps(replay.body),
                replay.status,
                {**headers, "Idempotent-Replayed": "true"},
                media_type="application/json",
            )
        slot = (
            self._slot(idempotency_key, livemode)
            if request.method == "POST" and idempotency_key
            else None
        )
        try:
            params = self._params(route, decode(raw), request.headers.get("stripe-version"))
        except StripeError:
            if slot is not None:
                state.idempotency.pop(slot, None)  # validation failures are not remembered
            raise
        invoice_lock = self._invoice_to_lock(route.locks_invoice, path_args, params, livemode)
        if invoice_lock is not None:
            if invoice_lock in self.locked_invoices:
                state.stats.lock_timeouts += 1
                if slot is not None:
                    state.idempotency.pop(slot, None)
                raise StripeError(
                    429,
                    f"This object cannot be accessed right now because another API request or "
                    f"Stripe process is currently accessing it. (invoice {invoice_lock})",
                    code="lock_timeout",
                    headers={"Stripe-Should-Retry": "true"},
                )
            self.locked_invoices.add(invoice_lock)
        try:
            await self._slow_faults(kinds)
            invoices.advance_due_drafts(state)
            ctx = Context(livemode, request_id, idempotency_key)
            try:
                if "500_stored" in kinds:  # started, failed, wrote nothing: stored as is
                    raise StripeError(500, "An unknown error occurred.", type="api_error")
                if "refuse" in kinds:  # started, refused, wrote nothing: stored as is
                    rule = kinds["refuse"]
                    raise StripeError(
                        400, rule.message or "The request was refused (injected).",
                        code=rule.code,
                    )  # fmt: skip
                status, body = 200, route.operation(state, ctx, path_args, params)
            except StripeError as error:
                # The endpoint ran: its error is the result, replayed under the same key.
                status, body = error.status, error.body(request_id)
                headers.update(error.headers)
        finally:
            if invoice_lock is not None:
                self.locked_invoices.discard(invoice_lock)
        body = self._expand(body, params.get("expand", []), livemode)
        if slot is not None:
            result = state.idempotency[slot]
            result.status, result.body, result.in_flight = status, body, False
        state.stats.by_status[status] += 1
        self.webhooks.wake()
        if "drop_after_commit" in kinds:
            return _DroppedResponse()
        return Response(orjson.dumps(body), status, headers, media_type="application/json")

    @staticmethod
    def _params(route: Route, values: dict[str, Any], version: str | None) -> dict[str, Any]:
        """The request's parameters checked against the SDK's types for the pinned version,
        plus those a later version removed when the request asks for an earlier one
        (``Route.removed``)."""
        asked = version or API_VERSION
        removed = {
            name: values.pop(name) for name in list(values) if route.accepts_removed(name, asked)
        }
        params = convert_params(values, params_class(route.params))
        for name, value in removed.items():
            if not isinstance(value, str):
                raise StripeError(
                    400,
                    f"Invalid string: {name} must be a string",
                    code="parameter_invalid_string",
                    param=name,
                )
            params[name] = value
        return params

    def _slot(self, key: str, livemode: bool) -> tuple[str, str]:
        return ("live" if livemode else "test", key)

    def _idempotency_check(
        self, request: Request, path: str, raw: str, key: str | None, livemode: bool
    ) -> IdempotentResult | None:
        if request.method != "POST" or not key:
            return None
        if len(key) > 255:
            raise StripeError(
                400,
                "Idempotency keys can be at most 255 characters long.",
                code="idempotency_key_too_long",
            )
        state = self.state
        now = state.clock.now()
        slot = self._slot(key, livemode)
        fingerprint = (request.method, path, "&".join(sorted(raw.split("&"))))
        existing = state.idempotency.get(slot)
        if existing is not None and now - existing.created >= state.config.idempotency_ttl:
            existing = None  # pruned after 24 h: the key runs again
        if existing is None:
            state.idempotency[slot] = IdempotentResult(fingerprint=fingerprint, created=now)
            return None
        if existing.fingerprint != fingerprint:
            raise StripeError(
                400,
                f"Keys for idempotent requests can only be used with the same parameters they "
                f"were first used with. Try using a key other than '{key}' if you meant to "
                f"execute a different request.",
                type="idempotency_error",
            )
        if existing.in_flight:
            raise StripeError(
                409,
                "There is currently another in-progress request using this Idempotent Key "
                "(that probably means you submitted twice, and the other request is still "
                "going through). Please try again later.",
                code="idempotency_key_in_use",
                headers={"Stripe-Should-Retry": "true"},
            )
        return existing

    def _invoice_to_lock(
        self, locks: bool, path_args: dict[str, str], params: dict[str, Any], livemode: bool
    ) -> str | None:
        if not locks:
            return None
        target = path_args.get("id")
        if target is not None and target.startswith("ii_"):
            item = self.state.invoice_items.get(target)
            return None if item is None else item.get("invoice")
        if target is not None:
            return target
        invoice = params.get("invoice")
        return invoice if isinstance(invoice, str) else None

    async def _early_faults(self, kinds: dict[str, FaultRule]) -> None:
        if "429" in kinds:
            raise StripeError(429, "Request rate limit exceeded (injected).", code="rate_limit")
        if "lock_timeout" in kinds:
            raise StripeError(
                429,
                "This object cannot be accessed right now (injected lock timeout).",
                code="lock_timeout",
                headers={"Stripe-Should-Retry": "true"},
            )
        if "500" in kinds:
            raise StripeError(500, "An unknown error occurred (injected).", type="api_error")
        if "503" in kinds:
            raise StripeError(
                503, "Stripe is temporarily unavailable (injected).", type="api_error"
            )

    async def _slow_faults(self, kinds: dict[str, FaultRule]) -> None:
        if "latency" in kinds:
            await asyncio.sleep(kinds["latency"].seconds or 0.5)
        if "hang" in kinds:
            await asyncio.sleep(kinds["hang"].seconds or self.state.config.hang_seconds)

    def _expand(self, body: dict[str, Any], expand: list[str], livemode: bool) -> dict[str, Any]:
        """``expand[]`` for the references billsync follows: customer, invoice, an invoice's
        discounts, and ``data.customer`` / ``data.invoice`` / ``data.discounts`` on lists."""

        def expand_one(obj: dict[str, Any], field: str) -> None:
            value = obj.get(field)
            if field == "discounts" and isinstance(value, list):
                obj[field] = [
                    render.discount(self.state.discounts[item])
                    if isinstance(item, str) and item in self.state.discounts
                    else item
                    for item in value
                ]
                return
            if not isinstance(value, str):
                return
            if field == "customer" and value in self.state.customers:
                obj[field] = render.customer(self.state.customers[value])
            elif field == "invoice" and value in self.state.invoices:
                obj[field] = render.invoice(self.state, self.state.invoices[value])

        for path in expand:
            if path.startswith("data.") and isinstance(body.get("data"), list):
                for item in body["data"]:
                    expand_one(item, path.removeprefix("data."))
            else:
                expand_one(body, path)
        return body


class _DroppedResponse(Response):
    """Sends the status line and headers, then cuts the connection: the write is done, the
    client never learns it."""

    def __init__(self) -> None:
        super().__init__(b"", 200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")],
            }
        )
        raise ConnectionAbortedError("emulator: response dropped after commit (injected)")


def create_app(config: EmulatorConfig | None = None, api_keys: set[str] | None = None) -> Emulator:
    return Emulator(config, api_keys)
