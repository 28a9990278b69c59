"""The SQL of a session's sum keys (its groups', the prices in effect at its join) and of
the bucket a time falls in."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from itertools import pairwise
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, case, func, literal, literal_column
from sqlalchemy.sql.elements import Label

from observer.db.usage._dialect import json_member
from observer.db.usage.spec import (
    ATTRIBUTE_PREFIX,
    ROOM_METADATA,
    ROOM_METADATA_PREFIX,
    USAGE_GROUP_COLUMNS,
    UsageSpec,
)


def group_key(g: str, sessions: Any, rooms: Any, dialect: str) -> ColumnElement[Any]:
    """The SQL of a session's value for the grouping `g` (from its row, or its room's)."""
    if g in USAGE_GROUP_COLUMNS:
        return sessions.c[USAGE_GROUP_COLUMNS[g]]  # type: ignore[no-any-return]
    if g == ROOM_METADATA:
        return func.coalesce(rooms.c.metadata, "")
    column, key = (
        (sessions.c.attributes, g.removeprefix(ATTRIBUTE_PREFIX))
        if g.startswith(ATTRIBUTE_PREFIX)
        else (rooms.c.metadata_json, g.removeprefix(ROOM_METADATA_PREFIX))
    )
    return func.coalesce(json_member(column, key, dialect), "")


def priced_key(at: ColumnElement[datetime], spec: UsageSpec) -> ColumnElement[int]:
    """How many of `spec.price_cuts` are at or before `at`: the key that tells sums apart
    by the prices in effect then."""
    cuts = spec.price_cuts
    if not cuts:
        return literal_column("0")
    return case(*((at < cut, i) for i, cut in enumerate(cuts)), else_=len(cuts))


def sum_keys(spec: UsageSpec, t: Any, rooms: Any, dialect: str) -> list[Label[Any]]:
    """The keys of the sessions' sums, labelled k0...: the groups', then `priced_key`'s."""
    keys = [group_key(g, t, rooms, dialect) for g in spec.group_by]
    if spec.price_cuts:
        keys.append(priced_key(t.c.joined_at, spec))
    return [k.label(f"k{i}") for i, k in enumerate(keys)]


def bucketing(
    edges: list[int],
) -> tuple[
    Callable[[ColumnElement[int]], ColumnElement[int]],
    Callable[[ColumnElement[int]], ColumnElement[int]],
]:
    """SQL for the bucket number of a time, and for the start of bucket number i.

    Evenly spaced edges (days) are arithmetic; others (months) a CASE over the edges.
    """
    inner = edges[1:-1]
    steps = {b - a for a, b in pairwise(inner)}
    if len(steps) == 1:
        width = steps.pop()
        origin = inner[0] - width
        if edges[0] >= origin and edges[-1] <= inner[-1] + width:

            def uniform_bucket(x: ColumnElement[int]) -> ColumnElement[int]:
                return (x - literal(origin, BigInteger)) // width

            def uniform_edge(i: ColumnElement[int]) -> ColumnElement[int]:
                return literal(origin, BigInteger) + i * literal(width, BigInteger)

            return uniform_bucket, uniform_edge

    def bucket(x: ColumnElement[int]) -> ColumnElement[int]:
        whens = [(x < literal(e, BigInteger), i) for i, e in enumerate(inner)]
        return case(*whens, else_=len(inner))

    def edge(i: ColumnElement[int]) -> ColumnElement[int]:
        return case({n: literal(e, BigInteger) for n, e in enumerate(edges)}, value=i)

    return bucket, edge
