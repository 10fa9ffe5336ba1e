"""The sync plan: desired state (the ledger) vs observed state (what billsync last confirmed in
Stripe) → the minimal list of operations that makes Stripe show the ledger.

Pure: no I/O, no clock. Amounts are pushed as absolute values, never as increments, so every
update is idempotent by nature; only creates need guarding (idempotency keys built from line
ids and versions, see :func:`idempotency_key`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from typing import TypeVar

from billsync.core.money import MAX_STRIPE_AMOUNT
from billsync.core.rollup import MAX_INVOICE_ITEMS

# Lines per bulk call: a sync is one or two calls per account whatever its line count.
LINES_PER_CALL = 100


class PlanError(Exception):
    """The ledger cannot be represented in Stripe as it is (e.g. over 250 lines)."""


@dataclass(frozen=True, slots=True)
class DesiredLine:
    """An item the invoice should carry: one ledger line, or a roll-up of lines (``key``, see
    core.rollup; ``line_id`` its first line, ``members`` each line's (id, version))."""

    line_id: int
    amount: int  # minor units
    description: str
    version: int
    period_start: int  # unix seconds
    period_end: int
    key: str | None = None
    members: tuple[tuple[int, int], ...] = ()

    @property
    def item(self) -> str:
        return self.key if self.key is not None else f"line:{self.line_id}"

    @property
    def versions(self) -> tuple[tuple[int, int], ...]:
        """The (line id, version) pairs the item carries: what its writes' keys are made of."""
        return self.members or ((self.line_id, self.version),)


@dataclass(frozen=True, slots=True)
class ObservedLine:
    """An item as billsync last confirmed it in Stripe (a line, or a roll-up: ``key``)."""

    line_id: int
    line_item_id: str  # il_…
    amount: int
    version: int
    key: str | None = None

    @property
    def item(self) -> str:
        return self.key if self.key is not None else f"line:{self.line_id}"


@dataclass(frozen=True, slots=True)
class PeriodState:
    """One account-period: what the ledger wants and what Stripe was last seen to hold."""

    period_start: date
    currency: str
    desired: tuple[DesiredLine, ...]
    observed: tuple[ObservedLine, ...] = ()
    invoice_id: str | None = None
    finalize: bool = False  # the period's review is over: finalize once in step
    delete_if_empty: bool = False  # zero-total periods with the "delete" rule
    finalized: bool = False


@dataclass(frozen=True, slots=True)
class CreateCustomer:
    pass


@dataclass(frozen=True, slots=True)
class CreateInvoice:
    period_start: date


@dataclass(frozen=True, slots=True)
class AddLines:
    period_start: date
    lines: tuple[DesiredLine, ...]


@dataclass(frozen=True, slots=True)
class UpdateLines:
    period_start: date
    changes: tuple[tuple[DesiredLine, str], ...]  # (new values, il_ id)


@dataclass(frozen=True, slots=True)
class RemoveLines:
    period_start: date
    line_item_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FinalizeInvoice:
    period_start: date


@dataclass(frozen=True, slots=True)
class DeleteInvoice:
    period_start: date


@dataclass(frozen=True, slots=True)
class CloseWithoutInvoice:
    """Nothing to bill and no draft in Stripe: the period ends with no invoice (no call)."""

    period_start: date


Operation = (
    CreateCustomer | CreateInvoice | AddLines | UpdateLines | RemoveLines | FinalizeInvoice
    | DeleteInvoice | CloseWithoutInvoice
)  # fmt: skip


T = TypeVar("T")


def _chunks(items: Sequence[T], size: int) -> Iterable[tuple[T, ...]]:
    for start in range(0, len(items), size):
        yield tuple(items[start : start + size])


def plan_period(state: PeriodState) -> list[Operation]:
    """Operations that bring one period's Stripe invoice in line with the ledger."""
    if state.finalized:
        return []
    if len(state.desired) > MAX_INVOICE_ITEMS:  # core.rollup keeps them under it
        raise PlanError(
            f"period {state.period_start} has {len(state.desired)} items; a Stripe invoice holds "
            f"at most {MAX_INVOICE_ITEMS}"
        )
    too_large = [line for line in state.desired if abs(line.amount) > MAX_STRIPE_AMOUNT]
    if too_large:
        line = too_large[0]
        raise PlanError(
            f"period {state.period_start}: line {line.line_id} ({line.description}) amounts to "
            f"{line.amount:,} minor units; Stripe takes at most {MAX_STRIPE_AMOUNT:,} on one "
            "line (8 digits): split the metric more finely in the catalog (by region or "
            "resource), or ask Stripe to raise the account's limit"
        )
    empty = sum(line.amount for line in state.desired) == 0
    if state.finalize and (not state.desired or (state.delete_if_empty and empty)):
        # Nothing to bill: no invoice. An empty draft is never finalized (a $0 invoice with no
        # line for the customer to read); a draft that exists is deleted.
        if state.invoice_id is not None:
            return [DeleteInvoice(state.period_start)]
        return [CloseWithoutInvoice(state.period_start)]
    operations: list[Operation] = []
    if state.invoice_id is None:
        if not state.desired and not state.finalize:
            return []
        operations.append(CreateInvoice(state.period_start))
    observed = {line.item: line for line in state.observed}
    desired_items = {line.item for line in state.desired}
    to_add = [line for line in state.desired if line.item not in observed]
    to_update = [
        (line, observed[line.item].line_item_id)
        for line in state.desired
        if line.item in observed
        and (observed[line.item].version != line.version
             or observed[line.item].amount != line.amount)
    ]  # fmt: skip
    to_remove = [line.line_item_id for line in state.observed if line.item not in desired_items]
    if to_remove:
        operations += [
            RemoveLines(state.period_start, chunk) for chunk in _chunks(to_remove, LINES_PER_CALL)
        ]
    operations += [AddLines(state.period_start, chunk) for chunk in _chunks(to_add, LINES_PER_CALL)]
    operations += [
        UpdateLines(state.period_start, chunk) for chunk in _chunks(to_update, LINES_PER_CALL)
    ]
    if state.finalize:
        operations.append(FinalizeInvoice(state.period_start))
    return operations


def plan(periods: Sequence[PeriodState], *, has_customer: bool) -> list[Operation]:
    """The account's plan: the customer first if needed, then each period in order."""
    operations: list[Operation] = []
    for state in sorted(periods, key=lambda s: s.period_start):
        operations += plan_period(state)
    calls_stripe = any(not isinstance(o, CloseWithoutInvoice) for o in operations)
    if calls_stripe and not has_customer:
        operations.insert(0, CreateCustomer())
    return operations


@dataclass
class _Simulated:
    """What applying operations does to the observed state (for the property tests, and to
    reason about plans): an in-memory model of the Stripe draft."""

    invoice_id: str | None
    lines: dict[str, ObservedLine] = field(default_factory=dict)
    finalized: bool = False
    deleted: bool = False


def apply(state: PeriodState, operations: Sequence[Operation]) -> PeriodState:
    """The period's observed state once ``operations`` succeeded (pure simulation)."""
    model = _Simulated(state.invoice_id, {line.item: line for line in state.observed})
    for operation in operations:
        if getattr(operation, "period_start", None) != state.period_start:
            continue
        if isinstance(operation, CreateInvoice):
            model.invoice_id = f"in_sim_{state.period_start.isoformat()}"
        elif isinstance(operation, AddLines):
            for line in operation.lines:
                model.lines[line.item] = ObservedLine(
                    line.line_id, f"il_sim_{line.item}", line.amount, line.version, line.key
                )
        elif isinstance(operation, UpdateLines):
            for line, item_id in operation.changes:
                model.lines[line.item] = ObservedLine(
                    line.line_id, item_id, line.amount, line.version, line.key
                )
        elif isinstance(operation, RemoveLines):
            gone = set(operation.line_item_ids)
            model.lines = {k: v for k, v in model.lines.items() if v.line_item_id not in gone}
        elif isinstance(operation, FinalizeInvoice):
            model.finalized = True
        elif isinstance(operation, DeleteInvoice | CloseWithoutInvoice):
            model.invoice_id, model.lines, model.deleted = None, {}, True
    return replace(
        state,
        invoice_id=model.invoice_id,
        observed=tuple(sorted(model.lines.values(), key=lambda line: line.item)),
        finalized=model.finalized or model.deleted,
    )


def _prefix(namespace: str) -> str:
    """``billsync:`` then the installation's namespace (core.installation), if it has one."""
    return f"billsync:{namespace}:" if namespace else "billsync:"


def idempotency_key(
    kind: str,
    scope: str,
    lines: Iterable[tuple[int, int]] = (),
    *,
    namespace: str = "",
    items: Iterable[str] = (),
) -> str:
    """Deterministic key from billsync's own ids: the same operation on the same line versions
    always carries the same key, so a retry (or a re-run after a crash) is replayed by Stripe
    instead of applied twice. ``lines`` are (line id, version) pairs. The installation's
    ``namespace`` keeps two installations on one Stripe account from sharing keys. ``items``:
    the roll-up items (core.rollup) the lines are written as — the same lines rolled up at
    another level are another write."""
    pairs = sorted(lines)
    if not pairs:
        return f"{_prefix(namespace)}{kind}:{scope}"
    text = ",".join(f"{i}:{v}" for i, v in pairs)
    rolled = sorted(items)
    if rolled:
        text += "|" + ",".join(rolled)
    digest = hashlib.sha256(text.encode()).hexdigest()[:24]
    return f"{_prefix(namespace)}{kind}:{scope}:{digest}"


def idempotency_key_for_ids(
    kind: str, scope: str, ids: Iterable[str], *, namespace: str = ""
) -> str:
    """The key of an operation on a set of Stripe objects (lines to remove): the ids hashed,
    so that it stays within Stripe's 255 characters however many there are, and two different
    sets never share a key (cutting a long list would make them collide)."""
    digest = hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:32]
    return f"{_prefix(namespace)}{kind}:{scope}:{digest}"
