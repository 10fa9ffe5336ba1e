"""sync leases, job leases and shared budget

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# Types are spelled out here, not imported from the models, so this migration never changes.
UTC_DATETIME = sa.DateTime(timezone=True)

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("account_sync", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_owner", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("lease_expires_at", UTC_DATETIME, nullable=True))
        batch_op.add_column(
            sa.Column("lease_generation", sa.BigInteger(), server_default="0", nullable=False)
        )
    op.create_table(
        "rate_budgets",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("full_at", sa.Float(), nullable=False),
        sa.Column("penalized_until", sa.Float(), nullable=False),
        sa.Column("granted", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_rate_budgets")),
    )
    op.create_table(
        "job_leases",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=True),
        sa.Column("expires_at", UTC_DATETIME, nullable=True),
        sa.Column("generation", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_job_leases")),
    )


def downgrade() -> None:
    op.drop_table("job_leases")
    op.drop_table("rate_budgets")
    with op.batch_alter_table("account_sync", schema=None) as batch_op:
        batch_op.drop_column("lease_generation")
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("lease_owner")
