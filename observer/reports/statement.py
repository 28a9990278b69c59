"""The statement, the third step of `observer reconcile`: an external CSV of minutes per
group, compared with the rollups within a tolerance, and the report of the differences."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from observer.core.times import iso
from observer.core.vocab import GROUP_KINDS, DifferenceStatus
from observer.db.rollups import Rollup
from observer.db.usage import is_group_name
from observer.errors import CommandError
from observer.reports.periods import Period
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


def read_statement(path: Path) -> dict[tuple[str, str], Decimal]:
    """Minutes per (group_kind, group_key) from a CSV statement.

    Columns group_kind (agent, room or total), group_key, minutes. A header row naming them
    may come first (then in any order, extra columns ignored); without one they are taken
    in that order. Errors name the file and line.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise CommandError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise CommandError(f"cannot read statement {path}: {exc.strerror}") from None
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
                        raise CommandError(
                            f"{path}:{line}: header has no column {', '.join(missing)}"
                            f" (expected {','.join(STATEMENT_COLUMNS)})"
                        )
                    columns = tuple(names.index(c) for c in STATEMENT_COLUMNS)
                    continue
                columns = (0, 1, 2)
            if len(cells) <= max(columns):
                raise CommandError(
                    f"{path}:{line}: expected the columns {','.join(STATEMENT_COLUMNS)},"
                    f" found {len(cells)} value(s)"
                )
            raw_kind, key, raw = (cells[i].strip() for i in columns)
            kind = _group_kind(raw_kind)
            if kind is None:
                raise CommandError(
                    f"{path}:{line}: group_kind must be agent, room, total, attribute:KEY,"
                    f" room-metadata or room-metadata:KEY, got {raw_kind!r}"
                )
            try:
                minutes = Decimal(raw)
            except InvalidOperation:
                minutes = Decimal("NaN")
            if not minutes.is_finite() or minutes < 0:
                raise CommandError(
                    f"{path}:{line}: minutes must be a number of at least 0, got {raw!r}"
                )
            if (kind, key) in out:
                raise CommandError(
                    f"{path}:{line}: a second row for {kind} {key!r}"
                    f" (the first is on line {first_line[kind, key]})"
                )
            out[kind, key] = minutes
            first_line[kind, key] = line
    except csv.Error as exc:
        raise CommandError(f"{path}:{reader.line_num}: {exc}") from None
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
        raise CommandError(
            f"cannot tell the report format from {path.name!r}; name it .csv or .json,"
            " or pass --report-format"
        )
    if not path.parent.is_dir():
        raise CommandError(f"report directory does not exist: {path.parent}")
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
            "statement_minutes": number(d.statement_minutes),
            "difference_minutes": number(d.difference_minutes),
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
                    "tolerance_minutes": number(tolerance),
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


def number(d: Decimal | None) -> int | float | None:
    if d is None:
        return None
    return int(d) if d == d.to_integral_value() else float(d)


def difference_dict(d: Difference) -> dict[str, object]:
    """A difference as the comparison row stores it."""
    return {
        "group_kind": d.group_kind,
        "group_key": d.group_key,
        "observer_minutes": d.observer_minutes,
        "statement_minutes": None if d.statement_minutes is None else str(d.statement_minutes),
        "status": d.status,
    }
