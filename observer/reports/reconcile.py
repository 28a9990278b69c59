"""The scheduled reconcile job (`observer reconcile`), run at the end of each period.

1. Settle: open sessions that no observer has confirmed present for a while, and whose
   participant the LiveKit server no longer has, are closed the way the daemon closes them
   at start-up (at `last_seen_at`, with the gap as the uncertainty).
2. Roll up: agent standing time in the period per agent name, per room and in total, under
   LiveKit's per-session minute rounding, into `period_rollups`. Rows are provisional until
   the finalize delay after the period's end has passed; a finalized period is kept as it is
   unless forced.
3. Compare: with an external statement (CSV), within a tolerance, into a report.

Everything the run writes to the database is written in one transaction, after every input
has been checked and LiveKit has answered.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import tempfile
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path

from observer import livekit_api
from observer.config import LiveKitSettings
from observer.core.times import iso, next_month
from observer.core.vocab import GROUP_KINDS, DifferenceStatus, RollupState
from observer.db.reads import StaleSession
from observer.db.rollups import Rollup, RollupTx
from observer.db.store import Store
from observer.db.usage import UsageSpec, is_group_name
from observer.reports import usage
from observer.reports.prices import PriceBook
from observer.reports.render import csv_text

STATEMENT_COLUMNS = ("group_kind", "group_key", "minutes")
REPORT_FIELDS = (
    "group_kind",
    "group_key",
    "observer_minutes",
    "statement_minutes",
    "difference_minutes",
    "status",
)
LIVEKIT_TIMEOUT_S = 10.0
LIST_ROOMS_BATCH = 100


class ReconcileError(Exception):
    """The job cannot run as asked; nothing was written. Exit code 2."""


# ---- periods --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    start: datetime  # inclusive, UTC
    end: datetime  # exclusive, UTC
    label: str


def parse_period(raw: str) -> Period:
    """`YYYY-MM` (a calendar month) or `YYYY-MM-DD` (a day), in UTC."""
    m = re.fullmatch(r"(\d{4})-(\d{2})(?:-(\d{2}))?", raw.strip())
    try:
        if m is None:
            raise ValueError
        year, month = int(m[1]), int(m[2])
        if m[3] is None:
            start = datetime(year, month, 1, tzinfo=UTC)
            end = next_month(start)
        else:
            start = datetime(year, month, int(m[3]), tzinfo=UTC)
            end = start + timedelta(days=1)
    except ValueError:
        raise ReconcileError(f"--period must be YYYY-MM or YYYY-MM-DD, got {raw!r}") from None
    return Period(start, end, raw.strip())


def period_between(start: datetime, end: datetime) -> Period:
    if start >= end:
        raise ReconcileError(f"--from {iso(start)} is not before --to {iso(end)}")
    return Period(start, end, f"{iso(start)}..{iso(end)}")


# ---- settling -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveRoom:
    sid: str
    participant_sids: frozenset[str]


def gone(stale: Iterable[StaleSession], live: Mapping[str, LiveRoom]) -> list[StaleSession]:
    """The sessions whose participant is no longer in its room (or whose room has ended,
    perhaps re-created since under the same name with a new sid)."""
    out = []
    for s in stale:
        room = live.get(s.room_name)
        if room is None or room.sid != s.room_sid or s.participant_sid not in room.participant_sids:
            out.append(s)
    return out


async def live_rooms(lk: LiveKitSettings, names: Collection[str]) -> dict[str, LiveRoom]:
    """The rooms among `names` that exist now and who is in them (ListRooms, then
    ListParticipants per room). With no names, only checks that the server answers."""
    import aiohttp
    from livekit import api

    lkapi = livekit_api.client(lk, LIVEKIT_TIMEOUT_S)
    wanted = sorted(names)
    try:
        sids: dict[str, str] = {}
        for i in range(0, max(len(wanted), 1), LIST_ROOMS_BATCH):
            batch = wanted[i : i + LIST_ROOMS_BATCH]
            resp = await lkapi.room.list_rooms(api.ListRoomsRequest(names=batch))
            sids.update({r.name: r.sid for r in resp.rooms if r.name in names})
        rooms = {}
        for name, sid in sids.items():
            if await livekit_api.room_hosted(lkapi, name) is False:
                # listed, but its node died: nobody listed in it is there any more
                continue
            who = await lkapi.room.list_participants(api.ListParticipantsRequest(room=name))
            rooms[name] = LiveRoom(sid, frozenset(p.sid for p in who.participants))
        return rooms
    except api.TwirpError as exc:
        hint = " (check LIVEKIT_API_KEY / LIVEKIT_API_SECRET)" if exc.status in (401, 403) else ""
        raise ReconcileError(
            f"livekit refused the room listing at {lkapi.http_url}: {exc.code}: {exc.message}{hint}"
        ) from None
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise ReconcileError(
            f"livekit unreachable at {', '.join(lk.urls)}: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        await lkapi.aclose()


@dataclass(frozen=True)
class SettleSummary:
    skipped: str | None = None  # why settling did not run
    stale: int = 0  # open sessions not confirmed present within the staleness threshold
    gone: int = 0  # of those, the ones whose participant LiveKit no longer has
    closed: int = 0  # rows closed (fewer if the daemon closed or saw some meanwhile)


# ---- rollups --------------------------------------------------------------------------------


def compute_rollups(
    tx: RollupTx,
    period: Period,
    now: datetime,
    keyed: Sequence[str] = (),
    prices: PriceBook | None = None,
    warn: Callable[[str], None] = lambda _m: None,
) -> list[Rollup]:
    """Agent standing time in the period per agent name, per room, per value of each
    keyed grouping (attribute:KEY, room-metadata[:KEY]) and in total.

    Open sessions count up to min(now, period end). Sessions without an agent name (or
    the key) are grouped under the key "", and a period without sessions still gets its
    total row.
    """
    total = [0, 0, 0]
    sums: dict[tuple[str, str], list[int]] = {("total", ""): total}
    by: tuple[str, ...] = ("agent", "room", *keyed)
    for kind in by:
        spec = UsageSpec(edges=(period.start, period.end), group_by=(kind,), open_until=now)
        for t in tx.usage(spec):
            targets = [sums.setdefault((kind, t.keys[0] or ""), [0, 0, 0])]
            if kind == "agent":  # every session has one agent name or none: they add up
                targets.append(total)
            for acc in targets:
                acc[0] += t.sessions
                acc[1] += t.duration_ms
                acc[2] += t.billable_minutes
    costs: dict[tuple[str, str], str | None] = {}
    if prices is not None:
        costs = _costs(tx, period, now, by, prices, warn)
    return [
        Rollup(kind, key, acc[0], acc[1], acc[2], cost=costs.get((kind, key)))
        for (kind, key), acc in sorted(sums.items())
    ]


def _costs(
    tx: RollupTx,
    period: Period,
    now: datetime,
    by: Sequence[str],
    prices: PriceBook,
    warn: Callable[[str], None],
) -> dict[tuple[str, str], str | None]:
    """Each group's cost as `observer usage --prices` gives it; the total is the sum of the
    agents' (empty if one is)."""
    out: dict[tuple[str, str], str | None] = {}
    total: Decimal | None = Decimal(0)
    for kind in by:
        q = usage.UsageQuery(period.start, period.end, now, by=(kind,), prices=prices)
        for line in usage.compute(tx, q, warn):
            cost = line.costs[-1]
            key = (kind, line.groups[0] or "")
            previous = out.get(key, "0")
            out[key] = None if cost is None or previous is None else str(Decimal(previous) + cost)
            if kind == "agent":
                total = None if total is None or cost is None else total + cost
    out[("total", "")] = None if total is None else str(total)
    return out


