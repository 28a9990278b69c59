"""rooms: who is in them now; reconcile_comparisons: the last comparison per period

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    with op.batch_alter_table("rooms") as batch:
        batch.add_column(sa.Column("agents_now", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("company_now", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("alone_since", ts, nullable=True))
    op.create_table(
        "reconcile_comparisons",
        sa.Column("period_start", ts, nullable=False),
        sa.Column("period_end", ts, nullable=False),
        sa.Column("compared_at", ts, nullable=False),
        sa.Column("statement", sa.Text(), nullable=False),
        sa.Column("tolerance_minutes", sa.Text(), nullable=False),
        sa.Column("groups_compared", sa.Integer(), nullable=False),
        sa.Column("differences", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint(
            "period_start", "period_end", name=op.f("pk_reconcile_comparisons")
        ),
    )


def downgrade() -> None:
    op.drop_table("reconcile_comparisons")
    with op.batch_alter_table("rooms") as batch:
        batch.drop_column("alone_since")
        batch.drop_column("company_now")
        batch.drop_column("agents_now")
