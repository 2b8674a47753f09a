"""What keeps web pages and misbehaving clients away from the HTTP API.

Without a token the API trusts whoever reaches it, because only this machine can. A web page
in a browser on this machine can reach it too: through DNS rebinding (a name the attacker
controls that resolves to 127.0.0.1, so the page is "same origin" with the API) and through
cross-site requests that a browser sends without asking (a form POST, `text/plain`). The
rules here close both: a token-less API answers only requests whose `Host` is a loopback
name (or one the operator configured), and every state-changing call refuses a foreign
`Origin` and needs a JSON body type, which a browser cannot send cross-site without a CORS
preflight that the API never grants.

The connection side: idle and slow clients time out, the number of open connections is
capped below the file-descriptor limit (at the cap the oldest idle connection makes room),
and accept() failures are logged once with backoff instead of once per attempt.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import resource
import socket
import stat
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from backupjobd.errors import BackupJobdError

logger = logging.getLogger(__name__)

STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Browsers send these cross-site without a preflight; anything else (JSON) needs one.
LOOPBACK_NAMES = frozenset({"localhost", "localhost."})
ACCEPT_LOG_BACKOFF_SECONDS = 60.0
# Descriptors kept for everything that is not an API client: the database, ARM, webhooks.
RESERVED_DESCRIPTORS_SHARE = 0.5
MIN_CONNECTIONS = 4


class ApiStartError(BackupJobdError):
    """The HTTP API could not listen where the configuration says."""


# ---- the rules (pure) ------------------------------------------------------------------


def host_name(host_header: str) -> str:
    """The name part of a Host header: `[::1]:80` → `::1`, `Example.COM.:8080` → `example.com.`."""
    value = host_header.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        return value.partition(":")[0]
    return value


def is_loopback_name(name: str) -> bool:
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_allowed(host_header: str | None, extra_hosts: Iterable[str] = ()) -> bool:
    """A token-less API answers loopback names and the configured ones only. A missing Host
    (HTTP/1.0 tools) is accepted: browsers always send one."""
    if host_header is None:
        return True
    name = host_name(host_header)
    return is_loopback_name(name) or name in {h.lower() for h in extra_hosts}


def origin_allowed(origin: str | None, host_header: str | None) -> bool:
    """A state-changing call may come with no Origin (curl, scripts, the CLI) or from the
    API's own origin (a page it served). Any other origin, `null` included, is foreign."""
    if origin is None:
        return True
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or host_header is None:
        return False
    return parts.netloc.lower() == host_header.strip().lower()


def is_json_content_type(content_type: str) -> bool:
    main = content_type.split(";", 1)[0].strip().lower()
    return main == "application/json" or (
        main.startswith("application/") and main.endswith("+json")
    )


def connection_cap(configured: int, descriptor_limit: int | None, in_use: int = 0) -> int:
    """API clients get at most half of the descriptors still free when the API starts, so
    a flood of idle connections cannot starve the database, ARM or the health probe."""
    if descriptor_limit is None or descriptor_limit <= 0:
        return configured
    room = int((descriptor_limit - in_use) * (1 - RESERVED_DESCRIPTORS_SHARE))
    return max(MIN_CONNECTIONS, min(configured, room))


def descriptor_limit() -> int | None:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def descriptors_in_use() -> int:
    """Open descriptors of this process (0 where /proc is not there to tell)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


# ---- connections -----------------------------------------------------------------------


_BUSY_BODY = b'{"error": {"code": "busy", "message": "too many connections; retry later"}}'
BUSY_ANSWER = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(_BUSY_BODY)
    + _BUSY_BODY
)


class _Refused(asyncio.Protocol):
    """Answers 503 and closes: every connection slot is busy with a request."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(BUSY_ANSWER)
        transport.close()