@dataclass(frozen=True)
class Change:
    group_kind: str
    group_key: str
    old: Rollup | None
    new: Rollup | None


@dataclass(frozen=True)
class RollupPlan:
    state: RollupState
    rows: tuple[Rollup, ...]  # the period's rows once the plan is written
    write: tuple[Rollup, ...]  # rows to insert or replace
    drop: tuple[tuple[str, str], ...]  # groups to delete
    changes: tuple[Change, ...]  # groups whose stored numbers differ from the fresh ones


def _numbers(r: Rollup | None) -> tuple[int, int, int, str | None] | None:
    return None if r is None else (r.sessions, r.duration_ms, r.billable_minutes, r.cost)


def plan_rollups(
    existing: Sequence[Rollup],
    fresh: Sequence[Rollup],
    *,
    finalize: bool,
    force: bool,
    now: datetime,
) -> RollupPlan:
    """What to write for a period, given its stored rows and freshly computed ones.

    A finalized period stays as it is unless forced (and then only if a number changed).
    Rows whose numbers and state are unchanged are not rewritten, so running twice leaves
    identical rows; `computed_at` is when a row's numbers were last written.
    """
    # A keyed grouping asked for the first time is new rows, not a change: it is added
    # even to a finalized period. One not asked for this time is left as stored.
    fresh_kinds = {r.group_kind for r in fresh}
    existing = [r for r in existing if r.group_kind in fresh_kinds]
    stored_kinds = {r.group_kind for r in existing}
    added = [r for r in fresh if r.group_kind not in stored_kinds]
    fresh = [r for r in fresh if r.group_kind in stored_kinds] if existing else fresh
    old = {(r.group_kind, r.group_key): r for r in existing}
    new = {(r.group_kind, r.group_key): r for r in fresh}
    changes = tuple(
        Change(k[0], k[1], old.get(k), new.get(k))
        for k in sorted(old.keys() | new.keys())
        if _numbers(old.get(k)) != _numbers(new.get(k))
    )
    was_final = any(r.finalized_at for r in existing)
    if was_final and not (force and changes):
        final_at = next(r.finalized_at for r in existing if r.finalized_at)
        extra = tuple(replace(r, finalized_at=final_at, computed_at=now) for r in added)
        return RollupPlan("final", (*existing, *extra), extra, (), changes)
    if existing:
        fresh = [*fresh, *added]
        new = {(r.group_kind, r.group_key): r for r in fresh}
    state: RollupState
    if was_final:
        state, finalized_at = "forced", now
    elif finalize:
        state, finalized_at = "finalized", now
    else:
        state, finalized_at = "provisional", None
    rows, write = [], []
    for k, r in sorted(new.items()):
        prev = old.get(k)
        same = prev is not None and _numbers(prev) == _numbers(r)
        computed_at = prev.computed_at if prev is not None and same else now
        row = replace(r, finalized_at=finalized_at, computed_at=computed_at)
        rows.append(row)
        if row != prev:
            write.append(row)
    drop = tuple(k for k in sorted(old) if k not in new)
    return RollupPlan(state, tuple(rows), tuple(write), drop, changes)


