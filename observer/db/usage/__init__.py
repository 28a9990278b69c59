"""Usage summed in SQL: standing time (and states) per group and bucket inside a window,
and model usage (tokens).

- `spec`: what a sum asks for and gives, the groupings' names, which sessions a query
  reads (`Subset`)
- `totals`: `usage_totals` and `usage_totals_together`, the entry points
- `_query`: the query itself: sessions whole in a bucket summed as they are, the few at the
  edges clipped and cut
- `_columns`: the SQL of the sum keys and of buckets
- `_dialect`: what differs between SQLite and PostgreSQL, and the planner hints
- `_slices`: a window summed in slices at once, on connections of their own
- `_states`: time in each agent state and alone, cut from spans where a session is cut
- `tokens`: model usage per group and bucket (`observer usage --tokens`)
"""

from observer.db.usage._slices import Fanout
from observer.db.usage.spec import (
    STATE_SUMS,
    USAGE_GROUP_COLUMNS,
    UsageSpec,
    UsageTotal,
    epoch_ms,
    is_group_name,
)
from observer.db.usage.tokens import TokenSessions, TokenTotal, token_totals
from observer.db.usage.totals import usage_totals, usage_totals_together

__all__ = [
    "STATE_SUMS",
    "USAGE_GROUP_COLUMNS",
    "Fanout",
    "TokenSessions",
    "TokenTotal",
    "UsageSpec",
    "UsageTotal",
    "epoch_ms",
    "is_group_name",
    "token_totals",
    "usage_totals",
    "usage_totals_together",
]
