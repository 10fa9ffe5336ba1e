"""The credit notes Stripe holds for billsync's invoices

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08

``credit_notes``: each credit note of a finalized invoice of billsync's (issued from the console
or in the Stripe Dashboard), as Stripe's events and billsync's own calls report it — what it
took off the amount still to pay (``pre_payment_amount``) and what it refunded or credited to
the customer's balance after payment. The console's account page and the customer's page read
it beside the invoice mirror.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Types are spelled out here, not imported from the models, so this migration never changes.
UTC_DATETIME = sa.DateTime(timezone=True)
JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "credit_notes",
        sa.Column("stripe_credit_note_id", sa.String(length=255), nullable=False),
        sa.Column("stripe_invoice_id", sa.String(length=255), nullable=False),
        sa.Column("account_id", sa.String(length=255), nullable=True),
        sa.Column("period_start", sa.Date(), nullable=True),
        sa.Column("number", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("pre_payment_amount", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("post_payment_amount", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("refund_amount", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("credit_amount", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("memo", sa.String(length=2000), nullable=True),
        sa.Column("pdf", sa.String(length=2000), nullable=True),
        sa.Column("lines", JSON_DOCUMENT, nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("last_event_created", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("stripe_credit_note_id", name=op.f("pk_credit_notes")),
    )
    with op.batch_alter_table("credit_notes") as batch_op:
        batch_op.create_index(
            batch_op.f("ix_credit_notes_stripe_invoice_id"), ["stripe_invoice_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_credit_notes_account_id"), ["account_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("credit_notes") as batch_op:
        batch_op.drop_index(batch_op.f("ix_credit_notes_account_id"))
        batch_op.drop_index(batch_op.f("ix_credit_notes_stripe_invoice_id"))
    op.drop_table("credit_notes")
