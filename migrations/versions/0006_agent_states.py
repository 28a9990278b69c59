"""time in each agent state and alone, per session; session_spans

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MS_COLUMNS = (
    "state_initializing_ms",
    "state_idle_ms",
    "state_listening_ms",
    "state_thinking_ms",
    "state_speaking_ms",
    "state_other_ms",
    "state_unknown_ms",
    "alone_ms",
)


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("observed_from", ts, nullable=True))
        for name in MS_COLUMNS:
            batch.add_column(sa.Column(name, sa.BigInteger(), nullable=True))
    op.create_table(
        "session_spans",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("room_sid", sa.Text(), nullable=False),
        sa.Column("participant_sid", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("started_at", ts, nullable=False),
        sa.Column("ended_at", ts, nullable=False),
        sa.CheckConstraint("kind IN ('state', 'alone')", name=op.f("ck_session_spans_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_session_spans")),
    )
    op.create_index(
        "ix_session_spans_room_sid_participant_sid",
        "session_spans",
        ["room_sid", "participant_sid"],
    )


def downgrade() -> None:
    op.drop_index("ix_session_spans_room_sid_participant_sid", table_name="session_spans")
    op.drop_table("session_spans")
    with op.batch_alter_table("sessions") as batch:
        for name in reversed(MS_COLUMNS):
            batch.drop_column(name)
        batch.drop_column("observed_from")
