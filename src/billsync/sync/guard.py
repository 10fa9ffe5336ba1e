"""The one door every Stripe call of billsync's passes: the rate budget (the process's and,
with several processes, the shared one; Stripe's global limit and its per-endpoint limits) and
the circuit breaker.

``with guard.call(lane, endpoint):`` around the call itself. :func:`guarded` wraps a whole
gateway for the callers that are not the sync engine (webhook processing's re-reads, the events
sweep, the portal), so that no call goes around the budget.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol, cast

from billsync.sync.budget import CircuitBreaker, EndpointPacer, Lane, RateBudget, backoff_delay
from billsync.sync.port import (
    ENDPOINTS,
    StripeAmbiguous,
    StripeFailure,
    StripePort,
    StripeRateLimited,
    StripeUnavailable,
)
from billsync.sync.shared_budget import SharedBudget


class CallGuard(Protocol):
    """Around every Stripe call: the shared rate budget and the circuit breaker.

    ``with guard.call(lane):`` waits for the budget (or refuses while the breaker is open),
    and when the block ends answers the breaker exactly once: Stripe's answer if the block
    reached it (a ``StripeFailure`` or none), or, for any other way out (a lost lease, a
    database error before the call went out), that the call never happened."""

    def call(self, lane: Lane, endpoint: str | None = None) -> AbstractContextManager[None]: ...


class NoGuard:
    @contextmanager
    def call(self, lane: Lane, endpoint: str | None = None) -> Iterator[None]:
        yield


class StripeGuard:
    """Budget and breaker around every Stripe call (the sync service's ``CallGuard``)."""

    def __init__(
        self,
        budget: RateBudget,
        breaker: CircuitBreaker,
        shared: SharedBudget | None = None,
        *,
        endpoints: EndpointPacer | None = None,
        shared_endpoint: Callable[[str], SharedBudget] | None = None,
    ) -> None:
        self.budget = budget
        self.breaker = breaker
        self.shared = shared  # the budget of every process, when several share one Stripe key
        # Stripe's limit per endpoint: this process's pacing, or (several processes) one
        # shared budget per endpoint.
        self.endpoints = endpoints
        self.shared_endpoint = shared_endpoint
        self._rate_limited_in_a_row = 0
        self._random = random.Random()
        self._lock = threading.Lock()

    @contextmanager
    def call(self, lane: Lane, endpoint: str | None = None) -> Iterator[None]:
        """See ``CallGuard``: the breaker hears back exactly once, however the block ends."""
        self._before(lane, endpoint)
        try:
            yield
        except StripeFailure as failure:
            self._after(failure)
            raise
        except BaseException:
            self.breaker.abandon()  # it never reached Stripe (or we cannot tell it did)
            raise
        self._after(None)

    def _before(self, lane: Lane, endpoint: str | None) -> None:
        if not self.breaker.allow():
            raise StripeUnavailable(
                f"Stripe keeps failing: calls paused for {self.breaker.retry_in():.0f} s "
                "(circuit open)",
                code="circuit_open",
            )
        try:
            if endpoint is not None:  # the endpoint's own limit first: no global slot held
                if self.shared_endpoint is not None:
                    self.shared_endpoint(endpoint).acquire(lane)
                elif self.endpoints is not None:
                    self.endpoints.acquire(endpoint)
            self.budget.acquire(lane)
            if self.shared is not None:
                self.shared.acquire(lane)
        except BaseException:
            self.breaker.abandon()  # let through by the breaker, stopped before Stripe
            raise

    def _after(self, failure: StripeFailure | None) -> None:
        # Every call let through is answered to the breaker: Stripe answering at all (even a
        # 4xx or a 429) means it is up; only 5xx and lost connections count as failures.
        if isinstance(failure, StripeUnavailable | StripeAmbiguous):
            self.breaker.record_failure()
            return
        self.breaker.record_success()
        if isinstance(failure, StripeRateLimited):
            # Everyone backs off together: no 429 storm of our own making.
            with self._lock:
                self._rate_limited_in_a_row += 1
                attempt = self._rate_limited_in_a_row
            penalty = max(0.05, backoff_delay(attempt, rng=self._random))
            self.budget.penalize(penalty)
            if self.shared is not None:
                self.shared.penalize(penalty)
        elif failure is None:
            with self._lock:
                self._rate_limited_in_a_row = 0


class _Guarded:
    def __init__(self, gateway: StripePort, guard: CallGuard, lane: Lane) -> None:
        self._gateway = gateway
        self._guard = guard
        self._lane = lane

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._gateway, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._guard.call(self._lane, ENDPOINTS.get(name)):
                return method(*args, **kwargs)

        return call


def guarded(gateway: StripePort, guard: CallGuard, lane: Lane) -> StripePort:
    """``gateway`` with every call in ``lane`` through ``guard``."""
    return cast(StripePort, _Guarded(gateway, guard, lane))
