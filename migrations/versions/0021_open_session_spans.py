"""open_session_spans: an open session's spans, written as each ends

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "open_session_spans",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("room_sid", sa.Text(), nullable=False),
        sa.Column("participant_sid", sa.Text(), nullable=False),
        sa.Column("observer_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("started_at", ts, nullable=False),
        sa.Column("ended_at", ts, nullable=False),
        sa.Column("observed_from", ts, nullable=False),
        sa.CheckConstraint("kind IN ('state', 'alone')", name=op.f("ck_open_session_spans_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_open_session_spans")),
        sa.UniqueConstraint(
            "room_sid",
            "participant_sid",
            "observer_id",
            "kind",
            "started_at",
            name=op.f("uq_open_session_spans_span"),
        ),
    )


def downgrade() -> None:
    op.drop_table("open_session_spans")
