"""Spend alerts and budgets, and their crossings with the webhooks that tell the platform

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07

``spend_alerts``: thresholds on an account's spend per period (an amount, a percentage of the
commitment, or percentages of a budget; optionally for one grouping value).
``alert_crossings``: each threshold reached in a period, once, with its signed webhook's
delivery state (billsync.core.alerts).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "spend_alerts",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=True),
        sa.Column("percent_of_commitment", sa.Integer(), nullable=True),
        sa.Column("budget", sa.BigInteger(), nullable=True),
        sa.Column("percents", JSON_DOCUMENT, nullable=True),
        sa.Column("grouping", JSON_DOCUMENT, nullable=True),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("checked_at", UTC_DATETIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_spend_alerts_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_spend_alerts")),
    )
    op.create_index(op.f("ix_spend_alerts_account_id"), "spend_alerts", ["account_id"])
    op.create_table(
        "alert_crossings",
        sa.Column("alert_id", BIG_ID, nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("threshold_label", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=255), nullable=False),
        sa.Column("threshold", sa.BigInteger(), nullable=False),
        sa.Column("spent", sa.BigInteger(), nullable=False),
        sa.Column("crossed_at", UTC_DATETIME, nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("payload", JSON_DOCUMENT, nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", UTC_DATETIME, nullable=False),
        sa.Column("delivered_at", UTC_DATETIME, nullable=True),
        sa.Column("given_up", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(
            ["alert_id"], ["spend_alerts.id"], name=op.f("fk_alert_crossings_alert_id_spend_alerts")
        ),
        sa.PrimaryKeyConstraint(
            "alert_id", "period_start", "threshold_label", name=op.f("pk_alert_crossings")
        ),
        sa.UniqueConstraint("event_id", name=op.f("uq_alert_crossings_event_id")),
    )
    op.create_index(op.f("ix_alert_crossings_account_id"), "alert_crossings", ["account_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_alert_crossings_account_id"), table_name="alert_crossings")
    op.drop_table("alert_crossings")
    op.drop_index(op.f("ix_spend_alerts_account_id"), table_name="spend_alerts")
    op.drop_table("spend_alerts")
