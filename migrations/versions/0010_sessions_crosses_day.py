"""sessions.crosses_day: closed sessions holding a UTC midnight, indexed

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(
            sa.Column("crosses_day", sa.Boolean(), server_default=sa.text("false"), nullable=False)
        )
    # rows closed before: the day of the last microsecond differs from the day of the join
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "UPDATE sessions SET crosses_day = true WHERE left_at IS NOT NULL AND"
            " (left_at - interval '1 microsecond') AT TIME ZONE 'UTC' >= "
            " date_trunc('day', joined_at AT TIME ZONE 'UTC') + interval '1 day'"
        )
    else:  # stored as 'YYYY-MM-DD HH:MM:SS.ffffff' UTC text
        op.execute(
            "UPDATE sessions SET crosses_day = 1 WHERE left_at IS NOT NULL AND"
            " substr(left_at, 1, 10) > substr(joined_at, 1, 10) AND"
            " NOT (substr(left_at, 12) = '00:00:00.000000'"
            "      AND date(substr(left_at, 1, 10), '-1 day') = substr(joined_at, 1, 10))"
        )
    op.create_index(
        "ix_sessions_crosses_day_joined_at",
        "sessions",
        ["joined_at"],
        sqlite_where=sa.text("crosses_day"),
        postgresql_where=sa.text("crosses_day"),
    )


def downgrade() -> None:
    op.drop_index("ix_sessions_crosses_day_joined_at", table_name="sessions")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("crosses_day")
