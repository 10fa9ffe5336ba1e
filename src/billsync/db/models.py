"""The ledger's schema. Migrations under ``db/migrations`` build it; a test keeps them in step."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from billsync.core.periods import PeriodStatus
from billsync.db.types import ExactDecimal, JSONDocument, UTCDateTime

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# 64-bit ids on PostgreSQL; SQLite's INTEGER PRIMARY KEY is already 64-bit and is the rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")
PERIOD_STATUSES = ", ".join(f"'{status.value}'" for status in PeriodStatus)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(320))
    currency: Mapped[str] = mapped_column(String(3))
    # None: the deployment's default anchor day (BILLSYNC_BILLING_ANCHOR_DAY).
    billing_anchor_day: Mapped[int | None] = mapped_column(SmallInteger)
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    # Per-account overrides of the sync policy ({"policy": "threshold", "threshold": 5000}).
    sync_policy: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The anchor days periods followed before billing_anchor_day, each with the date it stopped
    # applying ([{"until": "2026-12-01", "anchor_day": 1}]); None: never changed.
    anchor_changes: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONDocument)
    # The account's negotiated prices, each set from a period start on (core.pricing: the
    # document of its RateCards); None: the catalog's prices.
    rate_cards: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONDocument)
    # Its minimum commitments per period, each from a period start on (core.commitment).
    commitments: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONDocument)

    __table_args__ = (
        CheckConstraint(
            "billing_anchor_day IS NULL OR billing_anchor_day BETWEEN 1 AND 28", name="anchor_day"
        ),
        # GET /v1/accounts: a name prefix (LIKE 'p%': text_pattern_ops on PostgreSQL) and an
        # exact email.
        Index("ix_accounts_name", "name", postgresql_ops={"name": "text_pattern_ops"}),
        Index("ix_accounts_email", "email"),
        # The few accounts with a sync policy of their own: the scheduler weighs them one by one.
        Index(
            "ix_accounts_own_sync_policy",
            "id",
            postgresql_where=text("sync_policy IS NOT NULL"),
            sqlite_where=text("sync_policy IS NOT NULL"),
        ),
    )


CLOSING_WORK = "status = 'review' AND (review_ends_at IS NULL OR finalize_requested_at IS NOT NULL)"
FINALIZE_DUE = "status = 'review' AND review_ends_at IS NOT NULL AND finalize_requested_at IS NULL"


class BillingPeriod(Base):
    """One account's monthly period; the row exists once the period has usage."""

    __tablename__ = "billing_periods"

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    start: Mapped[date] = mapped_column(Date, primary_key=True)
    end: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(16), default=PeriodStatus.OPEN.value)
    status_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The period's draft invoice in Stripe (created when it first has usage to show).
    stripe_invoice_id: Mapped[str | None] = mapped_column(String(255))
    review_ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # A hold stops the review clock: what was left of it, and the status to go back to.
    hold_remaining_seconds: Mapped[int | None] = mapped_column(Integer)
    held_from: Mapped[str | None] = mapped_column(String(16))
    finalize_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finalized_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint(f"status IN ({PERIOD_STATUSES})", name="status"),
        Index("ix_billing_periods_status_end", "status", "end"),
        # A catalog pricing change: the periods it re-prices, by start (catalog_pricings).
        Index("ix_billing_periods_start_account_id", "start", "account_id"),
        # Month end: what the closing lane has to do, and the review windows that are over.
        Index(
            "ix_billing_periods_closing_work",
            "end",
            "account_id",
            postgresql_where=text(CLOSING_WORK),
            sqlite_where=text(CLOSING_WORK),
        ),
        Index(
            "ix_billing_periods_finalize_due",
            "review_ends_at",
            postgresql_where=text(FINALIZE_DUE),
            sqlite_where=text(FINALIZE_DUE),
        ),
    )