# ---- the statement --------------------------------------------------------------------------


def read_statement(path: Path) -> dict[tuple[str, str], Decimal]:
    """Minutes per (group_kind, group_key) from a CSV statement.

    Columns group_kind (agent, room or total), group_key, minutes. A header row naming them
    may come first (then in any order, extra columns ignored); without one they are taken
    in that order. Errors name the file and line.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ReconcileError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ReconcileError(f"cannot read statement {path}: {exc.strerror}") from None
    out: dict[tuple[str, str], Decimal] = {}
    first_line: dict[tuple[str, str], int] = {}
    columns: tuple[int, ...] | None = None
    reader = csv.reader(io.StringIO(text))
    try:
        for cells in reader:
            line = reader.line_num
            if not any(c.strip() for c in cells):
                continue
            if columns is None:
                names = [c.strip().lower() for c in cells]
                if "group_kind" in names:
                    missing = [c for c in STATEMENT_COLUMNS if c not in names]
                    if missing:
                        raise ReconcileError(
                            f"{path}:{line}: header has no column {', '.join(missing)}"
                            f" (expected {','.join(STATEMENT_COLUMNS)})"
                        )
                    columns = tuple(names.index(c) for c in STATEMENT_COLUMNS)
                    continue
                columns = (0, 1, 2)
            if len(cells) <= max(columns):
                raise ReconcileError(
                    f"{path}:{line}: expected the columns {','.join(STATEMENT_COLUMNS)},"
                    f" found {len(cells)} value(s)"
                )
            raw_kind, key, raw = (cells[i].strip() for i in columns)
            kind = _group_kind(raw_kind)
            if kind is None:
                raise ReconcileError(
                    f"{path}:{line}: group_kind must be agent, room, total, attribute:KEY,"
                    f" room-metadata or room-metadata:KEY, got {raw_kind!r}"
                )
            try:
                minutes = Decimal(raw)
            except InvalidOperation:
                minutes = Decimal("NaN")
            if not minutes.is_finite() or minutes < 0:
                raise ReconcileError(
                    f"{path}:{line}: minutes must be a number of at least 0, got {raw!r}"
                )
            if (kind, key) in out:
                raise ReconcileError(
                    f"{path}:{line}: a second row for {kind} {key!r}"
                    f" (the first is on line {first_line[kind, key]})"
                )
            out[kind, key] = minutes
            first_line[kind, key] = line
    except csv.Error as exc:
        raise ReconcileError(f"{path}:{reader.line_num}: {exc}") from None
    return out


@dataclass(frozen=True)
class Difference:
    group_kind: str
    group_key: str
    observer_minutes: int | None
    statement_minutes: Decimal | None
    status: DifferenceStatus

    @property
    def difference_minutes(self) -> Decimal:
        return Decimal(self.observer_minutes or 0) - (self.statement_minutes or 0)


def _group_kind(text: str) -> str | None:
    """A statement's group_kind: the fixed ones in any case; a keyed one keeps its KEY."""
    for kind in GROUP_KINDS:
        if text.lower() == kind:
            return kind
    prefix, sep, key = text.partition(":")
    keyed = prefix.lower() + sep + key
    return keyed if is_group_name(keyed) else None


