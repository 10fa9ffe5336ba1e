"""Core ``Table`` handles for the repositories (bulk statements go through Core, not the ORM)."""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table

from billsync.db.models import Account, BillingPeriod, Line, UsageEvent

accounts = cast(Table, Account.__table__)
billing_periods = cast(Table, BillingPeriod.__table__)
lines = cast(Table, Line.__table__)
usage_events = cast(Table, UsageEvent.__table__)