class Line(Base):
    """The compiled total of one (account, period, metric, grouping): what goes on the invoice."""

    __tablename__ = "lines"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(255))
    period_start: Mapped[date] = mapped_column(Date)
    line_key: Mapped[str] = mapped_column(String(600))
    metric: Mapped[str] = mapped_column(String(100))
    grouping: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    # Set on late usage: the period the usage belonged to before that period's invoice closed.
    late_from: Mapped[date | None] = mapped_column(Date)
    currency: Mapped[str] = mapped_column(String(3))
    quantity: Mapped[Decimal] = mapped_column(ExactDecimal())
    amount: Mapped[int] = mapped_column(BigInteger)  # minor units, rounded once (core.money)
    version: Mapped[int] = mapped_column(Integer)  # bumps on every change
    event_count: Mapped[int] = mapped_column(BigInteger)
    # What billsync last confirmed in Stripe: the line is in step when synced_version == version.
    synced_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    synced_amount: Mapped[int | None] = mapped_column(BigInteger)
    stripe_line_item_id: Mapped[str | None] = mapped_column(String(255))  # il_…
    stripe_invoice_item_id: Mapped[str | None] = mapped_column(String(255))  # ii_…
    # The roll-up item carrying the line on a Stripe invoice too long for one item per line
    # (core.rollup); NULL: the line is its own item. Its il_/ii_ are then the roll-up item's.
    rollup_key: Mapped[str | None] = mapped_column(String(64))
    synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # A ``max`` or ``latest`` metric's line: the mark of its own events (core.aggregation.Mark)
    # — the largest quantity, or the latest event's quantity, timestamp and id. NULL otherwise.
    mark_value: Mapped[Decimal | None] = mapped_column(ExactDecimal())
    mark_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    mark_event_id: Mapped[str | None] = mapped_column(String(255))

    __table_args__ = (
        UniqueConstraint("account_id", "period_start", "line_key"),
        ForeignKeyConstraint(
            ["account_id", "period_start"],
            ["billing_periods.account_id", "billing_periods.start"],
            name="fk_lines_period_billing_periods",
        ),
        # Lines are rewritten on every batch that touches them: free space on each page lets
        # PostgreSQL update them in place (HOT) without touching the indexes.
        {"postgresql_with": {"fillfactor": "70"}},
    )


class DistinctValue(Base):
    """A value a ``unique_count`` metric has counted: one row per distinct value of its
    ``unique_by`` dimension per (account, usage period, metric and grouping), whichever line
    counted it — the period's own or a late one on a later invoice (``counted_in``, the start of
    that line's period). The key makes a value count once per period however often and late it
    is reported; a line's quantity is the number of values it counted."""

    __tablename__ = "distinct_values"

    account_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    # The period the usage happened in, and the line's key there (metric and grouping).
    period_start: Mapped[date] = mapped_column(Date, primary_key=True)
    line_key: Mapped[str] = mapped_column(String(600), primary_key=True)
    value: Mapped[str] = mapped_column(String(255), primary_key=True)
    counted_in: Mapped[date] = mapped_column(Date)

    __table_args__ = ({"sqlite_with_rowid": False},)


class UsageEvent(Base):
    """A raw usage event, kept for audit and drill-down until retention removes it.

    On PostgreSQL the table is partitioned by month of ``period_start`` (the period the usage
    happened in): one billing period's events stay in one partition, and retention drops a
    whole partition once every event in it belongs to a finalized invoice. PostgreSQL wants the
    partition key in every unique constraint, so the primary key is (id, period_start) on both
    stores; :class:`UsageEventId` keeps the id itself unique across partitions.
    """

    __tablename__ = "usage_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(255))
    metric: Mapped[str] = mapped_column(String(100))
    quantity: Mapped[Decimal] = mapped_column(ExactDecimal())
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    dimensions: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    # The period the usage happened in (the partition key on PostgreSQL).
    period_start: Mapped[date] = mapped_column(Date, primary_key=True)
    # No foreign key on purpose: the ingest transaction writes the line and its events together,
    # lines are never deleted, and a per-row FK check would cost PostgreSQL a lookup per event.
    line_id: Mapped[int] = mapped_column(BigId, index=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())

    # Monthly partitions and the DEFAULT one are created by migration 0006 and by
    # services.event_partitions, never by metadata.create_all.
    __table_args__ = ({"postgresql_partition_by": "RANGE (period_start)"},)