class ConnectionGuard:
    """The protocol factory of the API's listening socket: caps open connections.

    A request marks its connection busy while it is handled (`busy_middleware`); when the
    cap is reached the oldest connection without a request in progress is closed to make
    room, and only when every connection is busy does a newcomer get 503.
    """

    def __init__(self, cap: int) -> None:
        self._server: web.Server | None = None
        self.cap = cap
        self._busy: dict[object, int] = {}

    @property
    def busy(self) -> int:
        """Connections with a request in progress (never closed to make room)."""
        return len(self._busy)

    def attach(self, server: web.Server) -> None:
        """The runner's server exists only after setup; the middleware exists before."""
        self._server = server

    def __call__(self) -> asyncio.BaseProtocol:
        assert self._server is not None, "attach() the runner's server first"
        connections = self._server.connections
        if len(connections) >= self.cap:
            idle = next((c for c in connections if c not in self._busy), None)
            if idle is None:
                return _Refused()
            idle.force_close()
        return self._server()

    def shed_idle(self) -> int:
        """Close the older half of the idle connections (at least one): accept() just failed
        for want of descriptors, and the client waiting in the backlog may be the probe."""
        if self._server is None:
            return 0
        idle = [c for c in self._server.connections if c not in self._busy]
        shed = idle[: max(1, len(idle) // 2)] if idle else []
        for connection in shed:
            connection.force_close()
        return len(shed)

    @web.middleware
    async def busy_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        key = request.protocol
        self._busy[key] = self._busy.get(key, 0) + 1
        try:
            response: web.StreamResponse = await handler(request)
            return response
        finally:
            left = self._busy.pop(key) - 1
            if left:
                self._busy[key] = left


class GuardedSite(web.BaseSite):
    """A TCP or unix-socket listener whose connections go through a `ConnectionGuard`."""

    def __init__(
        self,
        runner: web.BaseRunner,
        guard: ConnectionGuard,
        *,
        host: str | None = None,
        port: int | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(runner, backlog=128)
        self._guard = guard
        self._host = host
        self._port = port
        self._path = path

    @property
    def name(self) -> str:
        if self._path is not None:
            return f"unix:{self._path}:"
        host = f"[{self._host}]" if self._host and ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        if self._path is not None:
            self._server = await loop.create_unix_server(
                self._guard, self._path, backlog=self._backlog
            )
        else:
            self._server = await loop.create_server(
                self._guard,
                self._host,
                self._port or 0,
                backlog=self._backlog,
                reuse_address=True,
            )


def check_unix_socket(path: str) -> None:
    """Refuse a socket path that another live process serves (asyncio would unlink it and
    take it over) and a parent directory that does not exist; a stale socket file is fine."""
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        raise ApiStartError(f"api.unix_socket {path}: directory {parent} does not exist")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ApiStartError(f"api.unix_socket {path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise ApiStartError(f"api.unix_socket {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return
    except OSError as exc:
        raise ApiStartError(f"api.unix_socket {path}: {exc.strerror or exc}") from None
    finally:
        probe.close()
    raise ApiStartError(f"api.unix_socket {path} is in use by another live process")


def listen_error(where: str, exc: OSError) -> ApiStartError:
    """One line for the reasons a listener fails to start."""
    reason = {
        errno.EADDRINUSE: "address already in use (another process listens there)",
        errno.EADDRNOTAVAIL: "address not available on this machine",
        errno.EACCES: "permission denied",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    return ApiStartError(f"the HTTP API cannot listen on {where}: {reason}")


# ---- logs ------------------------------------------------------------------------------


class ProtocolLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's connection handler logs a malformed request or a client that went away
    with a traceback, at ERROR; anyone who can connect could fill the log that way. Here
    such a report is one line without the traceback, at INFO at most."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc = kwargs.pop("exc_info", None)
        kwargs.pop("stack_info", None)
        text = str(msg) % args if args else str(msg)
        if isinstance(exc, BaseException):
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            text = f"{text} ({reason})"
        self.logger.log(
            min(level, logging.INFO),
            "HTTP API: %s",
            text,
            extra={"action": "api_bad_request"},
        )


def _stale_accept_retry(context: dict[str, Any]) -> bool:
    """A retry of accept() (`_start_serving`) scheduled after a descriptor shortage that ran
    after the listening socket was closed."""
    exc = context.get("exception")
    return (
        isinstance(exc, ValueError)
        and "file descriptor: -1" in str(exc)
        and "_start_serving" in repr(context.get("handle"))
    )


class AcceptFailureLog:
    """The event loop's exception handler: an accept() that fails for want of descriptors is
    logged once, then at most once a minute with the count (asyncio retries every second and
    would log a traceback each time); everything else goes to the default handler."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._last: float | None = None
        self._suppressed = 0
        # Called on each such failure to free descriptors (the API's `shed_idle`).
        self.on_exhausted: Callable[[], object] | None = None

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if _stale_accept_retry(context):
            # asyncio schedules a retry of accept() for every descriptor-starved accept of a
            # batch (up to the backlog); those still pending when the server has closed its
            # socket fail on descriptor -1 at shutdown: nothing is left to report.
            logger.debug("HTTP API: an accept retry found its socket closed")
            return
        if not message.startswith("socket.accept() out of system resource"):
            loop.default_exception_handler(context)
            return
        if self.on_exhausted is not None:
            self.on_exhausted()
        now = self._clock()
        if self._last is not None and now - self._last < ACCEPT_LOG_BACKOFF_SECONDS:
            self._suppressed += 1
            return
        exc = context.get("exception")
        logger.warning(
            "HTTP API cannot accept connections: %s%s; raise LimitNOFILE / ulimit -n",
            exc if exc is not None else message,
            f" ({self._suppressed} more since the last report)" if self._suppressed else "",
            extra={"action": "api_accept_failed"},
        )
        self._last = now
        self._suppressed = 0
