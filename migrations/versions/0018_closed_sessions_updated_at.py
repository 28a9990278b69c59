"""sessions: closed rows by their last change, for the page to tell whether its sums still hold

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_sessions_closed_updated_at",
        "sessions",
        ["updated_at"],
        sqlite_where=sa.text("left_at IS NOT NULL"),
        postgresql_where=sa.text("left_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_sessions_closed_updated_at", table_name="sessions")
