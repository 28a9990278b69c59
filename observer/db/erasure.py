"""`observer forget`'s one transaction: an identity replaced by its keyed hash wherever it is
stored, keeping every duration, count and total as it was."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import Text, case, cast, delete, or_, select, update
from sqlalchemy.orm import Session

from observer.core.retention import needles, rewrite_json, rewrite_text
from observer.db.schema import (
    AgentUsageRow,
    ExportRow,
    PeriodRollupRow,
    ReconcileComparisonRow,
    RoomRow,
    SessionRow,
    WebhookEventRow,
)
from observer.db.writes import metadata_object

# what `forget` counts, in the order it prints them
TABLES = (
    "sessions",
    "webhook_events",
    "agent_usage",
    "rooms",
    "period_rollups",
    "reconcile_comparisons",
    "exports",
)


def _like_any(column: Any, identity: str) -> Any:
    def escaped(s: str) -> str:
        return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")

    return or_(*(column.like(f"%{escaped(n)}%", escape="\\") for n in needles(identity)))


def _locked(db: Session, q: Any) -> Any:
    return q.with_for_update() if db.get_bind().dialect.name == "postgresql" else q


def forget(db: Session, identity: str, hashed: str) -> dict[str, int]:
    """Rows changed per table. Inside the caller's transaction; the first statement writes,
    so on SQLite the write lock is held from the start and what is read next cannot change
    before it is rewritten (PostgreSQL: the rows read are locked)."""
    n = dict.fromkeys(TABLES, 0)
    s = SessionRow
    changed = set(
        db.scalars(
            update(s)
            .where(s.participant_identity == identity)
            .values(
                participant_identity=hashed,
                participant_name=case((s.participant_name.is_(None), None), else_=hashed),
            )
            .returning(s.id)
        ).all()
    )
    # an attribute (or an attribute's JSON) holding the identity, on any session: a caller's
    # identity kept on the agent's session, say
    for sid, attrs in db.execute(
        _locked(db, select(s.id, s.attributes).where(_like_any(cast(s.attributes, Text), identity)))
    ).all():
        new = rewrite_json(attrs, identity, hashed)
        if new != attrs:
            db.execute(update(s).where(s.id == sid).values(attributes=new))
            changed.add(sid)
    n["sessions"] = len(changed)

    w = WebhookEventRow
    for eid, who, body in db.execute(
        _locked(
            db,
            select(w.id, w.participant_identity, w.body).where(
                or_(w.participant_identity == identity, _like_any(w.body, identity))
            ),
        )
    ).all():
        new_body = rewrite_text(body, identity, hashed)
        new_who = hashed if who == identity else who
        if new_body != body or new_who != who:
            db.execute(
                update(w).where(w.id == eid).values(participant_identity=new_who, body=new_body)
            )
            n["webhook_events"] += 1

    u = AgentUsageRow
    n["agent_usage"] = _count(
        db,
        update(u).where(u.participant_identity == identity).values(participant_identity=hashed),
    )

    r = RoomRow
    for sid, metadata in db.execute(
        _locked(db, select(r.sid, r.metadata_).where(_like_any(r.metadata_, identity)))
    ).all():
        new_meta = rewrite_text(metadata, identity, hashed)
        if new_meta != metadata:
            db.execute(
                update(r)
                .where(r.sid == sid)
                .values(metadata_=new_meta, metadata_json=metadata_object(new_meta))
            )
            n["rooms"] += 1

    n["period_rollups"] = _rollups(db, identity, hashed)

    c = ReconcileComparisonRow
    for start, end, differences in db.execute(
        _locked(
            db,
            select(c.period_start, c.period_end, c.differences).where(
                _like_any(cast(c.differences, Text), identity)
            ),
        )
    ).all():
        new_diff = rewrite_json(differences, identity, hashed)
        if new_diff != differences:
            db.execute(
                update(c)
                .where(c.period_start == start, c.period_end == end)
                .values(differences=new_diff)
            )
            n["reconcile_comparisons"] += 1

    e = ExportRow
    for column in (e.customer, e.customer_value):
        n["exports"] += _count(db, update(e).where(column == identity).values({column.key: hashed}))
    return n


def _count(db: Session, stmt: Any) -> int:
    """Rows an UPDATE changed."""
    result: Any = db.execute(stmt)
    return int(result.rowcount)


def _rollups(db: Session, identity: str, hashed: str) -> int:
    """Rollup groups keyed by the identity (an attribute's or metadata key's value) renamed;
    where the period already has a group of the hash (forgotten before, rolled up again),
    the two are added up into it, as rolling up the rewritten sessions would give."""
    p = PeriodRollupRow
    changed = 0
    rows: Sequence[PeriodRollupRow] = db.scalars(
        _locked(
            db,
            select(p).where(
                p.group_key == identity,
                or_(p.group_kind.like("attribute:%"), p.group_kind.like("room-metadata%")),
            ),
        )
    ).all()
    for row in rows:
        twin = db.scalars(
            _locked(
                db,
                select(p).where(
                    p.period_start == row.period_start,
                    p.period_end == row.period_end,
                    p.group_kind == row.group_kind,
                    p.group_key == hashed,
                ),
            )
        ).first()
        if twin is None:
            db.execute(update(p).where(p.id == row.id).values(group_key=hashed))
        else:
            cost = (
                str(Decimal(twin.cost) + Decimal(row.cost))
                if twin.cost is not None and row.cost is not None
                else None
            )
            db.execute(
                update(p)
                .where(p.id == twin.id)
                .values(
                    sessions=twin.sessions + row.sessions,
                    duration_ms=twin.duration_ms + row.duration_ms,
                    billable_minutes=twin.billable_minutes + row.billable_minutes,
                    cost=cost,
                )
            )
            db.execute(delete(p).where(p.id == row.id))
        changed += 1
    return changed


def remembers(db: Session, hashed: str) -> bool:
    """Whether rows of a forgotten identity are stored (forgotten before)."""
    q = [
        select(SessionRow.id).where(SessionRow.participant_identity == hashed).limit(1),
        select(WebhookEventRow.id).where(WebhookEventRow.participant_identity == hashed).limit(1),
        select(AgentUsageRow.room_sid).where(AgentUsageRow.participant_identity == hashed).limit(1),
    ]
    return any(db.execute(x).first() is not None for x in q)
