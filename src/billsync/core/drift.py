"""How a period's invoice in Stripe compares with the ledger, line by line: one comparison and
one set of kinds for ``billsync verify`` (which reports) and ``billsync reconcile`` (which
records problems and repairs what is billsync's own).

For each ledger line, what Stripe shows is read against what billsync last confirmed in Stripe
(``synced_version``/``synced_amount``, ``core.line_state``):

- not on the invoice: *removed_in_stripe* if Stripe held it (billsync confirmed it there),
  *missing_in_stripe* if it never did and the period is complete (in review, held, finalized);
  otherwise it is pending (the next sync adds it);
- on it more than once: every copy but the one billsync knows is *duplicate_in_stripe*;
- on it with the version billsync pushed but another amount: *amount_differs* (edited in
  Stripe);
- on it with a version billsync has not confirmed, or the ledger moved on since: pending — and
  for a finalized period, where nothing is pending any more, *amount_differs* when the amounts
  differ.

Lines billsync did not put there (no metadata, or another installation's namespace) are
*extra_in_stripe*; a line of billsync's naming a line this period does not have is
*line_of_another_period*.

A roll-up item (core.rollup: an invoice whose lines do not fit Stripe's 250 items) is compared
as one line: the ledger lines confirmed in it make one, named by its first line, whose amount
is theirs summed and which is pending while any of them is; the Stripe item names it by its
roll-up key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar

from billsync.core.installation import NAMESPACE_KEY, is_ours
from billsync.core.line_state import is_pending

# A roll-up item's metadata key (services.sync writes it): which item of the period it is.
ROLLUP_METADATA = "billsync_rollup"

MISSING_IN_STRIPE = "missing_in_stripe"
REMOVED_IN_STRIPE = "removed_in_stripe"
AMOUNT_DIFFERS = "amount_differs"
DUPLICATE_IN_STRIPE = "duplicate_in_stripe"
EXTRA_IN_STRIPE = "extra_in_stripe"
LINE_OF_ANOTHER_PERIOD = "line_of_another_period"

LINE_KINDS = (
    MISSING_IN_STRIPE, REMOVED_IN_STRIPE, AMOUNT_DIFFERS, DUPLICATE_IN_STRIPE, EXTRA_IN_STRIPE,
    LINE_OF_ANOTHER_PERIOD,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class OurLine:
    """A ledger line, with what billsync last confirmed of it in Stripe."""

    id: int
    amount: int
    version: int
    synced_version: int
    synced_amount: int | None
    stripe_line_item_id: str | None
    rollup_key: str | None = None
    members: tuple[int, ...] = ()  # a roll-up item's lines (made by _rolled_up)


@dataclass(frozen=True, slots=True)
class TheirLine:
    """A line of the invoice in Stripe; ``line_id`` and ``version`` from billsync's metadata
    when this installation wrote it, else None."""

    line_item_id: str
    amount: int
    line_id: int | None
    version: int | None
    description: str = ""
    namespace: str = ""  # the installation whose metadata it carries ("" if none)
    rollup: str | None = None  # a roll-up item's key (core.rollup), when billsync's


@dataclass(frozen=True, slots=True)
class LineDifference:
    kind: str
    line: OurLine | None = None
    stripe: TheirLine | None = None
    copies: int = 1  # for duplicates: how many times the line is on the invoice


@dataclass
class LineComparison:
    differences: list[LineDifference] = field(default_factory=list)
    pending: int = 0  # lines the next sync brings in step (not differences)
    in_step: set[int] = field(default_factory=set)  # ledger lines Stripe holds as they are


def compare_lines(
    ours: Sequence[OurLine], theirs: Sequence[TheirLine], *, complete: bool, final: bool
) -> LineComparison:
    """``complete``: the period's draft should hold every line (in review, held, finalized);
    ``final``: the invoice is finalized (nothing is pending any more)."""
    ours, theirs = _rolled_up(ours, theirs)
    found = _compare(ours, theirs, complete=complete, final=final)
    members = {line.id: line.members for line in ours if line.members}
    found.in_step = {i for line_id in found.in_step for i in members.get(line_id, (line_id,))}
    return found


def _rolled_up(
    ours: Sequence[OurLine], theirs: Sequence[TheirLine]
) -> tuple[list[OurLine], list[TheirLine]]:
    """Roll-up items as single lines on both sides (see the module's note)."""
    single = [line for line in ours if line.rollup_key is None or line.stripe_line_item_id is None]
    items: dict[str, list[OurLine]] = {}
    for line in ours:
        if line.rollup_key is not None and line.stripe_line_item_id is not None:
            items.setdefault(line.stripe_line_item_id, []).append(line)
    named: dict[str, int] = {}
    for line_item_id, members in items.items():
        first = min(members, key=lambda m: m.id)
        pending = any(
            is_pending(m.version, m.synced_version, m.amount, m.synced_amount) for m in members
        )
        synced = sum(m.synced_amount or 0 for m in members)
        single.append(
            OurLine(
                first.id,
                sum(m.amount for m in members),
                2 if pending else 1,
                1,
                synced,
                line_item_id,
                first.rollup_key,
                tuple(sorted(m.id for m in members)),
            )
        )
        assert first.rollup_key is not None
        named.setdefault(first.rollup_key, first.id)
    read = [
        replace(line, line_id=named.get(line.rollup), version=1)
        if line.rollup is not None
        else line
        for line in theirs
    ]
    return single, read


def _compare(
    ours: Sequence[OurLine], theirs: Sequence[TheirLine], *, complete: bool, final: bool
) -> LineComparison:
    found = LineComparison()
    ledger = {line.id for line in ours}
    copies: dict[int, list[TheirLine]] = {}
    for remote in theirs:
        if remote.line_id is None:
            found.differences.append(LineDifference(EXTRA_IN_STRIPE, stripe=remote))
        elif remote.line_id not in ledger:
            found.differences.append(LineDifference(LINE_OF_ANOTHER_PERIOD, stripe=remote))
        else:
            copies.setdefault(remote.line_id, []).append(remote)
    for line in ours:
        on_invoice = copies.get(line.id, [])
        if len(on_invoice) > 1:
            kept = next(
                (c for c in on_invoice if c.line_item_id == line.stripe_line_item_id),
                on_invoice[0],
            )
            found.differences += [
                LineDifference(DUPLICATE_IN_STRIPE, line, copy, copies=len(on_invoice))
                for copy in on_invoice
                if copy is not kept
            ]
            on_invoice = [kept]
        if not on_invoice:
            if line.stripe_line_item_id is not None and line.synced_version > 0:
                found.differences.append(LineDifference(REMOVED_IN_STRIPE, line))
            elif complete or final:
                found.differences.append(LineDifference(MISSING_IN_STRIPE, line))
            else:
                found.pending += 1
            continue
        _compare_present(line, on_invoice[0], final, found)
    return found


def _compare_present(line: OurLine, copy: TheirLine, final: bool, found: LineComparison) -> None:
    confirmed = line.stripe_line_item_id is not None and line.synced_version > 0
    if confirmed and copy.version == line.synced_version and copy.amount != line.synced_amount:
        found.differences.append(LineDifference(AMOUNT_DIFFERS, line, copy))
    elif not is_pending(line.version, line.synced_version, line.amount, line.synced_amount) and (
        confirmed and copy.version == line.synced_version
    ):
        found.in_step.add(line.id)
    elif final and copy.amount != line.amount:
        found.differences.append(LineDifference(AMOUNT_DIFFERS, line, copy))
    elif final:
        found.in_step.add(line.id)
    else:
        found.pending += 1  # a push in flight, or the ledger moved on: the next sync's
        if copy.amount == line.amount:
            found.in_step.add(line.id)


class _Named(Protocol):
    @property
    def key(self) -> str: ...


L = TypeVar("L", bound=_Named)


def as_item(ledger: Mapping[int, L], line: OurLine) -> L:
    """The ledger line a difference names — for a roll-up item, its first line standing for
    the item: the items's amounts, and a key that says so."""
    found = ledger[line.id]
    if not line.members:
        return found
    key = f"{found.key} and {len(line.members) - 1} more lines (one roll-up item)"
    return replace(found, amount=line.amount, synced_amount=line.synced_amount, key=key)  # type: ignore[type-var]


def their_line(
    line_item_id: str, amount: int, metadata: Mapping[str, str], description: str, namespace: str
) -> TheirLine:
    """A Stripe line as the comparison reads it: billsync's line id and version from its
    metadata when this installation (``namespace``) wrote it."""
    raw_id = metadata.get("billsync_line_id", "")
    raw_version = metadata.get("billsync_version", "")
    rollup = metadata.get(ROLLUP_METADATA)
    if rollup is not None and is_ours(metadata, namespace):
        return TheirLine(
            line_item_id, amount, None, None, description, metadata.get(NAMESPACE_KEY, ""), rollup
        )
    ours = is_ours(metadata, namespace) and raw_id.isdigit()
    return TheirLine(
        line_item_id,
        amount,
        int(raw_id) if ours else None,
        int(raw_version) if ours and raw_version.isdigit() else None,
        description,
        metadata.get(NAMESPACE_KEY, ""),
    )
