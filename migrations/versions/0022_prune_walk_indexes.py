"""sessions (joined_at, id) and webhook_events (created_at, id) indexes: prune reads old rows only

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # each new index serves every query the one it replaces served (the same first column)
    op.create_index("ix_sessions_joined_at_id", "sessions", ["joined_at", "id"])
    op.drop_index("ix_sessions_joined_at", table_name="sessions")
    op.create_index("ix_webhook_events_created_at_id", "webhook_events", ["created_at", "id"])
    op.drop_index("ix_webhook_events_created_at", table_name="webhook_events")


def downgrade() -> None:
    op.create_index("ix_webhook_events_created_at", "webhook_events", ["created_at"])
    op.drop_index("ix_webhook_events_created_at_id", table_name="webhook_events")
    op.create_index("ix_sessions_joined_at", "sessions", ["joined_at"])
    op.drop_index("ix_sessions_joined_at_id", table_name="sessions")
