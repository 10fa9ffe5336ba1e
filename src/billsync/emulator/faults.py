"""Fault injection: what can go wrong between billsync and Stripe, on demand.

Rules match an endpoint pattern (``POST /v1/invoices/{id}/add_lines``, a prefix ending in
``*``, or ``*``) and either fire on the next ``count`` matching requests (deterministic, for
tests; ``skip`` lets that many matching requests through first) or with a ``rate`` (0–1,
seeded, for chaos runs). Kinds:

- ``429``: ``rate_limit``; ``lock_timeout``: 429 with ``Stripe-Should-Retry: true``;
- ``500`` / ``503``: server errors before the endpoint runs (nothing stored under the key);
- ``500_stored``: the endpoint started and failed, writing nothing: Stripe stores that 500
  under the idempotency key and replays it to every retry with the key for 24 h
  (docs.stripe.com/api/idempotent_requests: "Subsequent requests with the same key return the
  same result, including 500 errors");
- ``latency``: ``seconds`` added before the answer;
- ``hang``: the request sleeps ``seconds`` (default: the configured hang time) and *then*
  performs its write — the client has long given up;
- ``drop_after_commit``: the write happens and is recorded under the idempotency key, then
  the connection is cut before the response body: the client sees a network error.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

KINDS = frozenset(
    {
        "429",
        "lock_timeout",
        "500",
        "500_stored",
        "503",
        "refuse",
        "latency",
        "hang",
        "drop_after_commit",
    }
)


@dataclass
class FaultRule:
    endpoint: str
    kind: str
    count: int | None = None
    rate: float | None = None
    seconds: float | None = None
    skip: int = 0
    fired: int = 0
    # "refuse": the 400's error code and message (e.g. a customer's tax location Stripe cannot
    # use when it finalizes an invoice with automatic tax)
    code: str | None = None
    message: str | None = None

    def matches(self, endpoint: str) -> bool:
        if self.endpoint == "*":
            return True
        if self.endpoint.endswith("*"):
            return endpoint.startswith(self.endpoint[:-1])
        return endpoint == self.endpoint

    def describe(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "kind": self.kind,
            "count": self.count,
            "rate": self.rate,
            "seconds": self.seconds,
            "skip": self.skip,
            "fired": self.fired,
            "code": self.code,
            "message": self.message,
        }


@dataclass
class Faults:
    rules: list[FaultRule] = field(default_factory=list)
    random: random.Random = field(default_factory=lambda: random.Random(0))

    def add(self, spec: dict[str, Any]) -> FaultRule:
        kind = str(spec.get("kind"))
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}")
        count, rate = spec.get("count"), spec.get("rate")
        if (count is None) == (rate is None):
            raise ValueError("give exactly one of count (next N requests) or rate (0–1)")
        if rate is not None and not 0 <= float(rate) <= 1:
            raise ValueError("rate must be between 0 and 1")
        rule = FaultRule(
            endpoint=str(spec.get("endpoint", "*")),
            kind=kind,
            count=None if count is None else int(count),
            rate=None if rate is None else float(rate),
            seconds=None if spec.get("seconds") is None else float(spec["seconds"]),
            skip=int(spec.get("skip", 0)),
            code=None if spec.get("code") is None else str(spec["code"]),
            message=None if spec.get("message") is None else str(spec["message"]),
        )
        self.rules.append(rule)
        return rule

    def seed(self, value: int) -> None:
        self.random = random.Random(value)

    def clear(self) -> None:
        self.rules.clear()

    def pick(self, endpoint: str) -> list[FaultRule]:
        """The rules that fire for this request (at most one of each kind)."""
        fired: dict[str, FaultRule] = {}
        for rule in self.rules:
            if rule.kind in fired or not rule.matches(endpoint):
                continue
            if rule.skip > 0:
                rule.skip -= 1
                continue
            if rule.count is not None:
                if rule.fired >= rule.count:
                    continue
            elif self.random.random() >= (rule.rate or 0.0):
                continue
            rule.fired += 1
            fired[rule.kind] = rule
        return list(fired.values())
