"""The export's settings: `OBSERVER_EXPORT_*` from the environment and, where
`OBSERVER_EXPORT_FILE` names one, a small TOML file (the customer mapping, event names);
the environment wins. Read once at the edge; every problem is reported at once, in one
line. The secret (HMAC secret, Stripe key, OpenMeter token) is read from the environment
only and kept out of `repr`."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from observer.errors import CommandError

Target = Literal["http", "stripe", "openmeter"]
TARGETS: tuple[Target, ...] = get_args(Target)
Grouping = Literal["day", "period"]
QUANTITIES = ("minutes", "tokens", "cost")
EVENT_NAMES = {"minutes": "agent_minutes", "tokens": "agent_tokens", "cost": "agent_cost"}

# name -> (default, meaning): merged into `observer.config.SETTINGS_DOC`
EXPORT_SETTINGS_DOC: dict[str, tuple[str, str]] = {
    "OBSERVER_EXPORT_FILE": (
        "",
        "TOML file with the export's settings (keys below without the prefix, lower case),"
        " the [customers] mapping and [event_names]; the environment wins",
    ),
    "OBSERVER_EXPORT_TARGET": ("", "Billing system usage is sent to: http, stripe or openmeter"),
    "OBSERVER_EXPORT_URL": (
        "",
        "The endpoint: http's URL, OpenMeter's events URL; stripe: the API base (default"
        " Stripe's own)",
    ),
    "OBSERVER_EXPORT_SECRET": (
        "",
        "HMAC-SHA256 secret (http), API key (stripe) or API token (openmeter); never printed",
    ),
    "OBSERVER_EXPORT_CUSTOMER_KEY": (
        "",
        "Which value names the customer: attribute:KEY or room-metadata:KEY",
    ),
    "OBSERVER_EXPORT_GROUPING": ("day", "One event per customer, agent and: day or period"),
    "OBSERVER_EXPORT_QUANTITIES": (
        "minutes",
        "What is sent, comma-separated: minutes, tokens (per model), cost (needs prices)",
    ),
    "OBSERVER_EXPORT_PRICES": ("", "Prices file (TOML) for the cost quantity"),
    "OBSERVER_EXPORT_RATE_PER_S": ("25", "Most events sent per second"),
    "OBSERVER_EXPORT_ATTEMPTS": ("5", "Tries per event in one run before it is left pending"),
    "OBSERVER_EXPORT_TIMEOUT_S": ("10", "Seconds an answer may take before the event is retried"),
}
_FILE_KEYS = {n.removeprefix("OBSERVER_EXPORT_").lower() for n in EXPORT_SETTINGS_DOC} - {
    "file",
    "secret",
}
_TABLES = {"customers", "event_names"}
_EXTRA = {"source", "signature_header"}


@dataclass(frozen=True)
class ExportSettings:
    target: Target
    url: str | None
    secret: str = field(repr=False)
    customer_key: str = ""  # attribute:KEY or room-metadata:KEY
    customers: Mapping[str, str] | None = None  # None: the value is the billing id
    grouping: Grouping = "day"
    quantities: tuple[str, ...] = ("minutes",)
    prices: Path | None = None
    event_names: Mapping[str, str] = field(default_factory=lambda: dict(EVENT_NAMES))
    rate_per_s: float = 25.0
    attempts: int = 5
    timeout_s: float = 10.0
    source: str = "observer"  # OpenMeter's CloudEvents source
    signature_header: str = "X-Observer-Signature"

    def event_name(self, kind: str) -> str:
        """The event name (Stripe's meter, OpenMeter's type) of a quantity kind."""
        return self.event_names[kind.split(":", 1)[0]]


def export_settings(env: Mapping[str, str]) -> ExportSettings:
    """The settings from `OBSERVER_EXPORT_*` and the file it names; a `CommandError`
    (exit 2) naming every problem, and never the secret, when they cannot be used."""
    problems: list[str] = []
    given: dict[str, Any] = {}
    path = env.get("OBSERVER_EXPORT_FILE", "").strip()
    if path:
        given = _read_file(Path(path), problems)
    for name in EXPORT_SETTINGS_DOC:
        value = env.get(name, "").strip()
        key = name.removeprefix("OBSERVER_EXPORT_").lower()
        if value and key not in ("file", "secret"):
            given[key] = value
    secret = env.get("OBSERVER_EXPORT_SECRET", "").strip()

    def text(key: str) -> str:
        v = given.get(key, EXPORT_SETTINGS_DOC[f"OBSERVER_EXPORT_{key.upper()}"][0])
        if not isinstance(v, str):
            problems.append(f"export {key} must be text, got {type(v).__name__}")
            return ""
        return v.strip()

    def number(key: str, minimum: float) -> float:
        raw = given.get(key, EXPORT_SETTINGS_DOC[f"OBSERVER_EXPORT_{key.upper()}"][0])
        try:
            value = float(raw)
        except (TypeError, ValueError):
            value = float("nan")
        if not value >= minimum or value == float("inf"):
            problems.append(f"export {key} must be a number of at least {minimum:g}, got {raw!r}")
            return minimum
        return value

    target = text("target")
    if target not in TARGETS:
        problems.append(
            f"OBSERVER_EXPORT_TARGET must be one of {', '.join(TARGETS)}, got {target!r}"
            if target
            else "OBSERVER_EXPORT_TARGET is missing (http, stripe or openmeter)"
        )
    url = text("url") or None
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(f"export url must be an http:// or https:// URL, got {url!r}")
    elif target in ("http", "openmeter"):
        problems.append(f"export url is missing (OBSERVER_EXPORT_URL), needed by {target}")
    if not secret and target in ("http", "stripe"):
        problems.append(f"OBSERVER_EXPORT_SECRET is missing, needed by {target}")
    customer_key = text("customer_key")
    if not customer_key.startswith(("attribute:", "room-metadata:")) or customer_key.endswith(":"):
        problems.append(
            f"export customer_key must be attribute:KEY or room-metadata:KEY, got {customer_key!r}"
        )
    grouping = text("grouping") or "day"
    if grouping not in ("day", "period"):
        problems.append(f"export grouping must be day or period, got {grouping!r}")
    raw_q = given.get("quantities", "minutes")
    items = raw_q.split(",") if isinstance(raw_q, str) else raw_q
    quantities = tuple(dict.fromkeys(str(q).strip() for q in items if str(q).strip()))
    bad = [q for q in quantities if q not in QUANTITIES]
    if bad or not quantities:
        problems.append(f"export quantities take {', '.join(QUANTITIES)}, got {raw_q!r}")
    prices = text("prices")
    if "cost" in quantities and not prices:
        problems.append("export quantity cost needs a prices file (OBSERVER_EXPORT_PRICES)")
    customers = _mapping(given.get("customers"), "customers", problems)
    names = {**EVENT_NAMES, **(_mapping(given.get("event_names"), "event_names", problems) or {})}
    unknown = sorted(set(names) - set(EVENT_NAMES))
    if unknown:
        problems.append(f"export [event_names] takes {', '.join(EVENT_NAMES)}, got {unknown}")
    rate = number("rate_per_s", 0.1)
    attempts = number("attempts", 1)
    timeout = number("timeout_s", 0.1)
    if problems:
        raise CommandError("invalid export settings: " + "; ".join(problems))
    return ExportSettings(
        target=target,  # type: ignore[arg-type]
        url=url,
        secret=secret,
        customer_key=customer_key,
        customers=customers,
        grouping=grouping,  # type: ignore[arg-type]
        quantities=quantities,
        prices=Path(prices) if prices else None,
        event_names=names,
        rate_per_s=rate,
        attempts=int(attempts),
        timeout_s=timeout,
        source=str(given.get("source", "observer")),
        signature_header=str(given.get("signature_header", "X-Observer-Signature")),
    )


def _read_file(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        problems.append(f"export file {path}: {exc.strerror or exc}")
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        problems.append(f"export file {path} is not TOML: {exc}")
        return {}
    if "secret" in data:
        problems.append(
            f"export file {path} holds a secret: it goes in OBSERVER_EXPORT_SECRET, not a file"
        )
    unknown = sorted(set(data) - _FILE_KEYS - _TABLES - _EXTRA - {"secret"})
    if unknown:
        problems.append(f"export file {path} has unknown keys {unknown}")
    return {k: v for k, v in data.items() if k != "secret"}


def _mapping(raw: object, name: str, problems: list[str]) -> dict[str, str] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        problems.append(f"export [{name}] must be a table of names to text")
        return None
    bad = [k for k, v in raw.items() if not isinstance(v, str) or not v.strip()]
    if bad:
        problems.append(f"export [{name}] maps {bad[0]!r} to no text; give each a non-empty string")
    return {str(k): str(v).strip() for k, v in raw.items() if isinstance(v, str)}
