"""webhook_events table

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("event", sa.Text(), nullable=False),
        sa.Column("room_name", sa.Text(), nullable=True),
        sa.Column("room_sid", sa.Text(), nullable=True),
        sa.Column("participant_sid", sa.Text(), nullable=True),
        sa.Column("participant_identity", sa.Text(), nullable=True),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("received_at", ts, nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_events")),
    )
    op.create_index("ix_webhook_events_created_at", "webhook_events", ["created_at"])
    op.create_index(
        "ix_webhook_events_room_sid_participant_sid",
        "webhook_events",
        ["room_sid", "participant_sid"],
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_events_room_sid_participant_sid", table_name="webhook_events")
    op.drop_index("ix_webhook_events_created_at", table_name="webhook_events")
    op.drop_table("webhook_events")
