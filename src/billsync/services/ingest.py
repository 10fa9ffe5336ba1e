"""Ingest: validate a batch of usage events, store the new ones, fold them into their lines.

One transaction per batch: every accepted event of the batch and every line it changes commit
together, or nothing does. An event id already in the ledger is a duplicate and is never
counted again; the same id with a different payload is refused as ``duplicate_conflict``. Ids
are unique across the whole ledger, whatever account or month an event claims, and stay known
after retention removed their raw events (``usage_event_ids``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any, NamedTuple

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from billsync.clock import Clock
from billsync.core.aggregation import Mark, Observation, combine, increment, mark_of
from billsync.core.catalog import Aggregation, Catalog
from billsync.core.event_storage import released_floor
from billsync.core.folding import LineDelta, LineRef, fold, line_key
from billsync.core.money import EXACT
from billsync.core.periods import AnchorSchedule, Period, late_usage_target
from billsync.core.pricing import RateCard, applied_price, card_on
from billsync.core.rating import late_line_amount
from billsync.core.usage import (
    Rejection,
    RejectionCode,
    UsageRules,
    ValidEvent,
    validate_body,
    validate_event,
)
from billsync.db.database import Database
from billsync.observability.instruments import observe_ingest
from billsync.repositories import aggregates, ledger, ledger_bulk
from billsync.repositories import sync as sync_repository
from billsync.repositories.event_storage import distinct_release
from billsync.services.catalog_prices import PricingGuard
from billsync.services.changes import Changes
from billsync.services.event_partitions import EventPartitions

# A transaction that fails on a unique index (an id claimed in a way the claim did not foresee)
# is run again, and then sees that id as a duplicate. Bounded, because it cannot recur for the
# same ids.
MAX_ATTEMPTS = 3
# How many line ids ingest remembers (about 200 bytes each); past it, it starts afresh.
LINE_IDS_REMEMBERED = 200_000


class EventStatus(enum.StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


class EventResult(NamedTuple):
    """Each event's answer (a named tuple: one per event, cheap to build)."""

    id: str | None
    status: EventStatus
    error: Rejection | None = None


@dataclass(frozen=True, slots=True)
class IngestReport:
    results: list[EventResult]
    _counts: dict[EventStatus, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Counted once (the API, the metrics and the summary each ask for all three).
        statuses = [result.status for result in self.results]
        object.__setattr__(self, "_counts", {s: statuses.count(s) for s in EventStatus})

    def count(self, status: EventStatus) -> int:
        return self._counts[status]

    @property
    def accepted(self) -> int:
        return self._counts[EventStatus.ACCEPTED]

    @property
    def duplicates(self) -> int:
        return self._counts[EventStatus.DUPLICATE]

    @property
    def rejected(self) -> int:
        return self._counts[EventStatus.REJECTED]


def _conflict(event_id: str, what: str) -> Rejection:
    return Rejection(
        event_id,
        RejectionCode.DUPLICATE_CONFLICT,
        f"event id '{event_id}' was already {what} with a different payload; "
        "it is not counted again (use a new id for new usage)",
    )


def _repeated(event: ValidEvent, previous: ValidEvent | None) -> EventResult:
    """The answer to an id already accepted: a duplicate when the payload is the same — or
    can no longer be compared, retention having removed the raw event — else a conflict.
    Either way it is not counted again."""
    if previous is None or event.same_payload(previous):
        return EventResult(event.id, EventStatus.DUPLICATE)
    return EventResult(event.id, EventStatus.REJECTED, _conflict(event.id, "accepted"))


def _answers(
    outcomes: Sequence[ValidEvent | Rejection],
    first_index: dict[str, int],
    decided: dict[str, EventResult],
) -> list[EventResult]:
    """Each event's answer, in order, for a batch with rejections or an id sent twice: a later
    occurrence of an id mirrors the first one's answer, or is a conflict if its payload differs."""
    results: list[EventResult] = []
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, Rejection):
            results.append(EventResult(outcome.event_id, EventStatus.REJECTED, outcome))
            continue
        first = first_index[outcome.id]
        if first == index:
            results.append(decided[outcome.id])
            continue
        original = outcomes[first]
        assert isinstance(original, ValidEvent)
        if not outcome.same_payload(original):
            results.append(
                EventResult(outcome.id, EventStatus.REJECTED, _conflict(outcome.id, "sent"))
            )
        elif decided[outcome.id].status is EventStatus.REJECTED:
            results.append(decided[outcome.id])
        else:
            results.append(EventResult(outcome.id, EventStatus.DUPLICATE))
    return results


