"""agent_usage table: model usage totals per agent session

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTERS = (
    "input_tokens",
    "input_cached_tokens",
    "input_audio_tokens",
    "input_text_tokens",
    "output_tokens",
    "output_audio_tokens",
    "output_text_tokens",
    "characters",
    "audio_ms",
    "session_ms",
)


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "agent_usage",
        sa.Column("room_sid", sa.Text(), nullable=False),
        sa.Column("participant_sid", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("participant_identity", sa.Text(), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in COUNTERS),
        sa.Column("reported_at", ts, nullable=False),
        sa.Column("first_reported_at", ts, nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("went_backwards", sa.Boolean(), nullable=False),
        sa.Column("updated_at", ts, nullable=False),
        sa.CheckConstraint("kind IN ('llm', 'tts', 'stt')", name=op.f("ck_agent_usage_kind")),
        sa.PrimaryKeyConstraint(
            "room_sid", "participant_sid", "kind", "provider", "model", name=op.f("pk_agent_usage")
        ),
    )
    op.create_index("ix_agent_usage_reported_at", "agent_usage", ["reported_at"])


def downgrade() -> None:
    op.drop_index("ix_agent_usage_reported_at", table_name="agent_usage")
    op.drop_table("agent_usage")
