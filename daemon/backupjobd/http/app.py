"""The HTTP API served next to the daemon: the aiohttp application, its listener and the
middlewares every request passes (connection cap, JSON errors, bearer token, browser rules,
known query parameters).

Every answer is JSON; every error is `{"error": {"code", "message"}}`. The query parameters
each operation accepts are read from the OpenAPI document, so the code and the document
cannot disagree (a schemathesis suite checks the rest against each other).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from aiohttp import web

from backupjobd.adapters.arm import ArmClient
from backupjobd.adapters.credentials import TokenProvider
from backupjobd.adapters.durations import Durations
from backupjobd.adapters.metrics import Metrics
from backupjobd.config import ApiConfig, is_loopback
from backupjobd.core import azure
from backupjobd.core.registration import Endpoint
from backupjobd.errors import StoreError
from backupjobd.http import guard as apiguard
from backupjobd.http import keys
from backupjobd.http.auth import SESSION_COOKIE, Access, ApiTokens
from backupjobd.http.guard import ConnectionGuard, GuardedSite
from backupjobd.http.handlers import DEFAULT_RETRY_AFTER_SECONDS, add_routes
from backupjobd.http.openapi import openapi_document
from backupjobd.http.page import add_page_routes, is_page_path, login_page
from backupjobd.http.params import ApiError, bad_param, one_line
from backupjobd.store import Store

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CANCEL_FOLLOW_SECONDS",
    "api_token_required",
    "build_api_app",
    "connection_guard",
    "start_api",
]

UNIX_SOCKET_MODE = 0o660
DEFAULT_CANCEL_FOLLOW_SECONDS = 10.0
# How long the rest of a body that a handler did not read is waited for before closing.
LINGERING_SECONDS = 2.0

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_api_app(
    *,
    store: Store,
    arm: ArmClient,
    tokens: TokenProvider,
    endpoint: Endpoint,
    metrics: Metrics,
    config: ApiConfig,
    api_token: str | None,
    read_token: str | None = None,
    last_tick_age: Callable[[], float | None],
    clock: Callable[[], datetime],
    cancel_follow_seconds: float = DEFAULT_CANCEL_FOLLOW_SECONDS,
    durations: Durations | None = None,
) -> web.Application:
    """The aiohttp application; `api_token` (when not None) guards /v1, /metrics and the web
    page, and `read_token` (only beside it) may read them too (GET) but change nothing.
    `durations`: the tracker's, so that expected ends match what polling expects."""
    api_tokens = ApiTokens(api_token, read_token if api_token is not None else None)
    document = openapi_document(endpoint, secured=api_token is not None, config=config)
    guard = ConnectionGuard(
        apiguard.connection_cap(
            config.max_connections, apiguard.descriptor_limit(), apiguard.descriptors_in_use()
        )
    )
    app = web.Application(
        client_max_size=config.max_body_bytes,
        middlewares=[
            guard.busy_middleware,
            _error_middleware,
            _auth_middleware(api_tokens),
            _browser_middleware(
                check_host=api_token is None and not config.unix_socket,
                extra_hosts=config.allowed_hosts,
            ),
            _query_middleware(_query_parameters(document)),
        ],
    )
    app[keys.STORE] = store
    app[keys.ARM] = arm
    app[keys.TOKENS] = tokens
    app[keys.ENDPOINT] = endpoint
    app[keys.METRICS] = metrics
    app[keys.CONFIG] = config
    app[keys.TICK_AGE] = last_tick_age
    app[keys.CLOCK] = clock
    app[keys.CANCEL_FOLLOW] = cancel_follow_seconds
    app[keys.GUARD] = guard
    app[keys.DURATIONS] = durations if durations is not None else Durations()
    app[keys.DOCUMENT] = json.dumps(document, separators=(",", ":")).encode("utf-8")
    app[keys.API_TOKENS] = api_tokens
    add_routes(app.router)
    add_page_routes(app.router)
    return app


async def start_api(app: web.Application, config: ApiConfig) -> web.AppRunner:
    """Listen on the unix socket when one is configured, else on bind:port. The access log
    is off: request lines would be noise, and headers (Authorization) must never be logged.
    Idle and slow-header clients are dropped after `idle_timeout_seconds`; a failure to
    listen is one `ApiStartError` line."""
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        keepalive_timeout=config.idle_timeout_seconds,
        lingering_time=min(config.idle_timeout_seconds, LINGERING_SECONDS),
        logger=apiguard.ProtocolLog(logging.getLogger(f"{__name__}.http"), {}),
    )
    await runner.setup()
    guard = app[keys.GUARD]
    assert runner.server is not None
    guard.attach(runner.server)
    try:
        site: web.BaseSite
        if config.unix_socket:
            apiguard.check_unix_socket(config.unix_socket)
            site = GuardedSite(runner, guard, path=config.unix_socket)
            where = config.unix_socket
        else:
            site = GuardedSite(runner, guard, host=config.bind, port=config.port)
            where = f"{config.bind}:{config.port}"
        try:
            await site.start()
        except OSError as exc:
            raise apiguard.listen_error(where, exc) from None
        if config.unix_socket:
            os.chmod(config.unix_socket, UNIX_SOCKET_MODE)
    except BaseException:
        await runner.cleanup()
        raise
    where = ", ".join(_address(a) for a in runner.addresses) or site.name
    logger.info(
        "HTTP API listening on %s (at most %d connections)",
        where,
        guard.cap,
        extra={"action": "api_start"},
    )
    return runner


def connection_guard(app: web.Application) -> ConnectionGuard:
    """The API's connection cap, for the loop's accept() failure handler to shed idle ones."""
    return app[keys.GUARD]


