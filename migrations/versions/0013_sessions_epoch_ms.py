"""sessions.joined_ms and left_ms: the times as whole epoch milliseconds, generated

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (("joined_ms", "joined_at"), ("left_ms", "left_at"))


def epoch_ms(dialect: str, column: str) -> str:
    """Whole milliseconds since the epoch, truncated, exact; NULL for NULL."""
    if dialect == "postgresql":
        # timestamptz minus timestamptz is immutable (date_part on a timestamptz is not)
        return (
            f"floor(extract(epoch from ({column} - timestamptz '1970-01-01 00:00:00+00'))"
            " * 1000)::bigint"
        )
    # stored as 'YYYY-MM-DD HH:MM:SS.ffffff' UTC text; julianday() would round the
    # microseconds, so they are cut off first, and round() restores the exact value
    return f"CAST(round((julianday(substr({column}, 1, 23)) - 2440587.5) * 86400000.0) AS INTEGER)"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    # Stored: SQLite adds a stored generated column only to a new table, so it copies
    # the table (indexes included) once.
    with op.batch_alter_table(
        "sessions", recreate="always" if dialect == "sqlite" else "auto"
    ) as batch:
        for name, source in COLUMNS:
            batch.add_column(
                sa.Column(
                    name,
                    sa.BigInteger(),
                    sa.Computed(sa.text(epoch_ms(dialect, source)), persisted=True),
                    nullable=True,
                )
            )


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        for name, _ in COLUMNS:
            batch.drop_column(name)