class UsageEventId(Base):
    """Every event id ever accepted, and the period (partition) its raw event is stored under.

    The one index that makes an id unique globally, whatever month a re-sent event claims
    (a partitioned table can only enforce uniqueness within a partition), and the memory of ids
    whose raw events retention removed: they are still answered as duplicates, never counted
    again. Never deleted.
    """

    __tablename__ = "usage_event_ids"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    period_start: Mapped[date] = mapped_column(Date)

    # The primary key is the table (one B-tree, no rowid) on SQLite.
    __table_args__ = ({"sqlite_with_rowid": False},)


class SyncIntent(Base):
    """A Stripe write, recorded before the call and settled after it. A pending intent found
    later means the outcome is unknown: Stripe is read before anything is written again."""

    __tablename__ = "sync_intents"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(255))
    period_start: Mapped[date | None] = mapped_column(Date)
    operation: Mapped[str] = mapped_column(String(32))
    idempotency_key: Mapped[str] = mapped_column(String(255))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    # pending | applied | recovered | answered_5xx (Stripe stored a 5xx under the key; not read
    # back yet) | answered_read (read back since) | refused (a 4xx after the endpoint started,
    # stored under the key: nothing written)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(String(2000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_sync_intents_account_id_status", "account_id", "status"),)


class AccountSync(Base):
    """Sync state per account, for the scheduler and for people (status, console)."""

    __tablename__ = "account_sync"

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    last_synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(String(2000))
    last_error_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    stripe_calls: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The worker syncing the account now, until when (renewed by its heartbeat), and how many
    # times the lease has changed hands (a fencing token: a stale holder sees a newer number).
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_generation: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Changes Stripe does not hold yet: set by every writer of the ledger in its transaction,
    # cleared by a sync that leaves nothing behind. The scheduler's due queue is the partial
    # index below: the accounts behind, least recently synced first.
    behind: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # After a failed sync, not before this (core.policy.retry_delay): an account that keeps
    # failing is retried less and less often instead of at every tick, so that a few poison
    # accounts cannot spend the budget everyone shares. None: due as its policy says.
    retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index(
            "ix_account_sync_due",
            "last_synced_at",
            "account_id",
            postgresql_where=text("behind IS true"),
            sqlite_where=text("behind IS 1"),
        ),
    )