def api_token_required(config: ApiConfig) -> bool:
    """A unix socket (file permissions) or a loopback bind needs no token; anything else does."""
    if config.unix_socket:
        return False
    return not is_loopback(config.bind.strip("[]"))


def _address(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)


# ---- middlewares -----------------------------------------------------------------------


@web.middleware
async def _error_middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Every error leaves as JSON, including aiohttp's own 404/405/413."""
    try:
        return await handler(request)
    except ApiError as exc:
        response = _error(exc.status, exc.code, exc.message, exc.headers)
        if exc.status == 408:  # the rest of a slow body is not waited for
            response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow",)}
        code, message = _HTTP_ERRORS.get(exc.status, ("http_error", exc.reason))
        if exc.status == 413:
            limit = request.app[keys.CONFIG].max_body_bytes
            message = f"request body is larger than {limit} bytes"
        return _error(exc.status, code, message, headers)
    except StoreError as exc:
        logger.warning(
            "API request failed on the store: %s", exc, extra={"action": "api_store_error"}
        )
        return _error(
            503,
            "store_unavailable",
            one_line(str(exc)),
            {"Retry-After": str(DEFAULT_RETRY_AFTER_SECONDS)},
        )
    except ConnectionError as exc:
        logger.debug(
            "API client went away during %s %s: %s",
            request.method,
            request.path,
            exc,
            extra={"action": "api_client_gone"},
        )
        return _error(400, "incomplete_request", "the client went away")
    except Exception:
        logger.exception(
            "API request %s %s failed", request.method, request.path, extra={"action": "api_error"}
        )
        return _error(500, "internal_error", "internal error")


_HTTP_ERRORS: dict[int, tuple[str, str]] = {
    404: ("not_found", "no such resource"),
    405: ("method_not_allowed", "method not allowed on this resource"),
    413: ("payload_too_large", "request body is too large"),
}


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"code": code, "message": one_line(message) or code}}
    return web.json_response(body, status=status, headers=headers)


def _query_parameters(document: dict[str, Any]) -> dict[tuple[str, str], frozenset[str]]:
    """The query parameters each operation accepts, read from the OpenAPI document itself so
    the code and the document cannot disagree."""
    allowed = {}
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if isinstance(operation, dict) and "responses" in operation:
                names = frozenset(
                    p["name"] for p in operation.get("parameters", []) if p.get("in") == "query"
                )
                allowed[(method.upper(), path)] = names
    return allowed


def _query_middleware(allowed: dict[tuple[str, str], frozenset[str]]) -> Any:
    """Unknown query parameters are an error (400), not silently ignored: a typo such as
    `?stauts=Failed` would otherwise return every job."""

    @web.middleware
    async def middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
        route = request.match_info.route.resource
        key = (request.method, route.canonical if route is not None else "")
        names = allowed.get(key)
        if names is not None:
            unknown = sorted(set(request.query) - names)
            if unknown:
                raise bad_param(azure._clip(unknown[0], 40), "is not a parameter of this operation")
        return await handler(request)

    return middleware


def _browser_middleware(*, check_host: bool, extra_hosts: tuple[str, ...]) -> Any:
    """Keeps web pages out (see `apiguard`): a token-less API answers loopback Host names
    only; state-changing calls refuse foreign Origins and need a JSON content type."""

    @web.middleware
    async def middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        if check_host and not apiguard.host_allowed(host, extra_hosts):
            logger.info(
                "API refused a request for Host %r (not loopback; see api.allowed_hosts)",
                azure._clip(host or "", 80),
                extra={"action": "api_host_refused"},
            )
            raise ApiError(
                421,
                "misdirected_request",
                "this API answers loopback host names only (add others to api.allowed_hosts)",
            )
        routed = request.match_info.http_exception is None  # else a 404/405 follows anyway
        if routed and request.method in apiguard.STATE_CHANGING_METHODS:
            if not apiguard.origin_allowed(request.headers.get("Origin"), host):
                raise ApiError(403, "forbidden_origin", "cross-origin requests are refused")
            if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
                raise ApiError(403, "forbidden_origin", "cross-site requests are refused")
            if not apiguard.is_json_content_type(request.headers.get("Content-Type", "")):
                raise ApiError(
                    415,
                    "unsupported_media_type",
                    "state-changing calls need Content-Type: application/json",
                )
        return await handler(request)

    return middleware


def _auth_middleware(tokens: ApiTokens) -> Any:
    @web.middleware
    async def auth(request: web.Request, handler: _Handler) -> web.StreamResponse:
        """/v1, /metrics and the page need a token (compared in constant time): the full
        one may do anything, the read-only one and a page session only GET. A browser
        without a session gets the login form instead of the page."""
        if not tokens.required or not _guarded(request.path):
            return await handler(request)
        header = request.headers.get("Authorization")
        if header is not None:
            access = tokens.bearer(header)
        else:
            cookie = request.cookies.get(SESSION_COOKIE)
            access = tokens.session(cookie, request.app[keys.CLOCK]())
        if access is None:
            if header is None and is_page_path(request.path) and _browser_navigation(request):
                return login_page()
            raise ApiError(
                401,
                "unauthorized",
                "missing or wrong bearer token",
                {"WWW-Authenticate": 'Bearer realm="backupjobd"'},
            )
        if access is Access.READ and request.method != "GET":
            raise ApiError(403, "read_only", "this token may only read (GET)")
        return await handler(request)

    return auth


def _browser_navigation(request: web.Request) -> bool:
    """A browser loading a page (it asks for HTML); a script gets the JSON 401 instead."""
    return request.method == "GET" and "text/html" in request.headers.get("Accept", "")


def _guarded(path: str) -> bool:
    return path == "/metrics" or path == "/v1" or path.startswith("/v1/") or is_page_path(path)
