"""A prices file (TOML), versioned by effective date, and what things cost under it.

    currency = "USD"

    [[agent_minute]]            # per billable agent minute (the per-session minute rule)
    from = 2026-01-01
    price = "0.0100"

    [[model]]                   # per unit, for one kind, provider and model
    kind = "llm"
    provider = "openai"
    model = "gpt-4o-mini"
    from = 2026-01-01
    input_uncached_tokens = "0.00000015"
    input_cached_tokens = "0.000000075"
    output_tokens = "0.0000006"

Each entry holds from its `from` date (UTC midnight, or a time with its offset) until the
next entry of the same thing. A session's agent minutes are all priced as of its join, a
model's usage as of its report. Money is `Decimal` throughout, never float.
"""

from __future__ import annotations

import tomllib
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from observer.core.agent_usage import USAGE_KINDS

# What a model price may name: per token, character or second. input_uncached_tokens is
# input_tokens less input_cached_tokens, so cached tokens can have their own price.
PRICED_UNITS = (
    "input_tokens",
    "input_uncached_tokens",
    "input_cached_tokens",
    "input_audio_tokens",
    "input_text_tokens",
    "output_tokens",
    "output_audio_tokens",
    "output_text_tokens",
    "characters",
    "audio_seconds",
    "session_seconds",
)


class PricesError(ValueError):
    """A prices file that cannot be used; the message is one line naming the problem."""


@dataclass(frozen=True)
class Priced:
    """Prices in effect from `start`."""

    start: datetime
    prices: Mapping[str, Decimal]


@dataclass
class PriceBook:
    currency: str = ""
    minute: list[Priced] = field(default_factory=list)
    models: dict[tuple[str, str, str], list[Priced]] = field(default_factory=dict)

    def minute_price(self, at: datetime) -> Decimal | None:
        p = _in_effect(self.minute, at)
        return None if p is None else p.prices["price"]

    def model_prices(
        self, kind: str, provider: str, model: str, at: datetime
    ) -> Mapping[str, Decimal] | None:
        p = _in_effect(self.models.get((kind, provider, model), []), at)
        return None if p is None else p.prices

    def changes(self) -> tuple[datetime, ...]:
        """Every moment at which some price changes (or first holds), ascending."""
        found = {p.start for p in self.minute}
        for versions in self.models.values():
            found.update(p.start for p in versions)
        return tuple(sorted(found))


def _in_effect(versions: list[Priced], at: datetime) -> Priced | None:
    i = bisect_right([p.start for p in versions], at)
    return versions[i - 1] if i else None


def unit_counts(counters: Mapping[str, int]) -> dict[str, Decimal]:
    """A model's usage counters in the units prices are given in."""
    out = {
        name: Decimal(counters[name])
        for name in PRICED_UNITS
        if name in counters and not name.endswith("_seconds")
    }
    out["input_uncached_tokens"] = Decimal(
        counters["input_tokens"] - counters["input_cached_tokens"]
    )
    out["audio_seconds"] = Decimal(counters["audio_ms"]) / 1000
    out["session_seconds"] = Decimal(counters["session_ms"]) / 1000
    return out


def model_cost(prices: Mapping[str, Decimal], counters: Mapping[str, int]) -> Decimal:
    units = unit_counts(counters)
    return sum((units[name] * price for name, price in prices.items()), Decimal(0))


def load(path: str | Path) -> PriceBook:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PricesError(f"cannot read prices file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PricesError(f"prices file {path} is not TOML: {exc}") from None
    book = PriceBook()
    unknown = set(data) - {"currency", "agent_minute", "model"}
    if unknown:
        raise PricesError(f"prices file {path}: unknown key {sorted(unknown)[0]!r}")
    currency = data.get("currency", "")
    if not isinstance(currency, str):
        raise PricesError(f"prices file {path}: currency must be a string")
    book.currency = currency
    for i, entry in enumerate(_tables(data, "agent_minute", path)):
        where = f"prices file {path}, agent_minute #{i + 1}"
        _only(entry, {"from", "price"}, where)
        book.minute.append(Priced(_start(entry, where), {"price": _money(entry, "price", where)}))
    for i, entry in enumerate(_tables(data, "model", path)):
        where = f"prices file {path}, model #{i + 1}"
        _only(entry, {"kind", "provider", "model", "from", *PRICED_UNITS}, where)
        kind = entry.get("kind")
        if kind not in USAGE_KINDS:
            raise PricesError(f"{where}: kind must be one of {', '.join(USAGE_KINDS)}")
        names = []
        for key in ("provider", "model"):
            value = entry.get(key, "")
            if not isinstance(value, str) or (key == "model" and not value):
                raise PricesError(
                    f"{where}: {key} must be a string" + (" (required)" * (key == "model"))
                )
            names.append(value)
        units = {u: _money(entry, u, where) for u in PRICED_UNITS if u in entry}
        if not units:
            raise PricesError(f"{where}: no price given (one of {', '.join(PRICED_UNITS)})")
        book.models.setdefault((kind, names[0], names[1]), []).append(
            Priced(_start(entry, where), units)
        )
    for versions in (book.minute, *book.models.values()):
        versions.sort(key=lambda p: p.start)
        starts = [p.start for p in versions]
        if len(set(starts)) != len(starts):
            raise PricesError(f"prices file {path}: two prices for one thing from the same time")
    return book


def _tables(data: dict[str, Any], key: str, path: str | Path) -> list[dict[str, Any]]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise PricesError(f"prices file {path}: {key} must be an array of tables ([[{key}]])")
    return value


def _only(entry: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(entry) - allowed
    if unknown:
        raise PricesError(f"{where}: unknown key {sorted(unknown)[0]!r}")


def _start(entry: dict[str, Any], where: str) -> datetime:
    value = entry.get("from")
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise PricesError(f"{where}: from must be a date or a time with its offset")
        return value.astimezone(UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(), UTC)
    raise PricesError(f"{where}: from must be a date (2026-03-01) or a time with its offset")


def _money(entry: dict[str, Any], key: str, where: str) -> Decimal:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise PricesError(f'{where}: {key} must be a price, e.g. "0.0100"')
    try:
        # a float is read from its shortest text: 0.01 is 0.01, not 0.01000000000000000020
        money = Decimal(value if isinstance(value, str) else repr(value))
    except InvalidOperation:
        raise PricesError(f"{where}: {key} {value!r} is not a number") from None
    if not money.is_finite() or money < 0:
        raise PricesError(f"{where}: {key} must be a price >= 0")
    return money