class RateBudget(Base):
    """One row per shared Stripe rate budget: every process draws its calls from it (GCRA,
    times in the database's clock as Unix seconds; see sync.shared_budget)."""

    __tablename__ = "rate_budgets"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    full_at: Mapped[float] = mapped_column(Float)
    penalized_until: Mapped[float] = mapped_column(Float)
    granted: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class Installation(Base):
    """The one row that says which installation this database is (core.installation): the
    namespace in its Stripe keys and metadata, and the Stripe mode its ledger was synced in."""

    __tablename__ = "installation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    namespace: Mapped[str] = mapped_column(String(32))
    stripe_mode: Mapped[str | None] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class JobLease(Base):
    """A job only one process may run at a time (the scheduler's lifecycle and periodic jobs),
    leased like accounts: owner, expiry renewed by a heartbeat, generation as fencing token."""

    __tablename__ = "job_leases"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(200))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    generation: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class WebhookEvent(Base):
    """The webhook inbox: every Stripe event stored once (its id is the key), acknowledged at
    once, handled later by the processor, which marks ``handled_at``."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # evt_…
    type: Mapped[str] = mapped_column(String(100))
    created: Mapped[int] = mapped_column(BigInteger)  # Stripe's unix seconds
    livemode: Mapped[bool] = mapped_column(Boolean)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    source: Mapped[str] = mapped_column(String(16))  # webhook | sweep
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    handled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    outcome: Mapped[str | None] = mapped_column(String(100))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(String(2000))

    __table_args__ = (Index("ix_webhook_events_handled_at_created", "handled_at", "created"),)


class InvoiceMirror(Base):
    """What Stripe says of an invoice billsync created: status, totals, links, payments."""

    __tablename__ = "invoice_mirror"

    stripe_invoice_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    account_id: Mapped[str | None] = mapped_column(String(255), index=True)
    period_start: Mapped[date | None] = mapped_column(Date)
    number: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(32))
    currency: Mapped[str] = mapped_column(String(3))
    total: Mapped[int] = mapped_column(BigInteger)
    amount_due: Mapped[int] = mapped_column(BigInteger)
    amount_paid: Mapped[int] = mapped_column(BigInteger)
    amount_remaining: Mapped[int] = mapped_column(BigInteger)
    # What Stripe adds besides the lines: the lines' sum, the coupons' discount (total =
    # subtotal − discount) and the customer balance applied at finalization (negative: a
    # credit; amount_due = total + starting_balance, never below 0).
    subtotal: Mapped[int | None] = mapped_column(BigInteger)
    discount: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    starting_balance: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    hosted_invoice_url: Mapped[str | None] = mapped_column(String(2000))
    invoice_pdf: Mapped[str | None] = mapped_column(String(2000))
    attempt_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_payment_error: Mapped[str | None] = mapped_column(String(2000))
    finalized_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    voided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The newest Stripe event applied: an older one arriving late never rolls the mirror back.
    last_event_created: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    last_event_id: Mapped[str | None] = mapped_column(String(255))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class CreditGrant(Base):
    """Prepaid credit an account draws down when its periods close (core.credits)."""

    __tablename__ = "credit_grants"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    currency: Mapped[str] = mapped_column(String(3))
    amount: Mapped[int] = mapped_column(BigInteger)  # minor units, as granted
    remaining: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    reason: Mapped[str | None] = mapped_column(String(500))
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # When its expiry was recorded (and audited) with something left.
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class CreditGrantUse(Base):
    """What one period drew from one grant when it closed."""

    __tablename__ = "credit_grant_uses"

    grant_id: Mapped[int] = mapped_column(BigId, ForeignKey("credit_grants.id"), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(255), index=True)
    period_start: Mapped[date] = mapped_column(Date, primary_key=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SpendAlert(Base):
    """A threshold on an account's spend per period (core.alerts)."""

    __tablename__ = "spend_alerts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    amount: Mapped[int | None] = mapped_column(BigInteger)
    percent_of_commitment: Mapped[int | None] = mapped_column(Integer)
    budget: Mapped[int | None] = mapped_column(BigInteger)
    percents: Mapped[list[int] | None] = mapped_column(JSONDocument)
    grouping: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The last time the alert was weighed against the account's lines.
    checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AlertCrossing(Base):
    """One threshold of an alert reached in one period, and its webhook: recorded once (the
    key), sent until the platform takes it or retries run out."""

    __tablename__ = "alert_crossings"

    alert_id: Mapped[int] = mapped_column(BigId, ForeignKey("spend_alerts.id"), primary_key=True)
    period_start: Mapped[date] = mapped_column(Date, primary_key=True)
    threshold_label: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(255), index=True)
    threshold: Mapped[int] = mapped_column(BigInteger)
    spent: Mapped[int] = mapped_column(BigInteger)
    crossed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    given_up: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    last_error: Mapped[str | None] = mapped_column(String(500))


