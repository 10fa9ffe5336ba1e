"""usage_events partitioned by month on PostgreSQL; usage_event_ids keeps ids unique

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26

On PostgreSQL, ``usage_events`` becomes a table partitioned by RANGE of ``period_start`` (the
period the usage happened in, so one billing period's events share a partition), with one
partition per calendar month — from the oldest stored event, or two months back, to three
months ahead — and a DEFAULT partition that catches any month without one. The rows are moved
over in this transaction, and the downgrade moves them back into a plain table.

PostgreSQL only enforces uniqueness within a partition, so the primary key becomes
(id, period_start) — on SQLite too, for one schema — and the new ``usage_event_ids`` table
(id → period_start) is what keeps an event id unique across every partition. It is filled here
from the stored events.
"""

from collections.abc import Sequence
from datetime import date

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# Types are spelled out here, not imported from the models, so this migration never changes.
UTC_DATETIME = sa.DateTime(timezone=True)
EXACT_DECIMAL = sa.Text().with_variant(sa.Numeric(), "postgresql")
JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONTHS_BACK = 2  # the default 45-day usage horizon reaches into the period before last
MONTHS_AHEAD = 3
COLUMNS = (
    "id, account_id, metric, quantity, occurred_at, dimensions, period_start, line_id, received_at"
)


def _event_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("account_id", sa.String(length=255), nullable=False),
        sa.Column("metric", sa.String(length=100), nullable=False),
        sa.Column("quantity", EXACT_DECIMAL, nullable=False),
        sa.Column("occurred_at", UTC_DATETIME, nullable=False),
        sa.Column("dimensions", JSON_DOCUMENT, nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("line_id", BIG_ID, nullable=False),
        sa.Column("received_at", UTC_DATETIME, nullable=False),
    ]


def _month_index(day: date) -> int:
    return day.year * 12 + day.month - 1


def _month(index: int) -> date:
    return date(index // 12, index % 12 + 1, 1)


def upgrade() -> None:
    op.create_table(
        "usage_event_ids",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_event_ids")),
        sqlite_with_rowid=False,
    )
    if op.get_bind().dialect.name == "postgresql":
        _partition_usage_events()
    else:
        with op.batch_alter_table("usage_events", recreate="always") as batch_op:
            batch_op.drop_constraint("pk_usage_events", type_="primary")
            batch_op.create_primary_key("pk_usage_events", ["id", "period_start"])
    op.execute(
        "INSERT INTO usage_event_ids (id, period_start) SELECT id, period_start FROM usage_events"
    )


def _partition_usage_events() -> None:
    bind = op.get_bind()
    op.execute("ALTER TABLE usage_events RENAME TO usage_events_unpartitioned")
    op.execute(
        "ALTER TABLE usage_events_unpartitioned "
        "RENAME CONSTRAINT pk_usage_events TO pk_usage_events_unpartitioned"
    )
    op.execute("ALTER INDEX ix_usage_events_line_id RENAME TO ix_usage_events_line_id_old")
    op.create_table(
        "usage_events", *_event_columns(), postgresql_partition_by="RANGE (period_start)"
    )
    oldest, newest, today = bind.execute(
        sa.text(
            "SELECT min(period_start), max(period_start), "
            "CAST(now() AT TIME ZONE 'UTC' AS date) FROM usage_events_unpartitioned"
        )
    ).one()
    first = _month_index(today) - MONTHS_BACK
    last = _month_index(today) + MONTHS_AHEAD
    if oldest is not None:
        first = min(first, _month_index(oldest))
        last = max(last, _month_index(newest) + MONTHS_AHEAD)
    for index in range(first, last + 1):
        start, end = _month(index), _month(index + 1)
        op.execute(
            f"CREATE TABLE usage_events_{start:%Y_%m} PARTITION OF usage_events "
            f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
        )
    op.execute("CREATE TABLE usage_events_default PARTITION OF usage_events DEFAULT")
    # Load first, index after: one sorted build per partition instead of row-by-row inserts.
    op.execute(
        f"INSERT INTO usage_events ({COLUMNS}) SELECT {COLUMNS} FROM usage_events_unpartitioned"  # noqa: S608
    )
    op.create_primary_key("pk_usage_events", "usage_events", ["id", "period_start"])
    op.create_index("ix_usage_events_line_id", "usage_events", ["line_id"])
    op.drop_table("usage_events_unpartitioned")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_table("usage_events_unpartitioned", *_event_columns())
        op.execute(
            f"INSERT INTO usage_events_unpartitioned ({COLUMNS}) SELECT {COLUMNS} FROM usage_events"  # noqa: S608
        )
        op.drop_table("usage_events")  # and every partition with it
        op.rename_table("usage_events_unpartitioned", "usage_events")
        op.create_primary_key("pk_usage_events", "usage_events", ["id"])
        op.create_index("ix_usage_events_line_id", "usage_events", ["line_id"])
    else:
        with op.batch_alter_table("usage_events", recreate="always") as batch_op:
            batch_op.drop_constraint("pk_usage_events", type_="primary")
            batch_op.create_primary_key("pk_usage_events", ["id"])
    op.drop_table("usage_event_ids")
