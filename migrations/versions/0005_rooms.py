"""rooms table; rollups by keyed groupings (attribute:KEY, room-metadata[:KEY])

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "rooms",
        sa.Column("sid", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("metadata", sa.Text(), nullable=False),
        sa.Column("metadata_json", sa.JSON(), nullable=True),
        sa.Column("created_at", ts, nullable=True),
        sa.Column("first_seen_at", ts, nullable=False),
        sa.Column("ended_at", ts, nullable=True),
        sa.Column("end_reason", sa.Text(), nullable=True),
        sa.Column("max_agents", sa.Integer(), nullable=False),
        sa.Column("max_participants", sa.Integer(), nullable=False),
        sa.Column("updated_at", ts, nullable=False),
        sa.PrimaryKeyConstraint("sid", name=op.f("pk_rooms")),
    )
    op.create_index("ix_rooms_name", "rooms", ["name"])
    op.create_index("ix_rooms_first_seen_at", "rooms", ["first_seen_at"])
    with op.batch_alter_table("period_rollups") as batch:
        batch.drop_constraint(op.f("ck_period_rollups_group_kind"), type_="check")
        batch.create_check_constraint(
            op.f("ck_period_rollups_group_kind"),
            sa.text(
                "group_kind IN ('agent', 'room', 'total', 'room-metadata')"
                " OR group_kind LIKE 'attribute:_%'"
                " OR group_kind LIKE 'room-metadata:_%'"
            ),
        )


def downgrade() -> None:
    with op.batch_alter_table("period_rollups") as batch:
        batch.drop_constraint(op.f("ck_period_rollups_group_kind"), type_="check")
        batch.create_check_constraint(
            op.f("ck_period_rollups_group_kind"),
            sa.text("group_kind IN ('agent', 'room', 'total')"),
        )
    op.drop_index("ix_rooms_first_seen_at", table_name="rooms")
    op.drop_index("ix_rooms_name", table_name="rooms")
    op.drop_table("rooms")