class CreditNote(Base):
    """A credit note of one of billsync's finalized invoices, as Stripe reports it: what it took
    off the amount still to pay, and what it refunded or credited to the customer's balance."""

    __tablename__ = "credit_notes"

    stripe_credit_note_id: Mapped[str] = mapped_column(String(255), primary_key=True)  # cn_…
    stripe_invoice_id: Mapped[str] = mapped_column(String(255), index=True)
    account_id: Mapped[str | None] = mapped_column(String(255), index=True)
    period_start: Mapped[date | None] = mapped_column(Date)
    number: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))  # issued | void
    currency: Mapped[str] = mapped_column(String(3))
    total: Mapped[int] = mapped_column(BigInteger)
    pre_payment_amount: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    post_payment_amount: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    refund_amount: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    credit_amount: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    reason: Mapped[str | None] = mapped_column(String(32))  # Stripe's: duplicate, order_change…
    memo: Mapped[str | None] = mapped_column(String(2000))
    pdf: Mapped[str | None] = mapped_column(String(2000))
    # [{"line_item_id": "il_…" or null, "amount": 500, "description": "…"}]
    lines: Mapped[list[dict[str, Any]]] = mapped_column(JSONDocument)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())  # Stripe's ``created``
    # The newest Stripe event applied (0: billsync's own call): an older one never rolls back.
    last_event_created: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Problem(Base):
    """Something a person should look at: a failed payment or finalization, drift between the
    ledger and Stripe. Open until resolved."""

    __tablename__ = "problems"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str | None] = mapped_column(String(255))
    period_start: Mapped[date | None] = mapped_column(Date)
    kind: Mapped[str] = mapped_column(String(64))
    # Identifies the problem so that finding it again updates it instead of adding a copy.
    fingerprint: Mapped[str] = mapped_column(String(400), unique=True)
    stripe_object_id: Mapped[str | None] = mapped_column(String(255))
    line_id: Mapped[int | None] = mapped_column(BigInteger)
    ledger_amount: Mapped[int | None] = mapped_column(BigInteger)
    stripe_amount: Mapped[int | None] = mapped_column(BigInteger)
    repairable: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    detail: Mapped[str] = mapped_column(String(2000))
    detected_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    resolution: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (Index("ix_problems_account_id_resolved_at", "account_id", "resolved_at"),)


class Cursor(Base):
    """Small named positions (e.g. the newest Stripe event the sweep has seen)."""

    __tablename__ = "cursors"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(String(400))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class User(Base):
    """A person who signs in to the support console."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(400))
    role: Mapped[str] = mapped_column(String(16))  # viewer | agent | admin
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ConsoleSession(Base):
    """A signed-in browser: the cookie carries the token; only its hash is stored."""

    __tablename__ = "console_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SignInFailure(Base):
    """Failed console sign-ins under one key (a client, a user from a client, a user), shared
    by every API process: the throttle's memory (billsync.services.console_auth)."""

    __tablename__ = "sign_in_failures"

    key: Mapped[str] = mapped_column(String(80), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class CatalogPricing(Base):
    """A catalog pricing the ledger was rated with (billsync.core.catalog_pricing), newest
    last: every metric's prices and price versions, as applied by ``billsync catalog apply``
    (or a SQLite process's start). ``completed_at`` is set once the open periods it prices
    differently from ``previous_id``'s were re-rated."""

    __tablename__ = "catalog_pricings"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    digest: Mapped[str] = mapped_column(String(64))
    document: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    previous_id: Mapped[int | None] = mapped_column(BigId)
    source: Mapped[str] = mapped_column(String(1000))
    applied_by: Mapped[str] = mapped_column(String(100))
    applied_at: Mapped[datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lines_re_rated: Mapped[int] = mapped_column(Integer, server_default="0")
    accounts_re_rated: Mapped[int] = mapped_column(Integer, server_default="0")


class AuditEntry(Base):
    """Who did what, when and why: every support action and every state transition."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(64))
    account_id: Mapped[str | None] = mapped_column(String(255))
    period_start: Mapped[date | None] = mapped_column(Date)
    reason: Mapped[str | None] = mapped_column(String(2000))
    detail: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    # The client's key for the request that did this (billsync.core.request_keys), unique per
    # actor: the same request sent twice is carried out once.
    request_key: Mapped[str | None] = mapped_column(String(255))
    request_digest: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_audit_log_account_id_at", "account_id", "at"),
        Index(
            "ux_audit_log_actor_request_key",
            "actor",
            "request_key",
            unique=True,
            sqlite_where=text("request_key IS NOT NULL"),
            postgresql_where=text("request_key IS NOT NULL"),
        ),
    )
