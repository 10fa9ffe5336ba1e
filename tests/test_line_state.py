"""The one definition of "in Stripe" (core.line_state) and its SQL form
(repositories.sync.pending_line) agree on every combination of versions and amounts, on both
stores; and what a line's state says about what Stripe charges holds."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from billsync.bootstrap import Billsync
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
