"""Settings, read once at the edge from a mapping (the environment plus `.env`)."""

from __future__ import annotations

import ipaddress
import math
import socket
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import urlsplit

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from observer.core.protocol_values import kind_setting
from observer.core.vocab import KINDS
from observer.export.settings import EXPORT_SETTINGS_DOC

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_DATABASE_URL = "sqlite:///observer.db"
TOKEN_MIN_CHARS = 16  # a shorter OBSERVER_HTTP_TOKEN is refused at start: too easily guessed

# name -> (default, meaning); the single source for `.env.example` and the README table.
SETTINGS_DOC: dict[str, tuple[str, str]] = {
    "LIVEKIT_URL": (
        "",
        "LiveKit server URL (ws://, wss://, http:// or https://); several nodes of one"
        " cluster comma-separated",
    ),
    "LIVEKIT_API_KEY": ("", "API key the observer signs its tokens and API calls with"),
    "LIVEKIT_API_SECRET": ("", "API secret for that key (never printed or logged)"),
    "OBSERVER_DATABASE_URL": (
        DEFAULT_DATABASE_URL,
        "SQLAlchemy URL: sqlite:///path or postgresql://user:pass@host/db",
    ),
    "OBSERVER_ID": (
        "<hostname>",
        "Name of this observer, stored on each row it writes; one running observer per name"
        " on a shared database",
    ),
    "OBSERVER_REPLICAS": (
        "2",
        "Observers that watch each room when several share a PostgreSQL database",
    ),
    "OBSERVER_FAILOVER_S": (
        "10",
        "Seconds within which the rooms of an observer that died are watched by another",
    ),
    "OBSERVER_ROOM_PATTERN": ("*", "Glob of room names to watch (comma-separated globs allowed)"),
    "OBSERVER_TRACK_KINDS": (
        "agent",
        "Participant kinds to record, comma-separated: names, or a kind's protocol number",
    ),
    "OBSERVER_POLL_INTERVAL_S": ("5", "Seconds between room listings (ListRooms)"),
    "OBSERVER_LAST_SEEN_REFRESH_S": (
        "15",
        "Seconds between last_seen_at refreshes of open sessions (was OBSERVER_HEARTBEAT_S,"
        " still read, deprecated)",
    ),
    "OBSERVER_QUEUE_MAX": ("100000", "Events buffered before the daemon stops with exit code 3"),
    "OBSERVER_DB_RETRY_MAX_S": ("10", "Longest wait between database retries, seconds"),
    "OBSERVER_HTTP_ADDR": (
        "127.0.0.1:9465",
        "host:port for the page (/), /webhook, /usage, /metrics, /healthz, /readyz; 'off' disables",
    ),
    "OBSERVER_HTTP_TOKEN": (
        "",
        "Bearer token (or the page's login) every HTTP path but /webhook, /usage and /healthz"
        f" requires, at least {TOKEN_MIN_CHARS} characters; empty: none",
    ),
    "OBSERVER_HTTP_HOSTS": (
        "",
        "Host names the HTTP server answers besides loopback names and OBSERVER_HTTP_ADDR's"
        " host (others: 421), comma-separated; '*' any. On 0.0.0.0 or :: (empty): any",
    ),
    "OBSERVER_HTTP_TRUST_PROXY": (
        "false",
        "true: clients reach the HTTP server through a reverse proxy that terminates TLS;"
        " the login cookie is Secure and the client address is X-Forwarded-For's last",
    ),
    "OBSERVER_WEBHOOK_MAX_BYTES": ("1048576", "Largest webhook body accepted (larger: 413)"),
    "OBSERVER_PAGE_WORKERS": (
        "2",
        "Threads (each with its own database connections) that compute the page's views and"
        " exports; recording has its own",
    ),
    "OBSERVER_ROOM_PROCESSES": (
        "0",
        "Worker processes holding room connections; 0 holds them in the daemon (see README)",
    ),
    "OBSERVER_STUCK_AGENT_S": ("300", "Seconds an agent may be alone in a room before a warning"),
    "OBSERVER_SETTLE_STALE_S": ("60", "Seconds unseen before reconcile may close an open session"),
    "OBSERVER_FINALIZE_DELAY_S": ("3600", "Seconds after a period ends before reconcile finalizes"),
    "OBSERVER_LOG_FORMAT": ("text", "Log format: text or json"),
    "OBSERVER_LOG_LEVEL": ("info", "Log level: debug, info, warning or error"),
    "OBSERVER_RETAIN_WEBHOOK_EVENTS_DAYS": ("90", "Days observer prune keeps webhook events"),
    "OBSERVER_RETAIN_SPANS_DAYS": ("90", "Days observer prune keeps session spans"),
    "OBSERVER_RETAIN_WITNESSES_DAYS": ("90", "Days observer prune keeps session witnesses"),
    "OBSERVER_FORGET_KEY": (
        "",
        f"Key of observer forget's HMAC-SHA256, at least {TOKEN_MIN_CHARS} characters; never"
        " printed. Keep it: the same key gives the same hash",
    ),
    **EXPORT_SETTINGS_DOC,
}


