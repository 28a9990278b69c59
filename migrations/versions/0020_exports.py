"""exports: the ledger of events sent to billing systems by `observer export`

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "exports",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("identifier", sa.Text(), nullable=False),
        sa.Column("customer", sa.Text(), nullable=False),
        sa.Column("customer_value", sa.Text(), nullable=False),
        sa.Column("agent", sa.Text(), nullable=False),
        sa.Column("period_start", ts, nullable=False),
        sa.Column("period_end", ts, nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("quantity", sa.Text(), nullable=False),
        sa.Column("event_time", ts, nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("answered_at", ts, nullable=True),
        sa.CheckConstraint(
            "state IN ('pending', 'acknowledged', 'refused')", name=op.f("ck_exports_state")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exports")),
        sa.UniqueConstraint("target", "identifier", name=op.f("uq_exports_target_identifier")),
    )
    op.create_index("ix_exports_target_state", "exports", ["target", "state"])
    op.create_index("ix_exports_target_period_start", "exports", ["target", "period_start"])


def downgrade() -> None:
    op.drop_index("ix_exports_target_period_start", table_name="exports")
    op.drop_index("ix_exports_target_state", table_name="exports")
    op.drop_table("exports")
