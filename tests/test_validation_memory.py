"""Validation remembers texts it found valid (account ids, dimension pairs): the answers must
be exactly those of checking every event afresh, whatever came before."""

from __future__ import annotations

from datetime import timedelta

import orjson

from billsync.core import usage
from billsync.core.catalog import Catalog
from billsync.core.usage import Rejection, RejectionCode, UsageRules, ValidEvent, validate_body
from tests.conftest import T0

EGRESS = "bandwidth.egress.na-eu.gb"


def body(*events: dict[str, object]) -> bytes:
    return orjson.dumps({"events": list(events)})


def egress(event_id: str, account: object, region: object) -> dict[str, object]:
    return {
        "id": event_id, "account": account, "metric": EGRESS, "quantity": "1",
        "timestamp": T0.isoformat(), "dimensions": {"region": region},
    }  # fmt: skip


def codes(outcomes: list[ValidEvent | Rejection]) -> list[str]:
    return ["ok" if isinstance(o, ValidEvent) else o.code.value for o in outcomes]


def test_remembered_texts_answer_as_checking_them_again(example_catalog: Catalog) -> None:
    rules = UsageRules(example_catalog, T0, timedelta(days=35))
    usage._VALID_ACCOUNTS.clear()
    usage._VALID_DIMENSIONS.clear()
    first = validate_body(body(egress("a", "acme", "iad"), egress("b", "acme", "iad")), rules, 10)
    assert codes(first) == ["ok", "ok"]
    assert "acme" in usage._VALID_ACCOUNTS
    assert ("region", "iad") in usage._VALID_DIMENSIONS
    # Bad values after good ones are still refused, each with its own code, and values of a
    # type that cannot be remembered (lists, objects: the generic decoder's path) are refused,
    # not a server error.
    mixed = validate_body(
        body(
            egress("c", "acme", "iad"),
            egress("d", "acme", "ia\u202ed"),
            egress("e", ["acme"], "iad"),
            egress("f", "acme", ["iad"]),
            egress("g", {"id": "acme"}, {"x": 1}),
            egress("h", " acme", "iad"),
        ),
        rules,
        10,
    )
    assert codes(mixed) == [
        "ok", "invalid_dimensions", "invalid_account", "invalid_dimensions", "invalid_account",
        "invalid_account",
    ]  # fmt: skip
    # A dimension name is checked with its value: a valid value under a bad name is refused.
    bad_name = validate_body(
        body({**egress("i", "acme", "iad"), "dimensions": {"region": "iad", "Bad": "iad"}}),
        rules,
        10,
    )
    rejection = bad_name[0]
    assert isinstance(rejection, Rejection)
    assert rejection.code is RejectionCode.INVALID_DIMENSIONS


def test_the_memory_is_bounded(example_catalog: Catalog) -> None:
    rules = UsageRules(example_catalog, T0, timedelta(days=35))
    usage._VALID_ACCOUNTS.clear()
    events = [egress(f"e{n}", f"acct-{n}", "iad") for n in range(usage._REMEMBERED + 10)]
    outcomes = validate_body(body(*events), rules, len(events))
    assert all(isinstance(o, ValidEvent) for o in outcomes)
    assert 0 < len(usage._VALID_ACCOUNTS) <= usage._REMEMBERED