# old name -> new name: the old one is still read, with a warning, for one release
RENAMED_SETTINGS: dict[str, str] = {"OBSERVER_HEARTBEAT_S": "OBSERVER_LAST_SEEN_REFRESH_S"}


class Deprecated(NamedTuple):
    """A setting given under its old name; `ignored`: its new name was given as well."""

    old: str
    new: str
    ignored: bool


def renamed(env: Mapping[str, str]) -> tuple[dict[str, str], tuple[Deprecated, ...]]:
    """`env` with each old setting name given under its new one (the new one wins when both
    are set), and what was given under an old name."""
    out = dict(env)
    given: list[Deprecated] = []
    for old, new in RENAMED_SETTINGS.items():
        if old in out:
            value = out.pop(old)
            given.append(Deprecated(old, new, ignored=new in out))
            out.setdefault(new, value)
    return out, tuple(given)


MISSING = "is missing"  # how a problem says that a required setting was not given


class ConfigError(Exception):
    """One or more settings are invalid; the message names every problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid settings: " + "; ".join(problems))

    @property
    def missing(self) -> bool:
        """Whether a setting is missing (rather than wrong)."""
        return any(p.endswith(MISSING) for p in self.problems)


def http_url_of(url: str) -> str:
    """The URL for server API calls (http/https)."""
    scheme, rest = url.split("://", 1)
    return {"ws": "http", "wss": "https"}.get(scheme, scheme) + "://" + rest


def ws_url_of(url: str) -> str:
    """The URL for rtc connections (ws/wss)."""
    scheme, rest = url.split("://", 1)
    return {"http": "ws", "https": "wss"}.get(scheme, scheme) + "://" + rest


@dataclass(frozen=True)
class LiveKitSettings:
    url: str  # the first node of LIVEKIT_URL
    api_key: str
    api_secret: str = field(repr=False)
    other_urls: tuple[str, ...] = ()  # more nodes of the same cluster, tried in turn

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.url, *self.other_urls)

    @property
    def http_url(self) -> str:
        return http_url_of(self.url)

    @property
    def ws_url(self) -> str:
        return ws_url_of(self.url)


@dataclass(frozen=True)
class Settings:
    """Every setting, parsed; built only by `from_mapping` (defaults live in SETTINGS_DOC)."""

    database_url: str = field(repr=False)
    livekit: LiveKitSettings | None
    observer_id: str
    replicas: int
    failover_s: float
    room_patterns: tuple[str, ...]
    track_kinds: frozenset[str]
    poll_interval_s: float
    last_seen_refresh_s: float
    queue_max: int
    db_retry_max_s: float
    http_host: str | None
    http_port: int
    http_token: str | None = field(repr=False)
    http_hosts: tuple[str, ...] | None  # None: the default (see `observer.web.guard`)
    http_trust_proxy: bool
    webhook_max_bytes: int
    page_workers: int
    room_processes: int
    stuck_agent_s: float
    settle_stale_s: float
    finalize_delay_s: float
    log_format: str
    log_level: str
    # days `observer prune` keeps each kind of data; `forget_key`: `observer forget`'s HMAC key
    retain_webhook_events_days: int = 90
    retain_spans_days: int = 90
    retain_witnesses_days: int = 90
    forget_key: str | None = field(default=None, repr=False)
    # settings given under a deprecated name, logged once at start
    deprecations: tuple[Deprecated, ...] = ()
    # OBSERVER_EXPORT_* as given, read by `observer.export.settings` (a secret among them)
    export_env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def database_url_safe(self) -> str:
        """The database URL with any password hidden, for messages."""
        return make_url(self.database_url).render_as_string(hide_password=True)

    @property
    def http_is_loopback(self) -> bool:
        return self.http_host is None or is_loopback(self.http_host)

    def require_livekit(self) -> LiveKitSettings:
        if self.livekit is None:
            raise ConfigError([f"LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET {MISSING}"])
        return self.livekit

    @classmethod
    def from_mapping(
        cls,
        env: Mapping[str, str],
        *,
        need_livekit: bool = False,
        uses: Collection[str] | None = None,
    ) -> Settings:
        """Build settings from a mapping, reporting every bad value at once.

        `uses` names the settings a command reads (default: all; a name ending in `_` stands
        for every setting it starts); the others are not read at all, so they keep their
        defaults, and a value that would be wrong for another command is not this one's
        problem."""
        env, deprecations = renamed(env)
        if uses is not None:
            env = {k: v for k, v in env.items() if k not in SETTINGS_DOC or is_used(k, uses)}
            deprecations = tuple(d for d in deprecations if is_used(d.new, uses))
        r = _Reader(env)
        livekit = _livekit(r, need_livekit)
        http_host, http_port = _http_addr(r)
        settings = cls(
            database_url=_database_url(r),
            livekit=livekit,
            observer_id=r.text("OBSERVER_ID") or socket.gethostname(),
            replicas=r.integer("OBSERVER_REPLICAS", minimum=1),
            failover_s=r.number("OBSERVER_FAILOVER_S", minimum=1),
            room_patterns=tuple(p for p in r.items("OBSERVER_ROOM_PATTERN")) or ("*",),
            track_kinds=_kinds(r),
            poll_interval_s=r.number("OBSERVER_POLL_INTERVAL_S", minimum=0.1),
            last_seen_refresh_s=r.number("OBSERVER_LAST_SEEN_REFRESH_S", minimum=0.1),
            queue_max=r.integer("OBSERVER_QUEUE_MAX", minimum=10),
            db_retry_max_s=r.number("OBSERVER_DB_RETRY_MAX_S", minimum=0.1),
            http_host=http_host,
            http_port=http_port,
            http_token=_token(r),
            http_hosts=_hosts(r),
            http_trust_proxy=r.boolean("OBSERVER_HTTP_TRUST_PROXY"),
            webhook_max_bytes=r.integer("OBSERVER_WEBHOOK_MAX_BYTES", minimum=1024),
            page_workers=r.integer("OBSERVER_PAGE_WORKERS", minimum=1),
            room_processes=r.integer("OBSERVER_ROOM_PROCESSES", minimum=0),
            stuck_agent_s=r.number("OBSERVER_STUCK_AGENT_S", minimum=1),
            settle_stale_s=r.number("OBSERVER_SETTLE_STALE_S", minimum=0),
            finalize_delay_s=r.number("OBSERVER_FINALIZE_DELAY_S", minimum=0),
            log_format=r.choice("OBSERVER_LOG_FORMAT", LOG_FORMATS),
            log_level=r.choice("OBSERVER_LOG_LEVEL", LOG_LEVELS),
            retain_webhook_events_days=r.integer("OBSERVER_RETAIN_WEBHOOK_EVENTS_DAYS", minimum=1),
            retain_spans_days=r.integer("OBSERVER_RETAIN_SPANS_DAYS", minimum=1),
            retain_witnesses_days=r.integer("OBSERVER_RETAIN_WITNESSES_DAYS", minimum=1),
            forget_key=_secret(r, "OBSERVER_FORGET_KEY"),
            deprecations=deprecations,
            export_env={k: v for k, v in env.items() if k in EXPORT_SETTINGS_DOC},
        )
        if r.problems:
            raise ConfigError(r.problems)
        return settings


def is_used(name: str, uses: Collection[str]) -> bool:
    """Whether setting `name` is among `uses` (names, or prefixes ending in `_`)."""
    return any(name == u or (u.endswith("_") and name.startswith(u)) for u in uses)


class _Reader:
    """Reads settings from a mapping, falling back to the documented defaults, and collects
    every problem instead of stopping at the first."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def raw(self, name: str) -> str:
        """The given value, or the documented default (`<...>` defaults are computed)."""
        default = SETTINGS_DOC[name][0]
        return self.env.get(name, "").strip() or ("" if default.startswith("<") else default)

    def text(self, name: str) -> str:
        return self.env.get(name, "").strip()

    def items(self, name: str) -> list[str]:
        return [x.strip() for x in self.raw(name).split(",") if x.strip()]

    def number(self, name: str, *, minimum: float) -> float:
        raw = self.raw(name)
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            self.problems.append(f"{name} must be a number, got {raw!r}")
            return float(SETTINGS_DOC[name][0])
        if value < minimum:
            self.problems.append(f"{name} must be at least {minimum:g}, got {raw!r}")
        return value

    def integer(self, name: str, *, minimum: int) -> int:
        raw = self.raw(name)
        if not raw.isdigit():
            self.problems.append(f"{name} must be an integer, got {raw!r}")
            return int(SETTINGS_DOC[name][0])
        if int(raw) < minimum:
            self.problems.append(f"{name} must be at least {minimum}, got {raw!r}")
        return int(raw)

    def boolean(self, name: str) -> bool:
        raw = self.raw(name).lower()
        if raw not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            self.problems.append(f"{name} must be true or false, got {raw!r}")
        return raw in ("true", "1", "yes", "on")

    def choice(self, name: str, choices: tuple[str, ...]) -> str:
        value = self.raw(name).lower()
        if value not in choices:
            self.problems.append(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value


def _livekit(r: _Reader, needed: bool) -> LiveKitSettings | None:
    raw, key, secret = (
        r.text("LIVEKIT_URL"),
        r.text("LIVEKIT_API_KEY"),
        r.text("LIVEKIT_API_SECRET"),
    )
    if not (raw or key or secret or needed):
        return None
    problems = []
    urls = [u.strip().rstrip("/") for u in raw.split(",") if u.strip()]
    if not urls:
        problems.append(f"LIVEKIT_URL {MISSING}")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
            problems.append(
                f"LIVEKIT_URL must look like ws://host:port or https://host, got {url!r}"
            )
            continue
        try:
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            problems.append(f"LIVEKIT_URL has a malformed port: {url!r}")
    if not key:
        problems.append(f"LIVEKIT_API_KEY {MISSING}")
    if not secret:
        problems.append(f"LIVEKIT_API_SECRET {MISSING}")
    r.problems.extend(problems)
    if problems:
        return None
    return LiveKitSettings(url=urls[0], api_key=key, api_secret=secret, other_urls=tuple(urls[1:]))


def _database_url(r: _Reader) -> str:
    raw = r.raw("OBSERVER_DATABASE_URL")
    try:
        return normalize_database_url(raw)
    except ValueError as exc:
        r.problems.append(f"OBSERVER_DATABASE_URL {exc}")
        return raw


def _kinds(r: _Reader) -> frozenset[str]:
    given = r.items("OBSERVER_TRACK_KINDS")
    kinds = {k: kind_setting(k) for k in given}
    unknown = sorted(k for k, kind in kinds.items() if kind is None)
    if unknown or not kinds:
        r.problems.append(
            f"OBSERVER_TRACK_KINDS has unknown kinds {unknown or r.raw('OBSERVER_TRACK_KINDS')!r};"
            f" choose from {', '.join(KINDS)}, or give a kind's protocol number"
        )
    return frozenset(kind for kind in kinds.values() if kind is not None)


def _token(r: _Reader) -> str | None:
    return _secret(r, "OBSERVER_HTTP_TOKEN")


def _secret(r: _Reader, name: str) -> str | None:
    token = r.text(name)
    if token and len(token) < TOKEN_MIN_CHARS:
        r.problems.append(
            f"{name} must be at least {TOKEN_MIN_CHARS} characters, got"
            f" {len(token)} (make one with: openssl rand -hex 16)"
        )
    return token or None


def _hosts(r: _Reader) -> tuple[str, ...] | None:
    hosts = tuple(h.lower().rstrip(".").strip("[]") for h in r.items("OBSERVER_HTTP_HOSTS"))
    bad = [h for h in hosts if not _host_name(h)]
    if bad:
        r.problems.append(
            f"OBSERVER_HTTP_HOSTS takes host names without port or scheme, got {bad[0]!r}"
        )
    return hosts or None


def _host_name(h: str) -> bool:
    """A name a Host header may hold, without its port: a DNS name, an address, or '*'."""
    if ":" in h:
        try:
            return ipaddress.ip_address(h).version == 6
        except ValueError:
            return False
    return h == "*" or (h != "" and not any(c in h for c in "/@ *"))


def _http_addr(r: _Reader) -> tuple[str | None, int]:
    addr = r.raw("OBSERVER_HTTP_ADDR")
    if addr.lower() == "off":
        return None, 0
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        r.problems.append(f"OBSERVER_HTTP_ADDR must be host:port or 'off', got {addr!r}")
        return None, 0
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost: assume it is reachable from outside


def normalize_database_url(raw: str) -> str:
    """Check a database URL and pick this project's driver for PostgreSQL."""
    try:
        url: URL = make_url(raw)
    except ArgumentError:
        raise ValueError(f"is not a database URL: {_hide(raw)!r}") from None
    backend, _, driver = url.drivername.partition("+")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        return url.render_as_string(hide_password=False)
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        pg = url.set(drivername="postgresql+psycopg")
        return pg.render_as_string(hide_password=False)
    raise ValueError(
        f"uses an unsupported driver {url.drivername!r}; use sqlite:/// or postgresql://"
    )


def _hide(raw: str) -> str:
    if "@" in raw and "://" in raw:
        scheme, rest = raw.split("://", 1)
        return scheme + "://***@" + rest.rsplit("@", 1)[1]
    return raw
