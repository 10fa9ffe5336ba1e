"""webhooks mirror and problems

Revision ID: 0003
Revises: 0002
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

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cursors",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("value", sa.String(length=400), nullable=False),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_cursors")),
    )
    op.create_table(
        "invoice_mirror",
        sa.Column("stripe_invoice_id", sa.String(length=255), nullable=False),
        sa.Column("account_id", sa.String(length=255), nullable=True),
        sa.Column("period_start", sa.Date(), nullable=True),
        sa.Column("number", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("amount_due", sa.BigInteger(), nullable=False),
        sa.Column("amount_paid", sa.BigInteger(), nullable=False),
        sa.Column("amount_remaining", sa.BigInteger(), nullable=False),
        sa.Column("hosted_invoice_url", sa.String(length=2000), nullable=True),
        sa.Column("invoice_pdf", sa.String(length=2000), nullable=True),
        sa.Column("attempt_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_payment_error", sa.String(length=2000), nullable=True),
        sa.Column("finalized_at", UTC_DATETIME, nullable=True),
        sa.Column("paid_at", UTC_DATETIME, nullable=True),
        sa.Column("voided_at", UTC_DATETIME, nullable=True),
        sa.Column("last_event_created", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("last_event_id", sa.String(length=255), nullable=True),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("stripe_invoice_id", name=op.f("pk_invoice_mirror")),
    )
    with op.batch_alter_table("invoice_mirror", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_invoice_mirror_account_id"), ["account_id"], unique=False
        )

    op.create_table(
        "problems",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=255), nullable=True),
        sa.Column("period_start", sa.Date(), nullable=True),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("fingerprint", sa.String(length=400), nullable=False),
        sa.Column("stripe_object_id", sa.String(length=255), nullable=True),
        sa.Column("line_id", sa.BigInteger(), nullable=True),
        sa.Column("ledger_amount", sa.BigInteger(), nullable=True),
        sa.Column("stripe_amount", sa.BigInteger(), nullable=True),
        sa.Column("repairable", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("detail", sa.String(length=2000), nullable=False),
        sa.Column("detected_at", UTC_DATETIME, nullable=False),
        sa.Column("last_seen_at", UTC_DATETIME, nullable=False),
        sa.Column("resolved_at", UTC_DATETIME, nullable=True),
        sa.Column("resolution", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_problems")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_problems_fingerprint")),
    )
    with op.batch_alter_table("problems", schema=None) as batch_op:
        batch_op.create_index(
            "ix_problems_account_id_resolved_at", ["account_id", "resolved_at"], unique=False
        )

    op.create_table(
        "webhook_events",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("payload", JSON_DOCUMENT, nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("received_at", UTC_DATETIME, nullable=False),
        sa.Column("handled_at", UTC_DATETIME, nullable=True),
        sa.Column("outcome", sa.String(length=100), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", UTC_DATETIME, nullable=True),
        sa.Column("last_error", sa.String(length=2000), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_events")),
    )
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_webhook_events_handled_at_created", ["handled_at", "created"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.drop_index("ix_webhook_events_handled_at_created")

    op.drop_table("webhook_events")
    with op.batch_alter_table("problems", schema=None) as batch_op:
        batch_op.drop_index("ix_problems_account_id_resolved_at")

    op.drop_table("problems")
    with op.batch_alter_table("invoice_mirror", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invoice_mirror_account_id"))

    op.drop_table("invoice_mirror")
    op.drop_table("cursors")