def keyed_groupings(statement: Mapping[tuple[str, str], Decimal]) -> tuple[str, ...]:
    """The keyed groupings a statement names, to roll up as well."""
    return tuple(sorted({kind for kind, _ in statement if kind not in GROUP_KINDS}))


def compare(
    rows: Iterable[Rollup], statement: Mapping[tuple[str, str], Decimal], tolerance: Decimal
) -> tuple[int, list[Difference]]:
    """Billable minutes against the statement: (groups compared, differences).

    Only the group kinds the statement has are compared (agent for an empty statement);
    a group missing on one side counts as 0 minutes there, and is reported when that is
    more than `tolerance` minutes off.
    """
    kinds = {kind for kind, _ in statement} or {"agent"}
    ours = {(r.group_kind, r.group_key): r.billable_minutes for r in rows if r.group_kind in kinds}
    keys = sorted(ours.keys() | statement.keys())
    diffs = []
    for key in keys:
        observer, stated = ours.get(key), statement.get(key)
        status: DifferenceStatus
        if stated is None:
            status = "missing_in_statement"
        elif observer is None:
            status = "missing_in_observer"
        else:
            status = "minutes_differ"
        d = Difference(key[0], key[1], observer, stated, status)
        if abs(d.difference_minutes) > tolerance:
            diffs.append(d)
    return len(keys), diffs


def report_format(path: Path, fmt: str | None) -> str:
    """The report's format: as given, or from the file's extension."""
    fmt = fmt or {".csv": "csv", ".json": "json"}.get(path.suffix.lower())
    if fmt is None:
        raise ReconcileError(
            f"cannot tell the report format from {path.name!r}; name it .csv or .json,"
            " or pass --report-format"
        )
    if not path.parent.is_dir():
        raise ReconcileError(f"report directory does not exist: {path.parent}")
    return fmt


