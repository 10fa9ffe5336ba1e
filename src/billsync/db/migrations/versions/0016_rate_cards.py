"""Accounts' negotiated prices

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07

``accounts.rate_cards``: the account's negotiated prices, each rate card from a period start on
(billsync.core.pricing); NULL: the catalog's prices.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch_op:
        batch_op.add_column(sa.Column("rate_cards", JSON_DOCUMENT, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("accounts") as batch_op:
        batch_op.drop_column("rate_cards")
