"""Signed webhook delivery with retries, and chaos for the receiver's tests.

Each event is POSTed to every enabled endpoint that subscribes to its type, signed exactly as
Stripe signs: ``Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body" with the
endpoint's secret>``. A non-2xx answer or a network error is retried with exponential backoff
(``webhook_retry_base_seconds`` × 2^(attempt−1), real time) up to ``webhook_max_attempts``.

Chaos (``POST /_emulator/webhooks/chaos``): ``duplicate_rate`` sends an event twice,
``reorder_window`` holds up to N events and sends them shuffled, ``delay_seconds`` delays
every first attempt, ``fail_first`` makes the first K attempts of each delivery fail without
reaching the receiver, ``drop_rate`` loses deliveries entirely (only ``GET /v1/events`` has
them then). ``drop_next`` and ``duplicate_next`` do the same to the next N events, whatever the
rates draw (deterministic, for tests that must meet each kind of chaos).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import hmac
import itertools
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from billsync.emulator.state import State, public


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@dataclass
class Chaos:
    duplicate_rate: float = 0.0
    reorder_window: int = 0
    delay_seconds: float = 0.0
    fail_first: int = 0
    drop_rate: float = 0.0
    drop_next: int = 0
    duplicate_next: int = 0
    seed: int = 0
    random: random.Random = field(default_factory=lambda: random.Random(0))

    def describe(self) -> dict[str, Any]:
        return {
            "duplicate_rate": self.duplicate_rate,
            "reorder_window": self.reorder_window,
            "delay_seconds": self.delay_seconds,
            "fail_first": self.fail_first,
            "drop_rate": self.drop_rate,
            "drop_next": self.drop_next,
            "duplicate_next": self.duplicate_next,
            "seed": self.seed,
        }

    def drops(self) -> bool:
        """Whether the next event is lost (the rate is drawn either way, so a seed replays)."""
        drawn = self.random.random() < self.drop_rate
        if self.drop_next > 0:
            self.drop_next -= 1
            return True
        return drawn

    def duplicates(self) -> bool:
        drawn = self.random.random() < self.duplicate_rate
        if self.duplicate_next > 0:
            self.duplicate_next -= 1
            return True
        return drawn


@dataclass(order=True)
class _Attempt:
    due: float
    order: int
    endpoint_id: str = field(compare=False)
    event_id: str = field(compare=False)
    attempt: int = field(compare=False, default=1)


class WebhookDispatcher:
    def __init__(self, state: State) -> None:
        self.state = state
        self.chaos = Chaos()
        self._queue: list[_Attempt] = []
        self._held: list[tuple[str, str]] = []
        self._order = itertools.count()
        self._wake = asyncio.Event()
        self._client: httpx.AsyncClient | None = None
        self.log: list[dict[str, Any]] = []  # last deliveries, for the control plane

    def configure(self, spec: dict[str, Any]) -> None:
        chaos = Chaos(
            duplicate_rate=float(spec.get("duplicate_rate", 0)),
            reorder_window=int(spec.get("reorder_window", 0)),
            delay_seconds=float(spec.get("delay_seconds", 0)),
            fail_first=int(spec.get("fail_first", 0)),
            drop_rate=float(spec.get("drop_rate", 0)),
            drop_next=int(spec.get("drop_next", 0)),
            duplicate_next=int(spec.get("duplicate_next", 0)),
            seed=int(spec.get("seed", 0)),
        )
        chaos.random = random.Random(chaos.seed)
        self.chaos = chaos

    def reset(self) -> None:
        self._queue.clear()
        self._held.clear()
        self.log.clear()
        self.chaos = Chaos()

    def wake(self) -> None:
        self._wake.set()

    def _schedule(self, endpoint_id: str, event_id: str, attempt: int, delay: float) -> None:
        heapq.heappush(
            self._queue,
            _Attempt(time.monotonic() + delay, next(self._order), endpoint_id, event_id, attempt),
        )

    def _take_outbox(self) -> None:
        outbox, self.state.outbox = self.state.outbox, []
        chaos = self.chaos
        counts = self.state.stats.webhook_chaos
        for endpoint_id, event_id in outbox:
            if chaos.drops():
                self._settled(event_id)
                counts["dropped"] += 1
                continue
            copies = 2 if chaos.duplicates() else 1
            counts["duplicated"] += copies - 1
            for _ in range(copies):
                self._held.append((endpoint_id, event_id))
        if chaos.reorder_window and len(self._held) < chaos.reorder_window:
            return
        if chaos.reorder_window:
            chaos.random.shuffle(self._held)
            counts["reordered"] += len(self._held)
        for endpoint_id, event_id in self._held:
            self._schedule(endpoint_id, event_id, 1, chaos.delay_seconds)
        self._held.clear()

    def flush_held(self) -> None:
        """Release events held for reordering (the control plane's ``flush``)."""
        for endpoint_id, event_id in self._held:
            self._schedule(endpoint_id, event_id, 1, self.chaos.delay_seconds)
        self._held.clear()

    def _settled(self, event_id: str) -> None:
        event = self.state.events.get(event_id)
        if event is not None and event["pending_webhooks"] > 0:
            event["pending_webhooks"] -= 1

    async def run(self) -> None:
        self._client = httpx.AsyncClient()
        while True:
            self._take_outbox()
            now = time.monotonic()
            ready: list[_Attempt] = []
            while self._queue and self._queue[0].due <= now:
                ready.append(heapq.heappop(self._queue))
            for attempt in ready:
                await self._deliver(attempt)
            timeout = 0.05 if not self._queue else max(0.0, min(0.05, self._queue[0].due - now))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout or 0.001)

    async def _deliver(self, attempt: _Attempt) -> None:
        state = self.state
        endpoint = state.webhook_endpoints.get(attempt.endpoint_id)
        event = state.events.get(attempt.event_id)
        if endpoint is None or event is None or endpoint["status"] != "enabled":
            return
        state.stats.webhook_attempts += 1
        status: int | None = None
        error: str | None = None
        if attempt.attempt <= self.chaos.fail_first:
            error = "injected failure"
        else:
            payload = orjson.dumps(public(event))
            signature = sign(payload, endpoint["secret"], state.clock.now())
            assert self._client is not None
            try:
                response = await self._client.post(
                    endpoint["url"],
                    content=payload,
                    headers={
                        "Content-Type": "application/json; charset=utf-8",
                        "Stripe-Signature": signature,
                        "User-Agent": "Stripe/1.0 (emulator)",
                    },
                    timeout=state.config.webhook_timeout_seconds,
                )
                status = response.status_code
            except httpx.HTTPError as failure:
                error = type(failure).__name__
        delivered = status is not None and 200 <= status < 300
        self.log.append(
            {
                "event": event["id"],
                "type": event["type"],
                "endpoint": endpoint["id"],
                "attempt": attempt.attempt,
                "status": status,
                "error": error,
            }
        )
        del self.log[:-500]
        if delivered:
            state.stats.webhook_deliveries += 1
            self._settled(event["id"])
            return
        state.stats.webhook_failures += 1
        if attempt.attempt >= state.config.webhook_max_attempts:
            self._settled(event["id"])
            return
        delay = state.config.webhook_retry_base_seconds * 2 ** (attempt.attempt - 1)
        self._schedule(attempt.endpoint_id, attempt.event_id, attempt.attempt + 1, delay)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def pending(self) -> int:
        return len(self._queue) + len(self._held) + len(self.state.outbox)
