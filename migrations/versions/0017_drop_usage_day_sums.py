"""drop usage_day_sums, usage_day_marks, usage_day_versions: the Minutes view sums its days

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_usage_day_sums_rollup_day", table_name="usage_day_sums")
    op.drop_table("usage_day_sums")
    op.drop_table("usage_day_marks")
    op.drop_table("usage_day_versions")


def downgrade() -> None:
    # The tables of 0014, empty: they were a cache, filled again as the page computes
    big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "usage_day_versions",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_usage_day_versions")),
    )
    op.create_table(
        "usage_day_marks",
        sa.Column("rollup", sa.Text(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("rollup", "day", name=op.f("pk_usage_day_marks")),
    )
    op.create_table(
        "usage_day_sums",
        sa.Column("id", big_id, autoincrement=True, nullable=False),
        sa.Column("rollup", sa.Text(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("key", sa.Text(), nullable=True),
        sa.Column("sessions", sa.BigInteger(), nullable=False),
        sa.Column("duration_ms", sa.BigInteger(), nullable=False),
        sa.Column("billable_minutes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_day_sums")),
    )
    op.create_index("ix_usage_day_sums_rollup_day", "usage_day_sums", ["rollup", "day"])
