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
from datetime import date, datetime
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
from billsync.repositories import problems as problem_repository
from billsync.repositories import sync as sync_repository

log = logging.getLogger("billsync.catalog")

RE_RATE_ACCOUNTS_PER_TRANSACTION = 500
SYSTEM_ACTOR = "system"


class CatalogChangeRefused(Conflict):
    """The catalog prices a period that is no longer open otherwise than it was rated."""

    code = "catalog_change_refused"


@dataclass(frozen=True, slots=True)
class _Applied:
    """The applied pricing a guard compares with, and its answers so far (one object, swapped
    whole: threads of one process share the guard)."""

    id: int
    document: dict[str, object]
    source: str
    answers: dict[tuple[str, str, date], bool]


class PricingGuard:
    """Whether this process's catalog rates a batch's periods as the applied pricing does;
    read in each ingest batch's transaction (one primary-key look-up; the applied document
    is read once per pricing, each answer kept)."""

    def __init__(self, catalog: Catalog) -> None:
        self.document = pricing_document(catalog)
        self.digest = pricing_digest(self.document)
        self._applied: _Applied | None = None

    def check(self, connection: Connection, rated: Iterable[tuple[str, str, date]]) -> None:
        """``rated``: (metric, currency, period start) of each line the batch rates. Raises
        :class:`CatalogOutdated` if one is priced otherwise than the applied pricing does.
        On PostgreSQL the batch holds the appliers' lock shared until it commits: a pricing is
        recorded only between batches, so none rates with the pricing it replaced after."""
        repository.share_appliers_lock(connection)
        found = repository.latest_digest(connection)
        if found is None or found[1] == self.digest:
            return
        applied = self._applied
        if applied is None or applied.id != found[0]:
            record = repository.get(connection, found[0])
            assert record is not None
            applied = _Applied(record.id, record.document, record.source, {})
            self._applied = applied
        for metric, currency, start in rated:
            key = (metric, currency, start)
            same = applied.answers.get(key)
            if same is None:
                mine = (prices_on(self.document, metric, start) or {}).get(currency)
                theirs = (prices_on(applied.document, metric, start) or {}).get(currency)
                same = applied.answers[key] = mine == theirs
            if not same:
                raise CatalogOutdated(
                    f"this billsync process rates {metric} in {currency.upper()} for the "
                    f"period starting {start} with other prices than the catalog applied to "
                    f"the ledger ({applied.source}): nothing was recorded; retry — a process "
                    "started with the applied catalog takes it — and restart this one with it"
                )


# What a pricing change re-rates: the periods whose usage is not final yet (closing takes late
# usage until its grace ends). A period that entered review meanwhile keeps its prices and is
# reported to support (``PRICES_KEPT``).
RE_RATED = frozenset({PeriodStatus.OPEN, PeriodStatus.CLOSING})
PRICES_KEPT = "catalog_prices_kept"


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
        """Periods a change would re-price that are no longer open."""
        if self.kind != "change":
            return []
        return [t for t in self.touched if t.status is not PeriodStatus.OPEN]

    @property
    def open_periods(self) -> int:
        return sum(t.count for t in self.touched if t.status in RE_RATED)

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
    # Periods that entered review (or were held) during the apply: they kept their prices.
    kept: list[tuple[str, date]] = field(default_factory=list)
    # Another catalog was applied meanwhile: this one stopped, it finishes the re-rating.
    superseded: bool = False


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


class _Superseded(Exception):
    """Another catalog's pricing was recorded after this applier's."""


@dataclass(frozen=True, slots=True)
class _Page:
    last: str
    lines: int
    accounts: int
    kept: list[str]