def write_report(
    path: Path, fmt: str, period: Period, tolerance: Decimal, diffs: Sequence[Difference]
) -> None:
    """Write the differences (possibly none) as CSV or JSON; replaces the file whole."""
    records = [
        {
            "group_kind": d.group_kind,
            "group_key": d.group_key,
            "observer_minutes": d.observer_minutes,
            "statement_minutes": _number(d.statement_minutes),
            "difference_minutes": _number(d.difference_minutes),
            "status": d.status,
        }
        for d in diffs
    ]
    if fmt == "json":
        body = (
            json.dumps(
                {
                    "period_start": iso(period.start),
                    "period_end": iso(period.end),
                    "tolerance_minutes": _number(tolerance),
                    "differences": records,
                },
                indent=2,
            )
            + "\n"
        )
    else:
        body = csv_text(REPORT_FIELDS, ([rec[f] for f in REPORT_FIELDS] for rec in records))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(body)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _number(d: Decimal | None) -> int | float | None:
    if d is None:
        return None
    return int(d) if d == d.to_integral_value() else float(d)


# ---- the job --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    period: Period
    now: datetime  # open sessions count up to here; decides whether the period is final
    settle: bool = True
    force: bool = False
    stale_s: float = 60.0
    finalize_delay_s: float = 3600.0
    statement: Path | None = None
    tolerance_minutes: Decimal = Decimal(0)
    report: Path | None = None
    report_format: str | None = None
    by: tuple[str, ...] = ()  # keyed groupings rolled up as well (attribute:KEY, ...)
    prices: PriceBook | None = None  # cost per group as well; without, stored costs stay
    warn: Callable[[str], None] = lambda _m: None  # told of each thing without a price

    @property
    def finalize_after(self) -> datetime:
        return self.period.end + timedelta(seconds=self.finalize_delay_s)


@dataclass(frozen=True)
class Outcome:
    job: Job
    settle: SettleSummary
    plan: RollupPlan
    compared: int = 0
    differences: tuple[Difference, ...] | None = None  # None: no statement given

    @property
    def exit_code(self) -> int:
        """0 clean; 1 when the statement differs or a finalized period no longer matches."""
        drift = self.plan.state == "final" and bool(self.plan.changes)
        return 1 if self.differences or drift else 0


def run(store: Store, lk: LiveKitSettings | None, job: Job) -> Outcome:
    """Run the job; raises ReconcileError (or a database error) with nothing written."""
    statement = read_statement(job.statement) if job.statement else None
    fmt = report_format(job.report, job.report_format) if job.report else None
    if not store.schema_is_current():
        raise ReconcileError("the database schema is not current; run `observer migrate`")

    # Settling compares with what LiveKit has right now, so it uses the real clock, never
    # --now: a time in the future would close sessions a daemon is still watching.
    settled_at = datetime.now(UTC)
    to_close: list[StaleSession] = []
    if not job.settle:
        summary = SettleSummary(skipped="--no-settle")
    elif lk is None:
        summary = SettleSummary(skipped="LIVEKIT_URL and its keys are not set")
    else:
        stale = store.stale_open_sessions(settled_at - timedelta(seconds=job.stale_s))
        live = asyncio.run(live_rooms(lk, {s.room_name for s in stale}))
        to_close = gone(stale, live)
        summary = SettleSummary(stale=len(stale), gone=len(to_close))

    p = job.period
    with store.rollup_transaction() as tx:
        if not tx.try_lock():
            raise ReconcileError(
                "another `observer reconcile` is running on this database; nothing was written"
            )
        closed = tx.settle(to_close, settled_at)
        existing = tx.rollups(p.start, p.end)
        keyed = tuple(dict.fromkeys((*job.by, *(keyed_groupings(statement or {})))))
        fresh = compute_rollups(tx, p, job.now, keyed, job.prices, job.warn)
        if job.prices is None:  # a run without prices leaves the stored costs as they are
            stored = {(r.group_kind, r.group_key): r.cost for r in existing}
            fresh = [replace(r, cost=stored.get((r.group_kind, r.group_key))) for r in fresh]
        plan = plan_rollups(
            existing, fresh, finalize=job.now >= job.finalize_after, force=job.force, now=job.now
        )
        tx.write_rollups(p.start, p.end, plan.write, plan.drop)
        if statement is not None and job.statement is not None:
            compared, diffs = compare(plan.rows, statement, job.tolerance_minutes)
            tx.write_comparison(
                p.start,
                p.end,
                compared_at=settled_at,
                statement=job.statement.name,
                tolerance_minutes=str(job.tolerance_minutes),
                groups_compared=compared,
                differences=[_difference_dict(d) for d in diffs],
            )
    summary = replace(summary, closed=closed)

    if statement is None:
        return Outcome(job, summary, plan)
    if job.report and fmt:
        write_report(job.report, fmt, p, job.tolerance_minutes, diffs)
    return Outcome(job, summary, plan, compared, tuple(diffs))