@dataclass(frozen=True, slots=True)
class _Terms:
    """What ingest needs to know of an account."""

    id: str
    currency: str
    periods: AnchorSchedule
    rate_cards: tuple[RateCard, ...]


def _catalog_rated(
    deltas: dict[LineRef, LineDelta], accounts: dict[str, _Terms]
) -> set[tuple[str, str, date]]:
    """(metric, currency, period start) of the lines a batch rates with the catalog's prices —
    not those an account's negotiated rate prices (PricingGuard)."""
    rated: set[tuple[str, str, date]] = set()
    for ref, delta in deltas.items():
        account = accounts[ref.account]
        start = delta.late_from or ref.period_start
        if account.rate_cards:
            card = card_on(account.rate_cards, start)
            if card is not None and delta.metric in card.prices:
                continue
        rated.add((delta.metric, account.currency, start))
    return rated


class IngestService:
    def __init__(
        self,
        database: Database,
        catalog: Catalog,
        clock: Clock,
        *,
        horizon: timedelta,
        default_anchor_day: int,
        changes: Changes | None = None,
        partitions: EventPartitions | None = None,
    ) -> None:
        self.changes = changes
        self.database = database
        self.partitions = partitions or EventPartitions(database, horizon=horizon)
        self.catalog = catalog
        # The applied catalog pricing is this process's, for the periods each batch rates.
        self.pricing = PricingGuard(catalog)
        self.clock = clock
        self.horizon = horizon
        self.default_anchor_day = default_anchor_day
        self._group_by = {metric.id: metric.group_by for metric in catalog.metrics.values()}
        # The metrics whose lines are not sums (core.aggregation): their events are observed.
        self._aggregated = {
            metric.id: metric
            for metric in catalog.metrics.values()
            if metric.aggregation is not Aggregation.SUM
        }
        # Each line's id, once read: the next batches read the line by its primary key.
        self._line_ids: dict[LineRef, int] = {}

    def rules(self) -> UsageRules:
        return UsageRules(self.catalog, self.clock.now(), self.horizon)

    def ingest(self, raw_events: Sequence[Any]) -> IngestReport:
        """Ingest generically decoded events (dicts), e.g. lines of a JSONL file."""
        rules = self.rules()
        return self.record([validate_event(raw, rules) for raw in raw_events], rules.now)

    def ingest_body(
        self,
        body: bytes,
        max_events: int,
        commit: Callable[[Sequence[ValidEvent | Rejection], datetime], IngestReport] | None = None,
    ) -> IngestReport:
        """Ingest a raw ``{"events": [...]}`` JSON body (see ``core.usage.validate_body``).

        ``commit`` stores the validated batch: :meth:`record` by default, or a group
        committer's ``submit`` when many requests arrive at once."""
        rules = self.rules()
        return (commit or self.record)(validate_body(body, rules, max_events), rules.now)

    def record(self, outcomes: Sequence[ValidEvent | Rejection], now: datetime) -> IngestReport:
        """Store the valid events of a validated batch in one transaction; report every event."""

        # The first occurrence of an id in the batch is the candidate; later ones mirror it.
        first_index: dict[str, int] = {}
        candidates: list[ValidEvent] = []
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, ValidEvent) and outcome.id not in first_index:
                first_index[outcome.id] = index
                candidates.append(outcome)

        if candidates and self.partitions.enabled:
            self.partitions.ensure_for_usage(
                min(event.timestamp for event in candidates),
                max(event.timestamp for event in candidates),
            )
        decided: dict[str, EventResult] = {}
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                with self.database.transaction() as connection:
                    decided = self._store(connection, candidates, now)
                break
            except IntegrityError:
                if attempt == MAX_ATTEMPTS:
                    raise

        if len(candidates) == len(outcomes):  # every event valid, every id once: the usual
            results = [decided[event.id] for event in candidates]
        else:
            results = _answers(outcomes, first_index, decided)
        if self.changes is not None and candidates:
            self.changes.accounts_changed({event.account for event in candidates})
        report = IngestReport(results)
        # Here, after the commit, so that every way in (HTTP, a file, a stream) is counted once.
        observe_ingest(report.accepted, report.duplicates, report.rejected)
        return report

    def _released_floor(self, connection: Connection, now: datetime) -> datetime | None:
        """The oldest usage still taken once distinct values were released
        (core.event_storage.released_floor), read in the batch's own transaction: a release
        recorded before it began is seen. None while the floor is older than the horizon (the
        usual: validation refused all such usage already)."""
        release = distinct_release(connection)
        floor = released_floor(None if release is None else release.before)
        return None if floor is None or floor <= now - self.horizon else floor

    def _store(
        self, connection: Connection, events: list[ValidEvent], now: datetime
    ) -> dict[str, EventResult]:
        decided: dict[str, EventResult] = {}
        if not events:
            return decided
        account_ids = {event.account for event in events}
        ledger.lock_accounts(connection, account_ids)
        floor = self._released_floor(connection, now)
        accounts = {
            account_id: _Terms(
                account_id,
                terms.currency,
                AnchorSchedule(terms.anchor_day or self.default_anchor_day, terms.anchor_changes),
                terms.rate_cards,
            )
            for account_id, terms in ledger_bulk.account_terms(connection, account_ids).items()
        }
        placed: list[tuple[ValidEvent, _Terms, Period]] = []
        refused: list[tuple[ValidEvent, Rejection]] = []
        periods: dict[tuple[AnchorSchedule, date], Period] = {}
        for event in events:
            account = accounts.get(event.account)
            if account is None:
                refused.append(
                    (
                        event,
                        Rejection(
                            event.id,
                            RejectionCode.UNKNOWN_ACCOUNT,
                            f"account '{event.account}' does not exist "
                            "(POST /v1/accounts creates it)",
                        ),
                    )
                )
                continue
            if floor is not None and event.timestamp < floor:
                refused.append(
                    (
                        event,
                        Rejection(
                            event.id,
                            RejectionCode.TIMESTAMP_TOO_OLD,
                            f"timestamp is before {floor:%Y-%m-%d}: the usage periods before it "
                            "are closed for good (their unique counts were released)",
                        ),
                    )
                )
                continue
            if account.currency not in self.catalog.metrics[event.metric].prices:
                refused.append(
                    (
                        event,
                        Rejection(
                            event.id,
                            RejectionCode.METRIC_NOT_PRICED,
                            f"metric '{event.metric}' has no price in {account.currency}",
                        ),
                    )
                )
                continue
            slot = (account.periods, event.timestamp.date())
            period = periods.get(slot)
            if period is None:
                period = periods[slot] = account.periods.period_for_date(slot[1])
            placed.append((event, account, period))
        # Claiming the ids is the look-up: those not claimed were accepted before (or just
        # now, by a batch in flight that committed first). Only they are read back.
        claimed = ledger_bulk.claim_event_ids(
            connection, [(event.id, period.start) for event, _, period in placed]
        )
        every_id_new = len(claimed) == len(placed)  # the usual case
        taken = [] if every_id_new else [e.id for e, _, _ in placed if e.id not in claimed]
        taken += [event.id for event, _ in refused]
        stored = ledger_bulk.stored_events(connection, taken) if taken else {}
        for event, rejection in refused:  # an id accepted before answers as a repeat
            decided[event.id] = (
                _repeated(event, stored[event.id])
                if event.id in stored
                else EventResult(event.id, EventStatus.REJECTED, rejection)
            )
        fresh: list[tuple[ValidEvent, _Terms, Period]] = placed if every_id_new else []
        for event, account, period in placed:
            if event.id in claimed:
                if not every_id_new:
                    fresh.append((event, account, period))
                decided[event.id] = EventResult(event.id, EventStatus.ACCEPTED)
            elif event.id in stored:
                decided[event.id] = _repeated(event, stored[event.id])
            else:  # taken by a transaction that rolled back after our insert looked: again
                raise IntegrityError("claim usage_event_ids", None, LookupError(event.id))
        if not fresh:
            return decided

        targets = self._targets(connection, fresh, now)
        deltas, refs = fold(
            [
                (
                    account.id,
                    event.metric,
                    event.quantity,
                    event.dimensions,
                    period.start,
                    targets[account.id, period.start],
                )
                for event, account, period in fresh
            ],
            self._group_by,
        )
        observed = self._observe(fresh, refs) if self._aggregated else {}
        line_ids = self._apply_deltas(connection, deltas, accounts, now, observed)
        sync_repository.mark_behind(connection, {ref.account for ref in deltas})
        ledger_bulk.insert_events(
            connection,
            [
                (event, period.start, line_ids[ref])
                for (event, _, period), ref in zip(fresh, refs, strict=True)
            ],
            now,
        )
        return decided

    def _targets(
        self,
        connection: Connection,
        fresh: list[tuple[ValidEvent, _Terms, Period]],
        now: datetime,
    ) -> dict[tuple[str, date], date]:
        """Which period's invoice carries usage of each (account, period): the late-usage rule.
        Creates the period rows that do not exist yet."""
        account_periods = {(account.id, period) for _, account, period in fresh}
        schedules = {account.id: account.periods for _, account, _ in fresh}
        earliest = min(period.start for _, period in account_periods)
        known = ledger_bulk.period_statuses(
            connection, {account_id for account_id, _ in account_periods}, earliest
        )
        targets: dict[tuple[str, date], date] = {}
        missing: dict[tuple[str, date], Period] = {}
        for account_id, period in account_periods:
            target = late_usage_target(
                period, known[account_id], following=schedules[account_id].next_period
            )
            targets[account_id, period.start] = target.start
            if target.start not in known[account_id]:
                missing[account_id, target.start] = target
        ledger.insert_periods(
            connection, [(account_id, target) for (account_id, _), target in missing.items()], now
        )
        return targets

    def _observe(
        self, fresh: list[tuple[ValidEvent, _Terms, Period]], refs: list[LineRef]
    ) -> dict[LineRef, list[Observation]]:
        """The events of each line of a metric that is not a sum, as its aggregation sees them."""
        observed: dict[LineRef, list[Observation]] = {}
        for (event, _, _), ref in zip(fresh, refs, strict=True):
            metric = self._aggregated.get(event.metric)
            if metric is not None:
                value = None if metric.unique_by is None else event.dimensions[metric.unique_by]
                observed.setdefault(ref, []).append(
                    Observation(event.quantity, event.timestamp, event.id, value)
                )
        return observed

    def _aggregate(
        self,
        connection: Connection,
        deltas: dict[LineRef, LineDelta],
        observed: dict[LineRef, list[Observation]],
    ) -> tuple[dict[LineRef, int], dict[tuple[str, str], list[aggregates.MarkedLine]]]:
        """For the lines of ``unique_count`` metrics, how many values each batch counts first
        (claimed once per usage period); for ``max`` and ``latest``, the lines of their keys
        with their marks (the line itself, its period's own line, earlier late lines)."""
        claims: dict[aggregates.DistinctClaim, LineRef] = {}
        keys: list[tuple[str, str]] = []
        for ref, observations in observed.items():
            delta = deltas[ref]
            base_key = line_key(delta.metric, delta.grouping)
            if self._aggregated[delta.metric].aggregation is Aggregation.UNIQUE_COUNT:
                usage_period = delta.late_from or ref.period_start
                for observation in observations:
                    assert observation.value is not None
                    claim = aggregates.DistinctClaim(
                        ref.account, usage_period, base_key, observation.value, ref.period_start
                    )
                    claims[claim] = ref
            else:
                keys += [(ref.account, ref.key), (ref.account, base_key)]
        counted: dict[LineRef, int] = {}
        for claim in aggregates.claim_distinct(connection, list(claims)):
            ref = claims[claim]
            counted[ref] = counted.get(ref, 0) + 1
        return counted, aggregates.marked_lines(connection, keys) if keys else {}

    def _apply_deltas(
        self,
        connection: Connection,
        deltas: dict[LineRef, LineDelta],
        accounts: dict[str, _Terms],
        now: datetime,
        observed: dict[LineRef, list[Observation]],
    ) -> dict[LineRef, int]:
        """Add each delta to its line and re-rate the line's total: one rounding per line."""
        base_refs = {
            delta.ref: LineRef(
                delta.ref.account, delta.late_from, line_key(delta.metric, delta.grouping)
            )
            for delta in deltas.values()
            if delta.late_from is not None
        }
        states = ledger_bulk.line_states(connection, [*deltas, *base_refs.values()], self._line_ids)
        if len(self._line_ids) > LINE_IDS_REMEMBERED:
            self._line_ids.clear()
        # Only lines read back (committed): a line this transaction creates is remembered
        # the next time it is read, so a rollback can never leave a wrong id behind.
        self._line_ids.update((ref, state.id) for ref, state in states.items())
        # Late usage of the same period already on other invoices counts as billed before.
        earlier_late = ledger_bulk.quantity_elsewhere(connection, list(base_refs))
        self.pricing.check(connection, _catalog_rated(deltas, accounts))
        counted, marked = self._aggregate(connection, deltas, observed) if observed else ({}, {})
        marks: dict[LineRef, Mark] = {}
        new_lines: list[ledger.NewLine] = []
        changes: list[ledger.LineChange] = []
        line_ids: dict[LineRef, int] = {}
        with localcontext(EXACT):
            for ref, delta in deltas.items():
                account = accounts[ref.account]
                currency = account.currency
                metric = self.catalog.metrics[delta.metric]
                # The prices in effect at the start of the period the usage happened in.
                usage_period = delta.late_from or ref.period_start
                if account.rate_cards or metric.price_versions:
                    applied = applied_price(metric, account.rate_cards, currency, usage_period)
                    assert applied is not None  # every version prices the catalog's currencies
                    price = applied.price
                else:
                    price = metric.prices[currency]
                state = states.get(ref)
                quantity = delta.quantity if state is None else state.quantity + delta.quantity
                base_ref = base_refs.get(ref)
                base_state = None if base_ref is None else states.get(base_ref)
                base = Decimal(0) if base_state is None else base_state.quantity
                base += earlier_late.get(ref, Decimal(0))
                if ref in observed:
                    aggregation = self._aggregated[delta.metric].aggregation
                    if aggregation is Aggregation.UNIQUE_COUNT:
                        quantity = (Decimal(0) if state is None else state.quantity) + counted.get(
                            ref, 0
                        )
                    else:
                        marks[ref], quantity = _marked_quantity(
                            aggregation, delta, base, observed[ref], marked
                        )
                amount = late_line_amount(quantity, base, price, currency)
                if state is None:
                    new_lines.append(
                        ledger.NewLine(
                            ref=ref,
                            metric=delta.metric,
                            grouping=delta.grouping,
                            late_from=delta.late_from,
                            currency=currency,
                            quantity=quantity,
                            amount=amount,
                            event_count=delta.event_count,
                        )
                    )
                else:
                    line_ids[ref] = state.id
                    changes.append(
                        ledger.LineChange(
                            id=state.id,
                            quantity=quantity,
                            amount=amount,
                            version=state.version + 1,
                            event_count=state.event_count + delta.event_count,
                        )
                    )
        line_ids.update(ledger_bulk.insert_lines(connection, new_lines, now))
        ledger_bulk.update_lines(connection, changes, now)
        aggregates.write_marks(connection, [(line_ids[ref], mark) for ref, mark in marks.items()])
        return line_ids


