"""sessions table

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN = sa.text("left_at IS NULL")


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "sessions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("room_name", sa.Text(), nullable=False),
        sa.Column("room_sid", sa.Text(), nullable=False),
        sa.Column("participant_sid", sa.Text(), nullable=False),
        sa.Column("participant_identity", sa.Text(), nullable=False),
        sa.Column("participant_name", sa.Text(), nullable=True),
        sa.Column("participant_kind", sa.Text(), nullable=False),
        sa.Column("agent_name", sa.Text(), nullable=True),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("joined_at", ts, nullable=False),
        sa.Column("left_at", ts, nullable=True),
        sa.Column("duration_ms", sa.BigInteger(), nullable=True),
        sa.Column("disconnect_reason", sa.Text(), nullable=True),
        sa.Column("end_source", sa.Text(), nullable=True),
        sa.Column("end_uncertainty_ms", sa.BigInteger(), nullable=True),
        sa.Column("last_seen_at", ts, nullable=False),
        sa.Column("observer_id", sa.Text(), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("updated_at", ts, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
        sa.UniqueConstraint(
            "room_sid", "participant_sid", name=op.f("uq_sessions_room_sid_participant_sid")
        ),
    )
    op.create_index("ix_sessions_agent_name_joined_at", "sessions", ["agent_name", "joined_at"])
    op.create_index("ix_sessions_joined_at", "sessions", ["joined_at"])
    op.create_index(
        "ix_sessions_open",
        "sessions",
        ["observer_id", "room_sid"],
        sqlite_where=OPEN,
        postgresql_where=OPEN,
    )
    op.create_index(
        "ix_sessions_participant_identity_joined_at",
        "sessions",
        ["participant_identity", "joined_at"],
    )
    op.create_index("ix_sessions_room_name_joined_at", "sessions", ["room_name", "joined_at"])


def downgrade() -> None:
    op.drop_index("ix_sessions_room_name_joined_at", table_name="sessions")
    op.drop_index("ix_sessions_participant_identity_joined_at", table_name="sessions")
    op.drop_index("ix_sessions_open", table_name="sessions")
    op.drop_index("ix_sessions_joined_at", table_name="sessions")
    op.drop_index("ix_sessions_agent_name_joined_at", table_name="sessions")
    op.drop_table("sessions")
