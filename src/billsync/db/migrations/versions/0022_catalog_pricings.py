"""Catalog prices applied to the ledger

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-08

``catalog_pricings``: each catalog pricing (every metric's prices and price versions) the ledger
was rated with, newest last (billsync.core.catalog_pricing). A catalog that prices an open
period differently re-rates its lines when applied; ingest refuses to rate with prices that
are no longer the applied ones. ``ix_billing_periods_start_account_id``: the periods such a
change re-prices, found by their start.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "catalog_pricings",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("document", JSON_DOCUMENT, nullable=False),
        sa.Column("previous_id", BIG_ID, nullable=True),
        sa.Column("source", sa.String(length=1000), nullable=False),
        sa.Column("applied_by", sa.String(length=100), nullable=False),
        sa.Column("applied_at", UTC_DATETIME, nullable=False),
        sa.Column("completed_at", UTC_DATETIME, nullable=True),
        sa.Column("lines_re_rated", sa.Integer(), server_default="0", nullable=False),
        sa.Column("accounts_re_rated", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_pricings")),
    )
    # The periods a pricing change re-prices, by start, and a page of their accounts.
    op.create_index(
        "ix_billing_periods_start_account_id", "billing_periods", ["start", "account_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_billing_periods_start_account_id", table_name="billing_periods")
    op.drop_table("catalog_pricings")
