"""Whether a ledger line is in Stripe: the one definition.

A line is *pending* while Stripe does not hold what the ledger says — the version billsync last
confirmed in Stripe is not the line's version, or Stripe was seen holding another amount for it
(an edit in Stripe, found by a read-back; the next sync pushes the ledger's amount again).
Otherwise it is *in Stripe*. A line with an open drift problem is in *drift* until a person
decides. A person who accepted Stripe's amount for the line's amount (support's "accept
Stripe's version" of an ``amount_differs``) makes it *accepted*: Stripe charges its own amount,
the difference is explained, and it stays so until the ledger line changes.

:func:`line_state` decides it for one line; ``repositories.sync.pending_line`` is the same rule
as a SQL predicate (for the due queue, the review window's start, the health page), and
``tests/test_line_state.py`` checks that the two agree on every combination.

What the customer is charged for a line (:func:`charged`) follows from its state: the ledger's
amount when in Stripe or pending (the next sync puts it there), Stripe's amount when accepted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class LineState(enum.StrEnum):
    PENDING = "pending"
    """Stripe does not hold the ledger's version (or holds another amount): the next sync's."""
    IN_STRIPE = "in_stripe"
    """Stripe holds the ledger's version at the ledger's amount."""
    ACCEPTED = "accepted"
    """Stripe holds another amount, which a person accepted for this ledger amount."""
    DRIFT = "drift"
    """Stripe differs and a person has not decided yet (an open drift problem)."""


@dataclass(frozen=True, slots=True)
class LineSync:
    """What the ledger knows of a line and of its copy in Stripe."""

    amount: int
    version: int
    synced_version: int
    synced_amount: int | None
    accepted_amount: int | None = None
    """Stripe's amount a person accepted while the line had this ``amount`` (None: none)."""
    drift: bool = False
    """An open drift problem names the line."""


def is_pending(version: int, synced_version: int, amount: int, synced_amount: int | None) -> bool:
    """Stripe does not hold what the ledger says: the rule of ``pending_line`` in SQL."""
    return synced_version != version or synced_amount != amount


def line_state(line: LineSync) -> LineState:
    if line.drift:
        return LineState.DRIFT
    if is_pending(line.version, line.synced_version, line.amount, line.synced_amount):
        return LineState.PENDING
    if line.accepted_amount is not None and line.accepted_amount != line.amount:
        return LineState.ACCEPTED
    return LineState.IN_STRIPE


def charged(line: LineSync) -> int:
    """What Stripe charges (or will, once synced) for the line."""
    if line_state(line) is LineState.ACCEPTED:
        assert line.accepted_amount is not None
        return line.accepted_amount
    return line.amount


def behind(line: LineSync) -> int:
    """How much of the line's amount Stripe does not hold yet (0 unless pending)."""
    if line_state(line) is not LineState.PENDING:
        return 0
    return line.amount - (line.synced_amount or 0)


def line_sync(
    amount: int,
    version: int,
    synced_version: int,
    synced_amount: int | None,
    *,
    accepted: tuple[int, int] | None = None,
    drift: bool = False,
) -> LineSync:
    """A line's :class:`LineSync`; ``accepted``: the last (ledger amount, Stripe amount) a
    person accepted for it, which holds while the line still has that ledger amount."""
    accepted_amount = accepted[1] if accepted is not None and accepted[0] == amount else None
    return LineSync(amount, version, synced_version, synced_amount, accepted_amount, drift)
