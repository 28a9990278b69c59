"""stuck_alerts: one stuck-agent alert per occurrence, whichever observer raises it

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "stuck_alerts",
        sa.Column("room_sid", sa.Text(), nullable=False),
        sa.Column("room_name", sa.Text(), nullable=False),
        sa.Column("alone_since", ts, nullable=False),
        sa.Column("alerted_at", ts, nullable=False),
        sa.Column("observer_id", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("room_sid", name=op.f("pk_stuck_alerts")),
    )


def downgrade() -> None:
    op.drop_table("stuck_alerts")
