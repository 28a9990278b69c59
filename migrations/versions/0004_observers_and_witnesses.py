"""observers and session_witnesses tables; open sessions by room

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "observers",
        sa.Column("observer_id", sa.Text(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", ts, nullable=False),
        sa.Column("heartbeat_at", ts, nullable=False),
        sa.Column("stopping", sa.Boolean(), nullable=False),
        sa.Column("rooms", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("observer_id", name=op.f("pk_observers")),
    )
    op.create_table(
        "session_witnesses",
        sa.Column("room_sid", sa.Text(), nullable=False),
        sa.Column("participant_sid", sa.Text(), nullable=False),
        sa.Column("observer_id", sa.Text(), nullable=False),
        sa.Column("first_seen_at", ts, nullable=False),
        sa.PrimaryKeyConstraint(
            "room_sid", "participant_sid", "observer_id", name=op.f("pk_session_witnesses")
        ),
    )
    op.create_index(
        "ix_sessions_open_room_sid",
        "sessions",
        ["room_sid"],
        sqlite_where=sa.text("left_at IS NULL"),
        postgresql_where=sa.text("left_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_sessions_open_room_sid", table_name="sessions")
    op.drop_table("session_witnesses")
    op.drop_table("observers")
