"""Amounts as people read them: in their currency, with its symbol or code."""

from __future__ import annotations

import pytest

from billsync.core.money import money_text

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        (18498, "usd", "$184.98"),
        (-500, "usd", "-$5.00"),
        (0, "usd", "$0.00"),
        (123456789, "usd", "$1,234,567.89"),
        (1500, "eur", "€15.00"),
        (123456, "jpy", "¥123,456"),
        (1200, "sek", "12.00 SEK"),
        (-7, "USD", "-$0.07"),
    ],
)
def test_money_text(amount: int, currency: str, text: str) -> None:
    assert money_text(amount, currency) == text