class CatalogPrices:
    def __init__(self, database: Database, catalog: Catalog, clock: Clock) -> None:
        self.database = database
        self.catalog = catalog
        self.clock = clock
        self.document = pricing_document(catalog)
        self.digest = pricing_digest(self.document)

    def plan(self, *, periods: bool = True) -> PricingPlan:
        """What applying would do; without ``periods``, not which periods it touches (a pass
        over the periods: a process's start only needs to know whether it would change)."""
        with self.database.read() as connection:
            return self._plan(connection, periods=periods)

    def _plan(self, connection: Connection, *, periods: bool = True) -> PricingPlan:
        chain = repository.since_last_completed(connection)
        if not chain:
            return PricingPlan("adopt")
        applied = chain[-1]
        if applied.digest == self.digest and applied.completed_at is not None:
            return PricingPlan("unchanged", applied=applied)
        # Lines may be at any pricing since the last one whose re-rating finished.
        bases = [p.document for p in chain if p.digest != self.digest]
        spans = sorted(
            {span for base in bases for span in changed_spans(base, self.document)},
            key=lambda s: (s.metric, s.currency, s.since or date.min),
        )
        kind = "resume" if applied.digest == self.digest else "change"
        touched = repository.periods_in(connection, spans) if periods else []
        return PricingPlan(kind, spans, touched, applied)

    def apply(
        self, actor: str = SYSTEM_ACTOR, *, progress: Callable[[int, int], None] | None = None
    ) -> PricingApplied:
        """Record this catalog's pricing and re-rate the open periods it prices otherwise.
        Raises :class:`CatalogChangeRefused` (nothing recorded) if it re-prices a period that
        is no longer open. ``progress(lines, accounts)`` after each transaction."""
        now = self.clock.now()
        with self.database.transaction() as connection:
            # Waits for the ledger writes in flight (they hold it shared): none of them can
            # still rate with the pricing replaced once this one is recorded.
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
        kept: list[tuple[str, date]] = []
        for (start, currency), metrics in sorted(plan.work().items()):
            after: str | None = None
            while True:
                try:
                    page = self._re_rate_page(pricing_id, start, currency, metrics, after)
                except _Superseded:
                    log.warning("catalog.prices.superseded", extra={"pricing": pricing_id})
                    return PricingApplied(
                        plan.kind, pricing_id, plan.spans, lines_done, accounts_done, kept,
                        superseded=True,
                    )  # fmt: skip
                if page is None:
                    break
                after = page.last
                lines_done += page.lines
                accounts_done += page.accounts
                kept += [(account, start) for account in page.kept]
                if progress is not None:
                    progress(lines_done, accounts_done)
        if plan.touched:
            with self.database.transaction() as connection:
                repository.complete(connection, pricing_id, self.clock.now())
        log.info(
            "catalog.prices.applied",
            extra={
                "pricing": pricing_id, "kind": plan.kind, "lines": lines_done,
                "accounts": accounts_done, "kept": len(kept),
                "spans": [s.describe() for s in plan.spans],
            },
        )  # fmt: skip
        return PricingApplied(plan.kind, pricing_id, plan.spans, lines_done, accounts_done, kept)

    def _re_rate_page(
        self, pricing_id: int, start: date, currency: str, metrics: set[str], after: str | None
    ) -> _Page | None:
        """Re-rate one page of accounts; None when there are no more. Raises ``_Superseded``
        when another pricing was recorded since this one (its applier re-rates these lines)."""
        now = self.clock.now()
        with self.database.transaction() as connection:
            latest = repository.latest_digest(connection)
            if latest is None or latest[0] != pricing_id:
                raise _Superseded
            page = repository.accounts_with_open_period(
                connection, start, currency, after, RE_RATE_ACCOUNTS_PER_TRANSACTION
            )
            if not page:
                return None
            # As ingest: no batch rates these accounts' lines until this transaction commits,
            # and the lifecycle moves their periods under the same lock.
            ledger.lock_accounts(connection, page)
            statuses = repository.period_statuses(connection, page, start)
            living = [a for a in page if statuses.get(a) in RE_RATED]
            kept = [
                a for a in page if statuses.get(a) not in RE_RATED and statuses.get(a) is not None
            ]
            for account_id in kept:
                self._report_kept(connection, account_id, start, statuses[account_id], now)
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
        return _Page(page[-1], len(changes), len(changed_accounts), kept)

    def _report_kept(
        self, connection: Connection, account_id: str, start: date, status: PeriodStatus,
        now: datetime,
    ) -> None:  # fmt: skip
        """A period that left the open states while the new prices were being applied: its
        usage is final and its invoice is being made at the prices it had. Support decides
        (an adjustment, or nothing)."""
        problem_repository.report(
            connection,
            problem_repository.NewProblem(
                kind=PRICES_KEPT,
                fingerprint=f"{PRICES_KEPT}:{account_id}:{start.isoformat()}:{self.digest[:16]}",
                account_id=account_id,
                period_start=start,
                detail=f"the period starting {start} was {status.value} when the catalog "
                f"{self.catalog.source} was applied: it keeps the prices it had; the new ones "
                "apply from the next period",
            ),
            now,
        )
