"""Core ``Table`` handles for the repositories (bulk statements go through Core, not the ORM)."""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table

from billsync.db.models import (
    Account,
    AccountSync,
    AlertCrossing,
    AuditEntry,
    BillingPeriod,
    CatalogPricing,
    ConsoleSession,
    CreditGrant,
    CreditGrantUse,
    CreditNote,
    Cursor,
    DistinctValue,
    Installation,
    InvoiceMirror,
    JobLease,
    Line,
    Problem,
    RateBudget,
    SignInFailure,
    SpendAlert,
    SyncIntent,
    UsageEvent,
    UsageEventId,
    User,
    WebhookEvent,
)

accounts = cast(Table, Account.__table__)
billing_periods = cast(Table, BillingPeriod.__table__)
lines = cast(Table, Line.__table__)
usage_events = cast(Table, UsageEvent.__table__)
usage_event_ids = cast(Table, UsageEventId.__table__)
distinct_values = cast(Table, DistinctValue.__table__)
sync_intents = cast(Table, SyncIntent.__table__)
account_sync = cast(Table, AccountSync.__table__)
webhook_events = cast(Table, WebhookEvent.__table__)
invoice_mirror = cast(Table, InvoiceMirror.__table__)
credit_notes = cast(Table, CreditNote.__table__)
credit_grants = cast(Table, CreditGrant.__table__)
credit_grant_uses = cast(Table, CreditGrantUse.__table__)
spend_alerts = cast(Table, SpendAlert.__table__)
alert_crossings = cast(Table, AlertCrossing.__table__)
problems = cast(Table, Problem.__table__)
cursors = cast(Table, Cursor.__table__)
users = cast(Table, User.__table__)
console_sessions = cast(Table, ConsoleSession.__table__)
audit_log = cast(Table, AuditEntry.__table__)
catalog_pricings = cast(Table, CatalogPricing.__table__)
rate_budgets = cast(Table, RateBudget.__table__)
job_leases = cast(Table, JobLease.__table__)
installation = cast(Table, Installation.__table__)
sign_in_failures = cast(Table, SignInFailure.__table__)