def _marked_quantity(
    aggregation: Aggregation,
    delta: LineDelta,
    billed_before: Decimal,
    observations: list[Observation],
    marked: dict[tuple[str, str], list[aggregates.MarkedLine]],
) -> tuple[Mark, Decimal]:
    """A ``max`` or ``latest`` line after a batch: its own mark (what it held, with the batch's
    events) and its quantity — how far its events move its period's value past the lines
    billed before it (core.aggregation). ``billed_before`` is those lines' quantity."""
    ref = delta.ref
    of_key = marked.get((ref.account, ref.key), [])
    own = combine(
        aggregation,
        next((line.mark for line in of_key if line.period_start == ref.period_start), None),
        mark_of(aggregation, observations),
    )
    assert own is not None  # the batch has events on this line
    before: Mark | None = None
    if delta.late_from is not None:
        base_key = line_key(delta.metric, delta.grouping)
        for line in marked.get((ref.account, base_key), []):
            if line.period_start == delta.late_from:
                before = combine(aggregation, before, line.mark)
        for line in of_key:
            if line.period_start < ref.period_start:
                before = combine(aggregation, before, line.mark)
        if before is None and billed_before:
            before = Mark(billed_before)  # lines kept no mark (rated as sums before)
    return own, increment(aggregation, before, own)
