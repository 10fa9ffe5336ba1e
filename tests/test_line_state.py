"""The one definition of "in Stripe" (core.line_state) and its SQL form
(repositories.sync.pending_line) agree on every combination of versions and amounts, on both
stores; what a line's state says about what Stripe charges holds; and the one comparison of
an invoice with the ledger (core.drift) names each difference."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from billsync.bootstrap import Billsync
from billsync.core.drift import (
    AMOUNT_DIFFERS,
    DUPLICATE_IN_STRIPE,
    EXTRA_IN_STRIPE,
    LINE_OF_ANOTHER_PERIOD,
    MISSING_IN_STRIPE,
    REMOVED_IN_STRIPE,
    OurLine,
    TheirLine,
    compare_lines,
)
from billsync.core.line_state import (
    LineState,
    behind,
    charged,
    is_pending,
    line_state,
    line_sync,
)
from billsync.db.tables import lines
from billsync.repositories.sync import pending_line
from tests.conftest import T0
from tests.factories import create_account, event

amounts = st.integers(min_value=-5, max_value=5)
versions = st.integers(min_value=0, max_value=3)
synced_amounts = st.one_of(st.none(), amounts)


@pytest.mark.unit
@given(amounts, versions, versions, synced_amounts,
       st.tuples(st.one_of(st.none(), st.tuples(amounts, amounts)), st.booleans()))  # fmt: skip
def test_the_states_say_what_stripe_charges(
    amount: int,
    version: int,
    synced_version: int,
    synced_amount: int | None,
    decided: tuple[tuple[int, int] | None, bool],
) -> None:
    accepted, drift = decided
    sync = line_sync(amount, version, synced_version, synced_amount, accepted=accepted, drift=drift)
    state = line_state(sync)
    pending = is_pending(version, synced_version, amount, synced_amount)
    if drift:
        assert state is LineState.DRIFT
    elif pending:
        assert state is LineState.PENDING
        assert behind(sync) == amount - (synced_amount or 0)
    else:
        assert synced_amount == amount  # Stripe holds exactly what billsync pushed
        assert behind(sync) == 0
        accepted_now = accepted is not None and accepted[0] == amount and accepted[1] != amount
        assert state is (LineState.ACCEPTED if accepted_now else LineState.IN_STRIPE)
        assert charged(sync) == (accepted[1] if accepted_now and accepted else amount)
    if state is not LineState.ACCEPTED:
        assert charged(sync) == amount  # pending lines: what the next sync puts there


@pytest.fixture
def one_line(billsync: Billsync) -> int:
    create_account(billsync, "acme")
    billsync.ingest.ingest([event("acme", "bandwidth.egress.na-eu.gb", "1", at=T0, region="iad")])
    with billsync.database.read() as connection:
        return int(connection.execute(select(lines.c.id)).scalar_one())


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(st.tuples(amounts, st.integers(min_value=1, max_value=3), versions, synced_amounts))
def test_the_sql_predicate_is_the_same_rule(
    billsync: Billsync, one_line: int, case: tuple[int, int, int, int | None]
) -> None:
    amount, version, synced_version, synced_amount = case
    with billsync.database.transaction() as connection:
        connection.execute(
            update(lines)
            .where(lines.c.id == one_line)
            .values(
                amount=amount, version=version, synced_version=synced_version,
                synced_amount=synced_amount,
            )
        )  # fmt: skip
        found = connection.execute(select(lines.c.id).where(pending_line())).all()
    assert bool(found) is is_pending(version, synced_version, amount, synced_amount)


def ours(line_id: int, amount: int = 100, version: int = 1, synced: int | None = 1) -> OurLine:
    """A ledger line billsync pushed at ``synced`` (None: never pushed)."""
    if synced is None:
        return OurLine(line_id, amount, version, 0, None, None)
    return OurLine(line_id, amount, version, synced, amount if synced == version else 90,
                   f"il_{line_id}")  # fmt: skip


def theirs(line_id: int | None, amount: int = 100, version: int | None = 1) -> TheirLine:
    return TheirLine(f"il_{line_id}", amount, line_id, version)


@pytest.mark.unit
def test_one_comparison_names_every_difference_of_a_draft() -> None:
    compared = compare_lines(
        [ours(1), ours(2), ours(3), ours(4, amount=120, version=2), ours(5, synced=None),
         ours(6)],
        [theirs(1), theirs(2, amount=7), theirs(4, amount=90), theirs(None, 300), theirs(9),
         theirs(6), TheirLine("il_6b", 100, 6, 1)],
        complete=False, final=False,
    )  # fmt: skip
    kinds = sorted((d.kind, d.line.id if d.line else d.stripe.line_item_id if d.stripe else "")
                   for d in compared.differences)  # fmt: skip
    assert kinds == [
        (AMOUNT_DIFFERS, 2),  # edited in Stripe
        (DUPLICATE_IN_STRIPE, 6),
        (EXTRA_IN_STRIPE, "il_None"),
        (LINE_OF_ANOTHER_PERIOD, "il_9"),
        (REMOVED_IN_STRIPE, 3),  # billsync had it there
    ]
    assert compared.pending == 2  # 4 (the ledger moved on), 5 (never pushed)
    assert compared.in_step == {1, 6}


@pytest.mark.unit
def test_a_complete_draft_misses_what_it_lacks_and_a_final_invoice_has_nothing_pending() -> None:
    complete = compare_lines([ours(5, synced=None)], [], complete=True, final=False)
    assert [d.kind for d in complete.differences] == [MISSING_IN_STRIPE]
    final = compare_lines(
        [ours(4, amount=120, version=2)], [theirs(4, amount=90)], complete=True, final=True
    )
    assert [d.kind for d in final.differences] == [AMOUNT_DIFFERS]
    assert final.pending == 0
