"""sessions.participant_kind_details and join_precision_ms: LiveKit's kind details as they
came, and whether the join time was given in milliseconds or whole seconds

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows written before this revision hold 1: the releases the observer ran against gave
    # milliseconds. A row is opened without either column unless it says something (a kind
    # detail, a join time in whole seconds or none at all), as the writer opened rows before.
    op.add_column("sessions", sa.Column("participant_kind_details", sa.Text(), nullable=True))
    op.add_column(
        "sessions", sa.Column("join_precision_ms", sa.Integer(), nullable=True, server_default="1")
    )


def downgrade() -> None:
    # plain ALTERs: SQLite (3.35+) drops a plain column in place, where a batch copy would
    # trip over the table's generated columns
    op.execute("ALTER TABLE sessions DROP COLUMN join_precision_ms")
    op.execute("ALTER TABLE sessions DROP COLUMN participant_kind_details")
