"""Who may ask what of the HTTP server (the daemon's and `observer web`'s): the Host names
it answers, the bearer token or login cookie, the pace of wrong guesses, and the headers
every response carries."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from observer.config import Settings

log = logging.getLogger(__name__)

COOKIE = "observer_web"
# paths anyone may fetch: the login form, the logout, the page's own CSS, script and icon
PUBLIC_PREFIXES = ("/login", "/logout", "/static/", "/favicon.ico")
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::"})
# the page's own files only; no frames of it anywhere, no forms posted elsewhere
CSP = (
    "default-src 'self'; style-src 'self'; img-src 'self'; frame-ancestors 'none';"
    " base-uri 'none'; form-action 'self'"
)
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
}


# ---- host names -----------------------------------------------------------------------------


def accepted_hosts(configured: tuple[str, ...] | None, listen_host: str) -> frozenset[str] | None:
    """The Host names answered (None: any): loopback names, the listening address, and
    OBSERVER_HTTP_HOSTS; any when that holds '*', or, unset, when the server listens on
    every address (whatever name its clients know it by)."""
    listen = listen_host.lower().strip("[]")
    if configured is None and listen in WILDCARD_ADDRESSES:
        return None
    if configured is not None and "*" in configured:
        return None
    named = {listen} if listen not in WILDCARD_ADDRESSES else set()
    return LOOPBACK_NAMES | named | frozenset(configured or ())


def host_name(header: str) -> str:
    """A Host header's name, without its port: lower case, no trailing dot, an IPv6 address
    without its brackets."""
    h = header.strip().lower()
    if h.startswith("["):
        h = h[1:].partition("]")[0]
    elif h.count(":") == 1:
        h = h.partition(":")[0]
    return h.rstrip(".")


def _same_address(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


def host_allowed(header: str | None, hosts: frozenset[str] | None) -> bool:
    """Whether a request with this Host header is answered. (No header: not a browser's
    request, which always names its host, so no rebinding of a browser's name to us.)"""
    if hosts is None or header is None:
        return True
    name = host_name(header)
    return name in hosts or any(_same_address(name, h) for h in hosts)


# ---- wrong guesses --------------------------------------------------------------------------


@dataclass
class _Failures:
    count: int
    last_at: float
    logged: bool = False  # this burst's warning was written


class GuessLimiter:
    """Wrong tokens per client address. The first `free` are answered at once; after them
    each next guess waits 1, 2, 4 ... seconds (at most `max_delay_s`) after the last
    failure, and is refused (429) before then. An address is forgotten `forget_after_s`
    after its last failure, or when it gets it right. Thread-safe."""

    def __init__(
        self,
        *,
        free: int = 5,
        max_delay_s: float = 60.0,
        forget_after_s: float = 900.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._free = free
        self._max_delay_s = max_delay_s
        self._forget_after_s = max(forget_after_s, max_delay_s)
        self._max_clients = max_clients
        self._clock = clock
        self._clients: dict[str, _Failures] = {}  # oldest failure first
        self._lock = threading.Lock()

    def _current(self, client: str, now: float) -> _Failures | None:
        f = self._clients.get(client)
        if f is not None and now - f.last_at >= self._forget_after_s:
            del self._clients[client]
            return None
        return f

    def _delay_s(self, count: int) -> float:
        if count < self._free:
            return 0.0
        return float(min(self._max_delay_s, 2 ** min(count - self._free, 32)))

    def wait_s(self, client: str) -> float:
        """Seconds before this client's next guess is heard (0: now)."""
        with self._lock:
            now = self._clock()
            f = self._current(client, now)
            if f is None:
                return 0.0
            return max(0.0, f.last_at + self._delay_s(f.count) - now)

    def failed(self, client: str) -> tuple[int, bool]:
        """Count a wrong guess: the client's failures so far, and whether this one is the
        first to make it wait (a burst begins: worth one log line)."""
        with self._lock:
            now = self._clock()
            f = self._current(client, now)
            if f is None:
                f = _Failures(0, now)
            else:
                del self._clients[client]  # to the end: the newest failure last
            f.count += 1
            f.last_at = now
            self._clients[client] = f
            while len(self._clients) > self._max_clients:
                del self._clients[next(iter(self._clients))]
            burst = not f.logged and self._delay_s(f.count) > 0
            f.logged = f.logged or burst
            return f.count, burst

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._clients.pop(client, None)


def retry_after(wait_s: float) -> str:
    return str(max(1, math.ceil(wait_s)))


# ---- access ---------------------------------------------------------------------------------


def cookie_value(token: str) -> str:
    """What the login cookie holds: derived from the token, never the token itself."""
    return hmac.new(token.encode(), b"observer web login", hashlib.sha256).hexdigest()


def same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


def wants_page(request: web.Request) -> bool:
    """A browser asking for a page (sent to the login form rather than answered 401)."""
    return request.method == "GET" and "text/html" in request.headers.get("Accept", "")


@dataclass(frozen=True)
class Access:
    """The rules of one HTTP server. `token`: the bearer token or login every path but
    `open_paths` (and the login form and static files) needs; None: none is needed.
    `hosts`: the Host names answered (None: any). `trust_proxy`: a TLS proxy stands in
    front (the cookie is Secure; the client is X-Forwarded-For's last address)."""

    token: str | None = field(default=None, repr=False)
    open_paths: frozenset[str] = frozenset()
    hosts: frozenset[str] | None = None
    trust_proxy: bool = False
    limiter: GuessLimiter = field(default_factory=GuessLimiter, compare=False)

    @classmethod
    def of(cls, settings: Settings, listen_host: str, open_paths: frozenset[str]) -> Access:
        return cls(
            token=settings.http_token,
            open_paths=open_paths,
            hosts=accepted_hosts(settings.http_hosts, listen_host),
            trust_proxy=settings.http_trust_proxy,
        )

    def client(self, request: web.Request) -> str:
        """The address wrong guesses are counted against."""
        if self.trust_proxy:
            forwarded = request.headers.get("X-Forwarded-For", "").rsplit(",", 1)[-1].strip()
            if forwarded:
                return forwarded
        return request.remote or "unknown"

    def wrong_guess(self, request: web.Request, what: str) -> None:
        """Count a wrong token; one warning per burst (never the token itself)."""
        client = self.client(request)
        count, burst = self.limiter.failed(client)
        if burst:
            log.warning(
                "repeated wrong tokens; this client's next guesses are slowed down",
                extra={"remote": client, "failures": count, "via": what},
            )

    def too_soon(self, request: web.Request) -> float:
        """Seconds this request's client must still wait before a guess is heard."""
        return self.limiter.wait_s(self.client(request))


def host_middleware(access: Access) -> Any:
    """A Host name not among `access.hosts`: 421, so that a name an attacker points at this
    address (DNS rebinding) gets no page."""

    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        host = request.headers.get("Host")
        if host_allowed(host, access.hosts):
            return await handler(request)  # type: ignore[no-any-return]
        return web.Response(
            status=421,
            text=f"this server does not answer to the host {host_name(host or '')!r};"
            " add it to OBSERVER_HTTP_HOSTS\n",
        )

    return check


def access_middleware(access: Access) -> Any:
    """Requests need the bearer token or the login cookie (when a token is set), except
    `open_paths`, the login form and static files; a browser is sent to the form."""

    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        token = access.token
        path = request.path
        if token is None or path in access.open_paths or path.startswith(PUBLIC_PREFIXES):
            return await handler(request)  # type: ignore[no-any-return]
        if same(request.cookies.get(COOKIE, ""), cookie_value(token)):
            return await handler(request)  # type: ignore[no-any-return]
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            wait_s = access.too_soon(request)
            if wait_s:
                return web.Response(
                    status=429,
                    text="too many wrong tokens from this address; try again later\n",
                    headers={"Retry-After": retry_after(wait_s)},
                )
            if same(given.strip(), token):
                access.limiter.succeeded(access.client(request))
                return await handler(request)  # type: ignore[no-any-return]
            access.wrong_guess(request, "bearer")
            return web.Response(
                status=401, text="wrong bearer token\n", headers={"WWW-Authenticate": "Bearer"}
            )
        if wants_page(request):
            raise web.HTTPSeeOther("/login")
        return web.Response(
            status=401, text="bearer token required\n", headers={"WWW-Authenticate": "Bearer"}
        )

    return check


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every response: no type sniffing, no referrer, the page's CSP and frame rules;
    nothing kept by caches but the page's versioned static files."""
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")


async def _alive(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def guarded_app(access: Access, **kwargs: Any) -> web.Application:
    """An application with `access`'s rules: Host names, then the token; every response
    with `security_headers`; and /healthz, which says only that the process lives."""
    app = web.Application(
        middlewares=[host_middleware(access), access_middleware(access)], **kwargs
    )
    app.on_response_prepare.append(security_headers)
    app.router.add_get("/healthz", _alive)
    return app
