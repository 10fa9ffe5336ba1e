"""Prepaid credit grants and what each period drew from them

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07

``credit_grants``: an account's prepaid credits (amount, what is left, expiry, reason; when
the remainder expired). ``credit_grant_uses``: what each period drew from each grant when it
closed (billsync.core.credits).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "credit_grants",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=255), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("remaining", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", UTC_DATETIME, nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("expired_at", UTC_DATETIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_credit_grants_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_grants")),
    )
    op.create_index(
        op.f("ix_credit_grants_account_id"), "credit_grants", ["account_id"], unique=False
    )
    op.create_table(
        "credit_grant_uses",
        sa.Column("grant_id", BIG_ID, nullable=False),
        sa.Column("account_id", sa.String(length=255), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["grant_id"],
            ["credit_grants.id"],
            name=op.f("fk_credit_grant_uses_grant_id_credit_grants"),
        ),
        sa.PrimaryKeyConstraint("grant_id", "period_start", name=op.f("pk_credit_grant_uses")),
    )
    op.create_index(
        op.f("ix_credit_grant_uses_account_id"), "credit_grant_uses", ["account_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_credit_grant_uses_account_id"), table_name="credit_grant_uses")
    op.drop_table("credit_grant_uses")
    op.drop_index(op.f("ix_credit_grants_account_id"), table_name="credit_grants")
    op.drop_table("credit_grants")
