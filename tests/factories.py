"""Small builders for test data."""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

from billsync.bootstrap import Billsync
from billsync.repositories.accounts import AccountRecord
from billsync.services.accounts import NewAccount

_ids = itertools.count(1)


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event(
    account: str,
    metric: str = "machine.shared-cpu-1x.seconds",
    quantity: Any = 60,
    *,
    at: datetime,
    event_id: str | None = None,
    **dimensions: str,
) -> dict[str, Any]:
    return {
        "id": event_id or f"evt-{next(_ids)}",
        "account": account,
        "metric": metric,
        "quantity": quantity,
        "timestamp": rfc3339(at),
        "dimensions": dimensions,
    }


def create_account(
    billsync: Billsync, account_id: str = "acme", currency: str = "usd", **extra: Any
) -> AccountRecord:
    with billsync.database.transaction() as connection:
        return billsync.accounts.create(connection, NewAccount(account_id, currency, **extra))
