"""initial ledger schema

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# Types are spelled out here, not imported from the models, so this migration never changes.
UTC_DATETIME = sa.DateTime(timezone=True)
EXACT_DECIMAL = sa.Text().with_variant(sa.Numeric(), "postgresql")
JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("billing_anchor_day", sa.SmallInteger(), nullable=True),
        sa.Column("stripe_customer_id", sa.String(length=255), nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.CheckConstraint(
            "billing_anchor_day IS NULL OR billing_anchor_day BETWEEN 1 AND 28",
            name=op.f("ck_accounts_anchor_day"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        sa.UniqueConstraint("stripe_customer_id", name=op.f("uq_accounts_stripe_customer_id")),
    )
    op.create_table(
        "billing_periods",
        sa.Column("account_id", sa.String(length=255), nullable=False),
        sa.Column("start", sa.Date(), nullable=False),
        sa.Column("end", sa.Date(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.CheckConstraint(
            "status IN ('open', 'closing', 'review', 'held', 'finalized')",
            name=op.f("ck_billing_periods_status"),
        ),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_billing_periods_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("account_id", "start", name=op.f("pk_billing_periods")),
    )
    with op.batch_alter_table("billing_periods", schema=None) as batch_op:
        batch_op.create_index("ix_billing_periods_status_end", ["status", "end"], unique=False)

    op.create_table(
        "lines",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=255), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("line_key", sa.String(length=600), nullable=False),
        sa.Column("metric", sa.String(length=100), nullable=False),
        sa.Column("grouping", JSON_DOCUMENT, nullable=False),
        sa.Column("late_from", sa.Date(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("quantity", EXACT_DECIMAL, nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("event_count", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id", "period_start"],
            ["billing_periods.account_id", "billing_periods.start"],
            name="fk_lines_period_billing_periods",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lines")),
        sa.UniqueConstraint(
            "account_id",
            "period_start",
            "line_key",
            name=op.f("uq_lines_account_id_period_start_line_key"),
        ),
        postgresql_with={"fillfactor": "70"},
    )
    op.create_table(
        "usage_events",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("account_id", sa.String(length=255), nullable=False),
        sa.Column("metric", sa.String(length=100), nullable=False),
        sa.Column("quantity", EXACT_DECIMAL, nullable=False),
        sa.Column("occurred_at", UTC_DATETIME, nullable=False),
        sa.Column("dimensions", JSON_DOCUMENT, nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("line_id", BIG_ID, nullable=False),
        sa.Column("received_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_events")),
    )
    with op.batch_alter_table("usage_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_usage_events_line_id"), ["line_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("usage_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_usage_events_line_id"))

    op.drop_table("usage_events")
    op.drop_table("lines")
    with op.batch_alter_table("billing_periods", schema=None) as batch_op:
        batch_op.drop_index("ix_billing_periods_status_end")

    op.drop_table("billing_periods")
    op.drop_table("accounts")
