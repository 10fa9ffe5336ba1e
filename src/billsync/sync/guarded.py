"""A Stripe gateway whose every call spends the process's one rate budget and answers to its
circuit breaker — for the callers that are not the sync engine (webhook processing's re-reads,
the events sweep, the portal), so that no Stripe call of billsync's goes around the budget."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from billsync.services.sync import CallGuard
from billsync.sync.port import ENDPOINTS, StripePort


class _Guarded:
    def __init__(self, gateway: StripePort, guard: CallGuard, lane: int) -> None:
        self._gateway = gateway
        self._guard = guard
        self._lane = lane

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._gateway, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._guard.call(self._lane, ENDPOINTS.get(name)):
                return method(*args, **kwargs)

        return call


def guarded(gateway: StripePort, guard: CallGuard, lane: int) -> StripePort:
    return cast(StripePort, _Guarded(gateway, guard, lane))
