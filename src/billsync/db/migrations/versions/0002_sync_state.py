"""sync state

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# Types are spelled out here, not imported from the models, so this migration never changes.
UTC_DATETIME = sa.DateTime(timezone=True)
JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sync_intents",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=255), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=True),
        sa.Column("operation", sa.String(length=32), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("payload", JSON_DOCUMENT, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.String(length=2000), nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_intents")),
    )
    with op.batch_alter_table("sync_intents", schema=None) as batch_op:
        batch_op.create_index(
            "ix_sync_intents_account_id_status", ["account_id", "status"], unique=False
        )

    op.create_table(
        "account_sync",
        sa.Column("account_id", sa.String(length=255), nullable=False),
        sa.Column("last_synced_at", UTC_DATETIME, nullable=True),
        sa.Column("last_attempt_at", UTC_DATETIME, nullable=True),
        sa.Column("last_error", sa.String(length=2000), nullable=True),
        sa.Column("last_error_at", UTC_DATETIME, nullable=True),
        sa.Column("consecutive_failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("stripe_calls", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_account_sync_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_account_sync")),
    )
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sync_policy", JSON_DOCUMENT, nullable=True))

    with op.batch_alter_table("billing_periods", schema=None) as batch_op:
        batch_op.add_column(sa.Column("status_changed_at", UTC_DATETIME, nullable=True))
        batch_op.add_column(sa.Column("stripe_invoice_id", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("review_ends_at", UTC_DATETIME, nullable=True))
        batch_op.add_column(sa.Column("hold_remaining_seconds", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("held_from", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("finalize_requested_at", UTC_DATETIME, nullable=True))
        batch_op.add_column(sa.Column("finalized_at", UTC_DATETIME, nullable=True))

    with op.batch_alter_table("lines", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("synced_version", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("synced_amount", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("stripe_line_item_id", sa.String(length=255), nullable=True))
        batch_op.add_column(
            sa.Column("stripe_invoice_item_id", sa.String(length=255), nullable=True)
        )
        batch_op.add_column(sa.Column("synced_at", UTC_DATETIME, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lines", schema=None) as batch_op:
        batch_op.drop_column("synced_at")
        batch_op.drop_column("stripe_invoice_item_id")
        batch_op.drop_column("stripe_line_item_id")
        batch_op.drop_column("synced_amount")
        batch_op.drop_column("synced_version")

    with op.batch_alter_table("billing_periods", schema=None) as batch_op:
        batch_op.drop_column("finalized_at")
        batch_op.drop_column("finalize_requested_at")
        batch_op.drop_column("held_from")
        batch_op.drop_column("hold_remaining_seconds")
        batch_op.drop_column("review_ends_at")
        batch_op.drop_column("stripe_invoice_id")
        batch_op.drop_column("status_changed_at")

    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("sync_policy")

    op.drop_table("account_sync")
    with op.batch_alter_table("sync_intents", schema=None) as batch_op:
        batch_op.drop_index("ix_sync_intents_account_id_status")

    op.drop_table("sync_intents")
