"""A new catalog's prices applied to the ledger once, and never rated with stale ones.

``billsync catalog apply`` (or a SQLite process's start, or any process's start when the
change touches no existing period) records the catalog's pricing (core.catalog_pricing). Where
it prices an existing period otherwise than the pricing applied before:

- every such period must be open — a period closing, in review or finalized bills at the prices
  it had, so the change is refused, naming them and what to do instead (a version from a later
  period start);
- the pricing is recorded first, then the open periods' own usage lines are re-rated (500
  accounts per transaction, under the ledger lock ingest takes, one rounding per line as
  ingest rates), and the sync puts the new amounts on the drafts. Interrupted, the next apply
  finishes it; re-rating is idempotent (amounts are recomputed from the quantities).

From the moment the pricing is recorded, each ingest batch checks (``PricingGuard``, in its own
transaction) that its process rates the periods it touches as the applied pricing does; a
process still running the old catalog answers 503 ``catalog_outdated`` for such a batch and
records nothing — during a rolling restart its producers retry on the new processes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, localcontext

from sqlalchemy import Connection

from billsync.clock import Clock
from billsync.core.catalog import Catalog
from billsync.core.catalog_pricing import (
    Span,
    changed_spans,
    prices_on,
    pricing_digest,
    pricing_document,
)
from billsync.core.money import EXACT
from billsync.core.periods import PeriodStatus
from billsync.core.pricing import applied_price
from billsync.core.rating import line_amount
from billsync.db.database import Database
from billsync.errors import CatalogOutdated, Conflict
from billsync.repositories import catalog_pricings as repository
from billsync.repositories import console as audit
from billsync.repositories import ledger, ledger_bulk
from billsync.repositories import sync as sync_repository

log = logging.getLogger("billsync.catalog")

RE_RATE_ACCOUNTS_PER_TRANSACTION = 500
SYSTEM_ACTOR = "system"


class CatalogChangeRefused(Conflict):
    """The catalog prices a period that is no longer open otherwise than it was rated."""

    code = "catalog_change_refused"


class PricingGuard:
    """Whether this process's catalog rates a batch's periods as the applied pricing does;
    read in each ingest batch's transaction (one primary-key look-up; the applied document
    is read once per pricing, each answer kept)."""

    def __init__(self, catalog: Catalog) -> None:
        self.document = pricing_document(catalog)
        self.digest = pricing_digest(self.document)
        self._applied: tuple[int, dict[str, object], str] | None = None
        self._same: dict[tuple[str, str, date], bool] = {}

    def check(self, connection: Connection, rated: Iterable[tuple[str, str, date]]) -> None:
        """``rated``: (metric, currency, period start) of each line the batch rates. Raises
        :class:`CatalogOutdated` if one is priced otherwise than the applied pricing does."""
        found = repository.latest_digest(connection)
        if found is None or found[1] == self.digest:
            return
        pricing_id = found[0]
        applied = self._applied
        if applied is None or applied[0] != pricing_id:
            record = repository.get(connection, pricing_id)
            assert record is not None
            applied = self._applied = (pricing_id, record.document, record.source)
            self._same = {}
        for metric, currency, start in rated:
            key = (metric, currency, start)
            same = self._same.get(key)
            if same is None:
                mine = (prices_on(self.document, metric, start) or {}).get(currency)
                theirs = (prices_on(applied[1], metric, start) or {}).get(currency)
                same = self._same[key] = mine == theirs
            if not same:
                raise CatalogOutdated(
                    f"this billsync process rates {metric} in {currency.upper()} for the "
                    f"period starting {start} with other prices than the catalog applied to "
                    f"the ledger ({applied[2]}): nothing was recorded; retry — a process "
                    "started with the applied catalog takes it — and restart this one with it"
                )


@dataclass(frozen=True, slots=True)
class PricingPlan:
    """What applying the catalog does. ``kind``: ``unchanged``; ``adopt`` (nothing applied
    yet: the ledger was rated with this catalog); ``change`` (another pricing is applied);
    ``resume`` (this pricing's re-rating was interrupted)."""

    kind: str
    spans: list[Span] = field(default_factory=list)
    touched: list[repository.TouchedPeriods] = field(default_factory=list)
    applied: repository.AppliedPricing | None = None

    @property
    def refused(self) -> list[repository.TouchedPeriods]:
        """Periods the change would re-price that are no longer open."""
        if self.kind != "change":
            return []
        return [t for t in self.touched if t.status is not PeriodStatus.OPEN]

    @property
    def open_periods(self) -> int:
        return sum(t.count for t in self.touched if t.status is not PeriodStatus.FINALIZED)

    def work(self) -> dict[tuple[date, str], set[str]]:
        """The metrics to re-rate per (period start, currency)."""
        found: dict[tuple[date, str], set[str]] = {}
        for touched in self.touched:
            if touched.status is PeriodStatus.FINALIZED:
                continue
            metrics = {
                span.metric
                for span in self.spans
                if span.currency == touched.currency and span.holds(touched.start)
            }
            if metrics:
                found.setdefault((touched.start, touched.currency), set()).update(metrics)
        return found


@dataclass(frozen=True, slots=True)
class PricingApplied:
    kind: str
    pricing_id: int | None
    spans: list[Span]
    lines_re_rated: int
    accounts_re_rated: int


def refusal_message(plan: PricingPlan) -> str:
    periods = "; ".join(
        f"{t.count} {t.status.value} period(s) of {t.currency.upper()} accounts starting {t.start}"
        for t in plan.refused
    )
    spans = "; ".join(span.describe() for span in plan.spans)
    return (
        f"the catalog changes the prices of periods that are no longer open ({periods}); "
        f"prices that change: {spans}. Those periods bill at the prices they had: give the new "
        "prices as a price version from an open period's start (or a later one) instead"
    )


class CatalogPrices:
    def __init__(self, database: Database, catalog: Catalog, clock: Clock) -> None:
        self.database = database
        self.catalog = catalog
        self.clock = clock
        self.document = pricing_document(catalog)
        self.digest = pricing_digest(self.document)

    def plan(self) -> PricingPlan:
        with self.database.read() as connection:
            return self._plan(connection)

    def _plan(self, connection: Connection) -> PricingPlan:
        applied = repository.latest(connection)
        if applied is None:
            return PricingPlan("adopt")
        if applied.digest == self.digest and applied.completed_at is not None:
            return PricingPlan("unchanged", applied=applied)
        bases = [] if applied.digest == self.digest else [applied.document]
        if applied.completed_at is None and applied.previous_id is not None:
            # Its re-rating did not finish: lines may still be at the pricing before it.
            previous = repository.get(connection, applied.previous_id)
            if previous is not None:
                bases.append(previous.document)
        spans = sorted(
            {span for base in bases for span in changed_spans(base, self.document)},
            key=lambda s: (s.metric, s.currency, s.since or date.min),
        )
        kind = "resume" if applied.digest == self.digest else "change"
        return PricingPlan(kind, spans, repository.periods_in(connection, spans), applied)

    def apply(
        self, actor: str = SYSTEM_ACTOR, *, progress: Callable[[int, int], None] | None = None
    ) -> PricingApplied:
        """Record this catalog's pricing and re-rate the open periods it prices otherwise.
        Raises :class:`CatalogChangeRefused` (nothing recorded) if it re-prices a period that
        is no longer open. ``progress(lines, accounts)`` after each transaction."""
        now = self.clock.now()
        with self.database.transaction() as connection:
            repository.lock_appliers(connection)
            plan = self._plan(connection)
            if plan.kind == "unchanged":
                return PricingApplied(
                    "unchanged", None if plan.applied is None else plan.applied.id, [], 0, 0
                )
            if plan.refused:
                raise CatalogChangeRefused(refusal_message(plan))
            if plan.kind == "resume":
                assert plan.applied is not None
                pricing_id = plan.applied.id
            else:
                pricing_id = repository.record(
                    connection, self.digest, self.document,
                    None if plan.applied is None else plan.applied.id,
                    self.catalog.source, actor, now, completed=not plan.touched,
                )  # fmt: skip
            if plan.kind == "change":  # adopting the first pricing changes nothing
                audit.record(
                    connection, actor=actor, action="catalog.prices", now=now,
                    detail={
                        "pricing": pricing_id,
                        "source": self.catalog.source,
                        "digest": self.digest,
                        "changes": [span.describe() for span in plan.spans],
                        "open_periods": plan.open_periods,
                    },
                )  # fmt: skip
        lines_done = accounts_done = 0
        for (start, currency), metrics in sorted(plan.work().items()):
            after: str | None = None
            while True:
                done = self._re_rate_page(pricing_id, start, currency, metrics, after)
                if done is None:
                    break
                after, lines, accounts = done
                lines_done += lines
                accounts_done += accounts
                if progress is not None:
                    progress(lines_done, accounts_done)
        if plan.touched:
            with self.database.transaction() as connection:
                repository.complete(connection, pricing_id, self.clock.now())
        log.info(
            "catalog.prices.applied",
            extra={
                "pricing": pricing_id, "kind": plan.kind, "lines": lines_done,
                "accounts": accounts_done, "spans": [s.describe() for s in plan.spans],
            },
        )  # fmt: skip
        return PricingApplied(plan.kind, pricing_id, plan.spans, lines_done, accounts_done)

    def _re_rate_page(
        self, pricing_id: int, start: date, currency: str, metrics: set[str], after: str | None
    ) -> tuple[str, int, int] | None:
        """Re-rate one page of accounts; None when there are no more."""
        now = self.clock.now()
        with self.database.transaction() as connection:
            page = repository.accounts_with_open_period(
                connection, start, currency, after, RE_RATE_ACCOUNTS_PER_TRANSACTION
            )
            if not page:
                return None
            # As ingest: no batch rates these accounts' lines until this transaction commits.
            ledger.lock_accounts(connection, page)
            statuses = repository.period_statuses(connection, page, start)
            living = [a for a in page if statuses.get(a) not in {None, PeriodStatus.FINALIZED}]
            terms = ledger_bulk.account_terms(connection, living)
            changes: list[ledger.LineChange] = []
            changed_accounts: set[str] = set()
            with localcontext(EXACT):
                for line in repository.own_usage_lines(connection, living, start, metrics):
                    metric = self.catalog.metrics.get(line.metric)
                    account = terms.get(line.account_id)
                    if metric is None or account is None:
                        continue
                    applied = applied_price(metric, account.rate_cards, line.currency, start)
                    if applied is None:
                        continue
                    quantity = Decimal(line.quantity)
                    amount = line_amount(quantity, applied.price, line.currency)
                    if amount != line.amount:
                        changes.append(
                            ledger.LineChange(
                                line.id, quantity, amount, line.version + 1, line.event_count
                            )
                        )
                        changed_accounts.add(line.account_id)
            ledger_bulk.update_lines(connection, changes, now)
            sync_repository.mark_behind(connection, changed_accounts)
            repository.add_progress(connection, pricing_id, len(changes), len(changed_accounts))
        return page[-1], len(changes), len(changed_accounts)
