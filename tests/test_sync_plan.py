"""The pure sync plan: applying it yields the ledger; a second plan is empty; nothing extra."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billsync.core.sync_plan import (
    LINES_PER_CALL,
    AddLines,
    CloseWithoutInvoice,
    CreateCustomer,
    CreateInvoice,
    DeleteInvoice,
    DesiredLine,
    FinalizeInvoice,
    ObservedLine,
    PeriodState,
    PlanError,
    RemoveLines,
    UpdateLines,
    apply,
    idempotency_key,
    idempotency_key_for_ids,
    plan,
    plan_period,
)

pytestmark = pytest.mark.unit  # pure: no database, no network, no process

PERIOD = date(2026, 11, 1)


def desired(line_id: int, amount: int, version: int = 1) -> DesiredLine:
    return DesiredLine(line_id, amount, f"line {line_id}", version, 0, 1)


@st.composite
def period_states(draw: st.DrawFn) -> PeriodState:
    ids = draw(st.sets(st.integers(1, 400), max_size=40))
    lines = tuple(
        desired(i, draw(st.integers(-10_000, 10**7)), draw(st.integers(1, 5))) for i in sorted(ids)
    )
    observed_ids = draw(st.sets(st.integers(1, 400), max_size=40))
    observed = tuple(
        ObservedLine(i, f"il_{i}", draw(st.integers(0, 10**7)), draw(st.integers(1, 5)))
        for i in sorted(observed_ids)
    )
    has_invoice = draw(st.booleans()) or bool(observed)
    return PeriodState(
        PERIOD,
        "usd",
        lines,
        observed if has_invoice else (),
        "in_1" if has_invoice else None,
        finalize=draw(st.booleans()),
    )


def as_observed(line: DesiredLine) -> tuple[int, int, int]:
    return (line.line_id, line.amount, line.version)


@given(period_states())
def test_applying_the_plan_yields_the_ledger_and_replanning_yields_nothing(
    state: PeriodState,
) -> None:
    operations = plan_period(state)
    after = apply(state, operations)
    assert sorted((o.line_id, o.amount, o.version) for o in after.observed) == sorted(
        as_observed(line) for line in state.desired
    )
    # An invoice exactly when there is something to bill (an empty draft is never finalized).
    assert after.invoice_id is not None or not state.desired
    assert plan_period(after) == []


@given(period_states())
def test_unchanged_lines_produce_no_operation(state: PeriodState) -> None:
    in_step = PeriodState(
        PERIOD,
        "usd",
        state.desired,
        tuple(
            ObservedLine(d.line_id, f"il_{d.line_id}", d.amount, d.version) for d in state.desired
        ),
        "in_1",
    )
    assert plan_period(in_step) == []


def test_operations_are_bulk_and_chunked() -> None:
    state = PeriodState(PERIOD, "usd", tuple(desired(i, 100) for i in range(1, 231)))
    operations = plan([state], has_customer=False)
    assert [type(op) for op in operations] == [
        CreateCustomer,
        CreateInvoice,
        AddLines,
        AddLines,
        AddLines,
    ]
    assert [len(op.lines) for op in operations[2:] if isinstance(op, AddLines)] == [
        LINES_PER_CALL, LINES_PER_CALL, 30,
    ]  # fmt: skip


def test_update_remove_and_finalize() -> None:
    state = PeriodState(
        PERIOD,
        "usd",
        (desired(1, 500, 2), desired(2, 70)),
        (
            ObservedLine(1, "il_a", 400, 1),
            ObservedLine(2, "il_b", 70, 1),
            ObservedLine(3, "il_c", 9, 1),
        ),
        "in_1",
        finalize=True,
    )
    assert plan_period(state) == [
        RemoveLines(PERIOD, ("il_c",)),
        UpdateLines(PERIOD, ((desired(1, 500, 2), "il_a"),)),
        FinalizeInvoice(PERIOD),
    ]


def test_zero_total_period_with_the_delete_rule_deletes_its_draft() -> None:
    state = PeriodState(
        PERIOD, "usd", (desired(1, 0),), (ObservedLine(1, "il_a", 0, 1),), "in_1",
        finalize=True, delete_if_empty=True,
    )  # fmt: skip
    assert plan_period(state) == [DeleteInvoice(PERIOD)]


def test_nothing_to_bill_ends_the_period_without_an_invoice_and_no_stripe_call() -> None:
    """No line at all: no customer, no draft, never an empty invoice finalized; a draft that
    exists is deleted. Under the delete rule a zero total with no draft (a cycle-end account
    whose usage stayed in the free tier) ends the same way instead of waiting forever."""
    nothing = PeriodState(PERIOD, "usd", (), finalize=True)
    assert plan([nothing], has_customer=False) == [CloseWithoutInvoice(PERIOD)]
    with_draft = PeriodState(PERIOD, "usd", (), invoice_id="in_1", finalize=True)
    assert plan_period(with_draft) == [DeleteInvoice(PERIOD)]
    free_tier = PeriodState(PERIOD, "usd", (desired(1, 0),), finalize=True, delete_if_empty=True)
    assert plan([free_tier], has_customer=False) == [CloseWithoutInvoice(PERIOD)]
    assert apply(free_tier, [CloseWithoutInvoice(PERIOD)]).finalized


def test_a_line_above_stripes_8_digits_is_refused_before_any_call() -> None:
    largest = PeriodState(PERIOD, "usd", (desired(1, 99_999_999),))
    assert [type(o) for o in plan_period(largest)] == [CreateInvoice, AddLines]
    too_large = PeriodState(PERIOD, "usd", (desired(1, 100_000_000), desired(2, 5)))
    with pytest.raises(
        PlanError, match=r"100,000,000 minor units; Stripe takes at most 99,999,999"
    ):
        plan_period(too_large)
    credit = PeriodState(PERIOD, "usd", (desired(1, -100_000_000),))
    with pytest.raises(PlanError, match="split the metric"):
        plan_period(credit)


def test_more_than_250_lines_fail_loudly() -> None:
    state = PeriodState(PERIOD, "usd", tuple(desired(i, 1) for i in range(251)))
    with pytest.raises(PlanError, match="at most 250"):
        plan_period(state)


def test_idempotency_keys_follow_ids_and_versions() -> None:
    key = idempotency_key("add", "in_1", [(2, 1), (1, 3)])
    assert key == idempotency_key("add", "in_1", [(1, 3), (2, 1)])
    assert key != idempotency_key("add", "in_1", [(1, 4), (2, 1)])
    assert key.startswith("billsync:add:in_1:")
    assert len(key) <= 255
    assert idempotency_key("customer", "acme") == "billsync:customer:acme"


@given(
    st.lists(st.from_regex(r"il_[A-Za-z0-9]{24}", fullmatch=True), min_size=1, max_size=120),
    st.lists(st.from_regex(r"il_[A-Za-z0-9]{24}", fullmatch=True), min_size=1, max_size=120),
)
def test_keys_for_sets_of_ids_fit_stripes_255_and_never_collide(
    first: list[str], second: list[str]
) -> None:
    """Removing 100 lines (2,700 characters of ids) must not be cut to 255 characters, where
    two batches sharing their first nine ids would share a key and Stripe would answer the
    second with the first's result."""
    key = idempotency_key_for_ids("remove", "in_1", first)
    assert len(key) <= 255
    assert key == idempotency_key_for_ids("remove", "in_1", list(reversed(first)))
    if set(first) != set(second):
        assert key != idempotency_key_for_ids("remove", "in_1", second)
    shared = first[:9]
    assert idempotency_key_for_ids("remove", "in_1", [*shared, "il_a"]) != (
        idempotency_key_for_ids("remove", "in_1", [*shared, "il_b"])
    )