def _difference_dict(d: Difference) -> dict[str, object]:
    return {
        "group_kind": d.group_kind,
        "group_key": d.group_key,
        "observer_minutes": d.observer_minutes,
        "statement_minutes": None if d.statement_minutes is None else str(d.statement_minutes),
        "status": d.status,
    }


def render(o: Outcome) -> str:
    """A short summary for stdout."""
    job, plan = o.job, o.plan
    out = [f"reconcile {job.period.label}: [{iso(job.period.start)}, {iso(job.period.end)})"]
    s = o.settle
    if s.skipped:
        out.append(f"settle: skipped ({s.skipped})")
    else:
        out.append(
            f"settle: {s.stale} open session(s) not seen for {job.stale_s:g} s;"
            f" {s.gone} gone from LiveKit, {s.closed} closed as reconciled"
        )
    total = next((r for r in plan.rows if r.group_kind == "total"), None)
    agents = sum(1 for r in plan.rows if r.group_kind == "agent")
    rooms = sum(1 for r in plan.rows if r.group_kind == "room")
    numbers = (
        f"{agents} agent(s), {rooms} room(s), {total.sessions if total else 0} session(s),"
        f" {total.billable_minutes if total else 0} billable minute(s)"
    )
    if total is not None and job.prices is not None:
        numbers += f", cost {total.cost if total.cost is not None else 'unknown (see warnings)'}"
    if plan.state == "provisional":
        out.append(f"rollup: provisional until {iso(job.finalize_after)}; {numbers}")
    elif plan.state == "finalized":
        out.append(f"rollup: finalized; {numbers}")
    elif plan.state == "forced":
        out.append(f"rollup: rewritten (--force), {len(plan.changes)} group(s) changed; {numbers}")
    elif plan.changes:
        since = iso(min(r.finalized_at for r in plan.rows if r.finalized_at))
        out.append(
            f"rollup: final since {since}, but the sessions now give other numbers for"
            f" {len(plan.changes)} group(s); run with --force to rewrite; {numbers}"
        )
    else:
        since = iso(min(r.finalized_at for r in plan.rows if r.finalized_at))
        out.append(f"rollup: final since {since}, unchanged; {numbers}")
    if plan.state in ("forced", "final"):
        out += [f"  {_describe_change(c)}" for c in plan.changes]
    if o.differences is not None:
        out.append(
            f"statement: {o.compared} group(s) compared, {len(o.differences)} difference(s)"
            f" beyond {_number(job.tolerance_minutes)} minute(s)"
        )
        out += [
            f"  {_group(d.group_kind, d.group_key)}: observer {_or_dash(d.observer_minutes)},"
            f" statement {_or_dash(_number(d.statement_minutes))} ({d.status})"
            for d in o.differences
        ]
        if job.report:
            out.append(f"report: {job.report}")
    return "\n".join(out) + "\n"


def _describe_change(c: Change) -> str:
    def pair(field: str) -> str:
        old, new = (getattr(r, field) if r else None for r in (c.old, c.new))
        return f"{_or_dash(old)} -> {_or_dash(new)}"

    return (
        f"{_group(c.group_kind, c.group_key)}: billable minutes {pair('billable_minutes')},"
        f" sessions {pair('sessions')}, ms {pair('duration_ms')}"
    )


def _group(kind: str, key: str) -> str:
    if kind == "total":
        return kind
    return f"{kind} {key!r}" if key else f"{kind} (no name)"


def _or_dash(v: object) -> str:
    return "-" if v is None else str(v)
