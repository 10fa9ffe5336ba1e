"""The invoice mirror keeps what Stripe adds besides the lines

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

A customer's coupon (``discount``: total = subtotal − discount) and credit balance applied at
finalization (``starting_balance``): the customer's page shows them as lines of the bill, and
verify explains a total that differs from the ledger's by them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("invoice_mirror") as batch_op:
        batch_op.add_column(sa.Column("subtotal", sa.BigInteger(), nullable=True))
        batch_op.add_column(
            sa.Column("discount", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("starting_balance", sa.BigInteger(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("invoice_mirror") as batch_op:
        batch_op.drop_column("starting_balance")
        batch_op.drop_column("discount")
        batch_op.drop_column("subtotal")
