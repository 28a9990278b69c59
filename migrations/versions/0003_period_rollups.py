"""period_rollups table; indexes for usage on sessions

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN = sa.text("left_at IS NULL")


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "period_rollups",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("period_start", ts, nullable=False),
        sa.Column("period_end", ts, nullable=False),
        sa.Column("group_kind", sa.Text(), nullable=False),
        sa.Column("group_key", sa.Text(), nullable=False),
        sa.Column("sessions", sa.BigInteger(), nullable=False),
        sa.Column("duration_ms", sa.BigInteger(), nullable=False),
        sa.Column("billable_minutes", sa.BigInteger(), nullable=False),
        sa.Column("finalized_at", ts, nullable=True),
        sa.Column("computed_at", ts, nullable=False),
        sa.CheckConstraint(
            "group_kind IN ('agent', 'room', 'total')", name=op.f("ck_period_rollups_group_kind")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_period_rollups")),
        sa.UniqueConstraint(
            "period_start",
            "period_end",
            "group_kind",
            "group_key",
            name=op.f("uq_period_rollups_period_start_period_end_group_kind_group_key"),
        ),
    )
    # `observer usage` reads no further back than the longest closed session or the oldest
    # open one: these find both without reading the table.
    op.create_index("ix_sessions_duration_ms", "sessions", ["duration_ms"])
    op.create_index(
        "ix_sessions_open_joined_at",
        "sessions",
        ["joined_at"],
        sqlite_where=OPEN,
        postgresql_where=OPEN,
    )


def downgrade() -> None:
    op.drop_index("ix_sessions_open_joined_at", table_name="sessions")
    op.drop_index("ix_sessions_duration_ms", table_name="sessions")
    op.drop_table("period_rollups")
