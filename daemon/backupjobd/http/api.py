"""The HTTP API served next to the daemon: register jobs, read them, stop or cancel them,
and answer health, readiness and metrics probes.

Registration goes through the same parser and safety rules as `backupjobd register -`
(an operation URL on a foreign host is refused, so the API cannot be used to send our ARM
token elsewhere). Every answer is JSON; every error is `{"error": {"code", "message"}}`.
The OpenAPI 3.1 document is built here from the same constants the handlers enforce, so
the two cannot drift apart silently (a schemathesis suite checks them against each other).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import os
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from aiohttp import web

from backupjobd.adapters.arm import ArmClient
from backupjobd.adapters.credentials import TokenProvider
from backupjobd.adapters.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from backupjobd.adapters.metrics import Metrics
from backupjobd.config import ApiConfig, is_loopback
from backupjobd.core import azure, registration
from backupjobd.core.model import JobRecord
from backupjobd.core.registration import Endpoint
from backupjobd.errors import (
    BackupJobdError,
    InvalidInput,
    NotFound,
    PermanentError,
    StoreError,
    TransientError,
)
from backupjobd.http import guard as apiguard
from backupjobd.http.guard import ConnectionGuard, GuardedSite
from backupjobd.store import Store

logger = logging.getLogger(__name__)

__all__ = [
    "api_token_required",
    "build_api_app",
    "connection_guard",
    "openapi_document",
    "start_api",
]

API_VERSION = "1.0.0"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_STATUS_LENGTH = 64
UNIX_SOCKET_MODE = 0o660
READY_CHECK_TIMEOUT_SECONDS = 5.0
DEFAULT_RETRY_AFTER_SECONDS = 5
DEFAULT_CANCEL_FOLLOW_SECONDS = 10.0
# How long the rest of a body that a handler did not read is waited for before closing.
LINGERING_SECONDS = 2.0

# Patterns shared by the handlers and the OpenAPI document (ECMA- and Python-compatible).
GUID = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
# 1 to 90 characters, no "..", not ending in "." (the Unicode letters Azure also allows are
# accepted but not described).
_RESOURCE_GROUP = r"(?:[-A-Za-z0-9_()]|\.(?=[-A-Za-z0-9_()])){1,90}"
_VAULT = (
    f"/subscriptions/{GUID}/resourceGroups/{_RESOURCE_GROUP}"
    r"/providers/Microsoft\.RecoveryServices/vaults/[A-Za-z0-9][A-Za-z0-9_.-]{0,49}"
)
GUID_PATTERN = f"^{GUID}$"
VAULT_ID_PATTERN = f"^{_VAULT}/?$"
JOB_ARM_ID_PATTERN = f"^{_VAULT}/backupJobs/{GUID}/?$"
VAULT_CHILD_ID_PATTERN = f"^{_VAULT}(/[\\s\\S]*)?$"
CURSOR_PATTERN = "^[0-9]{1,18}$"
_SEGMENT = "[A-Za-z0-9;_-][A-Za-z0-9;_.-]{0,63}"
_OPERATION_ID = "[A-Za-z0-9][A-Za-z0-9_=-]{0,199}"
_OPERATION_PATH = (
    f"{_VAULT}(?:/backupFabrics/{_SEGMENT}/protectionContainers/{_SEGMENT}"
    f"/protectedItems/{_SEGMENT}/(?:operationsStatus|operationResults)"
    f"|/backupOperations|/backupOperationResults|/backupJobs/{GUID}/operationResults)"
    f"/{_OPERATION_ID}/?(?:[?][A-Za-z0-9=&._-]*)?"
)
_GUID_RE = re.compile(GUID_PATTERN.replace("$", r"\Z"))
_CURSOR_RE = re.compile(CURSOR_PATTERN.replace("$", r"\Z"))
_INT_RE = re.compile(r"^[0-9]{1,9}\Z")
_DATETIME_RE = re.compile(
    r"^(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})[Tt](?P<h>[0-9]{2}):(?P<m>[0-9]{2}):(?P<s>[0-9]{2})"
    r"(?P<frac>\.[0-9]+)?(?P<zone>[Zz]|[+-][0-9]{2}:[0-9]{2})?\Z"
)
_BOOLEANS = {"true": True, "false": False}

_STORE: web.AppKey[Store] = web.AppKey("store", Store)
_ARM: web.AppKey[ArmClient] = web.AppKey("arm", ArmClient)
_TOKENS: web.AppKey[TokenProvider] = web.AppKey("tokens", TokenProvider)
_ENDPOINT: web.AppKey[Endpoint] = web.AppKey("endpoint", Endpoint)
_METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
_CONFIG: web.AppKey[ApiConfig] = web.AppKey("config", ApiConfig)
_TICK_AGE: web.AppKey[Callable[[], float | None]] = web.AppKey("last_tick_age")
_CLOCK: web.AppKey[Callable[[], datetime]] = web.AppKey("clock")
_DOCUMENT: web.AppKey[bytes] = web.AppKey("openapi", bytes)
_CANCEL_FOLLOW: web.AppKey[float] = web.AppKey("cancel_follow_seconds", float)
_GUARD: web.AppKey[ConnectionGuard] = web.AppKey("connection_guard", ConnectionGuard)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error answer: HTTP status, a stable code and one line for humans."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def build_api_app(
    *,
    store: Store,
    arm: ArmClient,
    tokens: TokenProvider,
    endpoint: Endpoint,
    metrics: Metrics,
    config: ApiConfig,
    api_token: str | None,
    last_tick_age: Callable[[], float | None],
    clock: Callable[[], datetime],
    cancel_follow_seconds: float = DEFAULT_CANCEL_FOLLOW_SECONDS,
) -> web.Application:
    """The aiohttp application; `api_token` (when not None) guards /v1 and /metrics."""
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
            _auth_middleware(api_token),
            _browser_middleware(
                check_host=api_token is None and not config.unix_socket,
                extra_hosts=config.allowed_hosts,
            ),
            _query_middleware(_query_parameters(document)),
        ],
    )
    app[_STORE] = store
    app[_ARM] = arm
    app[_TOKENS] = tokens
    app[_ENDPOINT] = endpoint
    app[_METRICS] = metrics
    app[_CONFIG] = config
    app[_TICK_AGE] = last_tick_age
    app[_CLOCK] = clock
    app[_CANCEL_FOLLOW] = cancel_follow_seconds
    app[_GUARD] = guard
    app[_DOCUMENT] = json.dumps(document, separators=(",", ":")).encode("utf-8")
    r = app.router
    r.add_post("/v1/jobs", _register)
    r.add_get("/v1/jobs", _list_jobs, allow_head=False)
    r.add_get("/v1/jobs/{job_id}", _show_job, allow_head=False)
    r.add_delete("/v1/jobs/{job_id}", _stop_job)
    r.add_get("/v1/jobs/{job_id}/history", _job_history, allow_head=False)
    r.add_post("/v1/jobs/{job_id}/cancel", _cancel_job)
    r.add_get("/healthz", _healthz, allow_head=False)
    r.add_get("/readyz", _readyz, allow_head=False)
    r.add_get("/metrics", _metrics, allow_head=False)
    r.add_get("/openapi.json", _openapi, allow_head=False)
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
    guard = app[_GUARD]
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
    return app[_GUARD]


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
            limit = request.app[_CONFIG].max_body_bytes
            message = f"request body is larger than {limit} bytes"
        return _error(exc.status, code, message, headers)
    except StoreError as exc:
        logger.warning(
            "API request failed on the store: %s", exc, extra={"action": "api_store_error"}
        )
        return _error(
            503,
            "store_unavailable",
            _one_line(str(exc)),
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
                raise _bad_param(
                    azure._clip(unknown[0], 40), "is not a parameter of this operation"
                )
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


def _auth_middleware(api_token: str | None) -> Any:
    expected = api_token.encode("utf-8") if api_token is not None else None

    @web.middleware
    async def auth(request: web.Request, handler: _Handler) -> web.StreamResponse:
        """/v1 and /metrics need the bearer token (compared in constant time)."""
        if expected is not None and _guarded(request.path):
            header = request.headers.get("Authorization", "")
            scheme, _, given = header.partition(" ")
            given_bytes = given.strip().encode("utf-8", "surrogateescape")
            matches = hmac.compare_digest(given_bytes, expected)
            if scheme.lower() != "bearer" or not matches:
                raise ApiError(
                    401,
                    "unauthorized",
                    "missing or wrong bearer token",
                    {"WWW-Authenticate": 'Bearer realm="backupjobd"'},
                )
        return await handler(request)

    return auth


def _guarded(path: str) -> bool:
    return path == "/metrics" or path == "/v1" or path.startswith("/v1/")


# ---- /v1/jobs --------------------------------------------------------------------------


async def _register(request: web.Request) -> web.StreamResponse:
    """Same forms, validation and all-or-nothing semantics as `backupjobd register -`."""
    app = request.app
    if not apiguard.is_json_content_type(request.content_type):
        raise ApiError(
            415, "unsupported_media_type", "the body must be JSON (Content-Type: application/json)"
        )
    hint = _vault_param(request)
    limit = app[_CONFIG].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "payload_too_large", f"request body is larger than {limit} bytes")
    try:
        async with asyncio.timeout(app[_CONFIG].body_timeout_seconds):
            raw = await request.read()
    except TimeoutError:
        raise ApiError(
            408, "request_timeout", "the request body did not arrive in time"
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_input", "the body is not UTF-8") from None
    try:
        docs = registration.parse_json_documents(text)
        regs = registration.parse_documents(docs, app[_ENDPOINT], hint)
    except InvalidInput as exc:
        logger.info("API registration refused: %s", exc, extra={"action": "api_register_refused"})
        raise ApiError(400, "invalid_input", _one_line(str(exc))) from None
    results = await app[_STORE].register(regs, app[_CLOCK]())
    created = sum(1 for r in results if r.created)
    logger.info(
        "API registered %d new of %d", created, len(results), extra={"action": "api_register"}
    )
    body = {
        "results": [
            {"kind": r.kind, "vault_id": r.vault_id, "id": r.ident, "created": r.created}
            for r in results
        ]
    }
    return web.json_response(body, status=201 if created else 200)


async def _list_jobs(request: web.Request) -> web.StreamResponse:
    """Keyset paging on the registration order: a cursor is the last pk of a page."""
    status = _single(request, "status")
    if status is not None and not 0 < len(status) <= MAX_STATUS_LENGTH:
        raise _bad_param("status", f"must be 1 to {MAX_STATUS_LENGTH} characters")
    vault = _vault_param(request)
    finished = _bool_param(request, "finished")
    stuck = _bool_param(request, "stuck")
    since = _datetime_param(request, "since")
    limit = DEFAULT_LIMIT
    raw_limit = _single(request, "limit")
    if raw_limit is not None:
        if not _INT_RE.match(raw_limit) or not 1 <= int(raw_limit) <= MAX_LIMIT:
            raise _bad_param("limit", f"must be an integer from 1 to {MAX_LIMIT}")
        limit = int(raw_limit)
    after_pk = None
    cursor = _single(request, "cursor")
    if cursor is not None:
        if not _CURSOR_RE.match(cursor):
            raise _bad_param("cursor", "is not a cursor this API returned")
        after_pk = int(cursor)
    jobs = await request.app[_STORE].list_jobs(
        status=status,
        limit=limit + 1,
        stuck=bool(stuck),
        vault_id=vault.id if vault else None,
        finished=finished,
        since=since,
        after_pk=after_pk,
    )
    page = jobs[:limit]
    next_cursor = str(page[-1].pk) if len(jobs) > limit else None
    return web.json_response({"jobs": [j.to_json() for j in page], "next_cursor": next_cursor})


async def _show_job(request: web.Request) -> web.StreamResponse:
    return web.json_response((await _one_job(request)).to_json())


async def _job_history(request: web.Request) -> web.StreamResponse:
    """The same document as `backupjobd jobs history --json`."""
    job = await _one_job(request)
    transitions, snapshots = await request.app[_STORE].history(job.pk)
    return web.json_response(
        {
            "job": job.to_json(),
            "transitions": [t.to_json() for t in transitions],
            "snapshots": [s.to_json() for s in snapshots],
        }
    )


async def _stop_job(request: web.Request) -> web.StreamResponse:
    """Stop polling; transitions and snapshots stay."""
    store = request.app[_STORE]
    job = await _one_job(request)
    if not await store.stop_tracking(job, request.app[_CLOCK]()):
        raise ApiError(
            409, "not_active", f"job {job.job_id} is not tracked actively ({job.tracking.value})"
        )
    logger.info(
        "API stopped tracking job %s",
        job.job_id,
        extra={"action": "api_stop", "job_id": job.job_id, "vault": job.vault_id},
    )
    current = [j for j in await store.find_jobs(job.job_id) if j.pk == job.pk]
    return web.json_response((current[0] if current else job).to_json())


async def _cancel_job(request: web.Request) -> web.StreamResponse:
    """Ask Azure to cancel; the job's own polls then record Cancelling and Cancelled."""
    job = await _one_job(request)
    vault = azure.vault_from_id(job.vault_id)
    try:
        outcome = await request.app[_ARM].cancel_job(
            vault, job.job_id, follow_seconds=request.app[_CANCEL_FOLLOW]
        )
    except NotFound as exc:
        raise ApiError(404, exc.code or "NotFound", _one_line(str(exc))) from None
    except TransientError as exc:
        retry = DEFAULT_RETRY_AFTER_SECONDS
        if exc.retry_after is not None:
            retry = max(1, math.ceil(exc.retry_after))
        raise ApiError(
            503, "azure_unavailable", _one_line(str(exc)), {"Retry-After": str(retry)}
        ) from None
    except PermanentError as exc:
        if exc.status is None or not 400 <= exc.status < 500:
            raise ApiError(502, "azure_error", _one_line(str(exc))) from None
        status = 400 if exc.status == 400 else 409
        raise ApiError(status, exc.code or f"Azure{exc.status}", _one_line(str(exc))) from None
    except BackupJobdError as exc:  # CredentialError and the like: the daemon's side
        raise ApiError(502, "azure_error", _one_line(str(exc))) from None
    logger.info(
        "API asked Azure to cancel job %s: %s",
        job.job_id,
        outcome,
        extra={"action": "api_cancel", "job_id": job.job_id, "vault": job.vault_id},
    )
    return web.json_response({"job_id": job.job_id, "cancel": outcome}, status=202)


async def _one_job(request: web.Request) -> JobRecord:
    job_id = request.match_info["job_id"]
    if not _GUID_RE.match(job_id):
        raise _bad_param("job_id", "must be a GUID")
    vault = _vault_param(request)
    found = await request.app[_STORE].find_jobs(job_id.lower())
    if vault is not None:
        found = [j for j in found if j.vault_id.lower().rstrip("/") == vault.key]
    if not found:
        raise ApiError(404, "not_found", f"job {job_id.lower()} is not tracked")
    if len(found) > 1:
        raise ApiError(
            409,
            "ambiguous",
            f"job {job_id.lower()} is tracked in {len(found)} vaults: give ?vault=",
        )
    return found[0]


# ---- probes and documents --------------------------------------------------------------


async def _healthz(request: web.Request) -> web.StreamResponse:
    """Alive means the dispatcher ticked recently (a wedged loop must be restarted)."""
    age = request.app[_TICK_AGE]()
    if age is not None and not math.isfinite(age):
        age = None
    healthy = age is not None and age <= request.app[_CONFIG].healthy_tick_age_seconds
    body = {"status": "ok" if healthy else "unhealthy", "last_tick_age_seconds": age}
    return web.json_response(body, status=200 if healthy else 503)


async def _readyz(request: web.Request) -> web.StreamResponse:
    """Ready means the database answers at the schema head and a token can be obtained."""
    store, tokens = request.app[_STORE], request.app[_TOKENS]

    async def database() -> None:
        await store.check_schema()

    async def credential() -> None:
        await tokens.token()

    checks: dict[str, dict[str, Any]] = {}
    for name, check in (("database", database), ("credential", credential)):
        try:
            async with asyncio.timeout(READY_CHECK_TIMEOUT_SECONDS):
                await check()
        except TimeoutError:
            checks[name] = {
                "ok": False,
                "error": f"no answer within {READY_CHECK_TIMEOUT_SECONDS:g} s",
            }
        except BackupJobdError as exc:  # our messages carry no secrets
            checks[name] = {"ok": False, "error": _one_line(str(exc))}
        except Exception as exc:  # a library message might quote anything: name the type only
            checks[name] = {"ok": False, "error": type(exc).__name__}
        else:
            checks[name] = {"ok": True, "error": None}
    failing = [name for name, result in checks.items() if not result["ok"]]
    if failing:
        logger.warning("not ready: %s", ", ".join(failing), extra={"action": "api_not_ready"})
    body = {"status": "not_ready" if failing else "ready", "checks": checks, "failing": failing}
    return web.json_response(body, status=503 if failing else 200)


async def _metrics(request: web.Request) -> web.StreamResponse:
    """Gauges that describe stored state are refreshed just before each scrape."""
    metrics = request.app[_METRICS]
    metrics.set_job_counts(*await request.app[_STORE].job_status_counts())
    metrics.set_budget(request.app[_ARM].budget)
    outbox = await request.app[_STORE].outbox_counts()
    metrics.set_outbox(outbox.get("pending", 0), outbox.get("dead", 0))
    return web.Response(body=metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})


async def _openapi(request: web.Request) -> web.StreamResponse:
    return web.Response(body=request.app[_DOCUMENT], content_type="application/json")


# ---- parameters ------------------------------------------------------------------------


def _single(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise _bad_param(name, "is given more than once")
    return values[0] if values else None


def _vault_param(request: web.Request) -> azure.VaultRef | None:
    value = _single(request, "vault")
    if value is None:
        return None
    if value != value.strip():
        raise _bad_param("vault", "must be a Recovery Services vault ARM id")
    try:
        return azure.vault_from_id(value)
    except InvalidInput:
        raise _bad_param("vault", "must be a Recovery Services vault ARM id") from None


def _bool_param(request: web.Request, name: str) -> bool | None:
    value = _single(request, name)
    if value is None:
        return None
    if value not in _BOOLEANS:
        raise _bad_param(name, "must be true or false")
    return _BOOLEANS[value]


def _datetime_param(request: web.Request, name: str) -> datetime | None:
    """RFC 3339 date-time (a missing offset means UTC; a leap second counts as :59)."""
    value = _single(request, name)
    if value is None:
        return None
    match = _DATETIME_RE.match(value)
    if match is None:
        raise _bad_param(name, "must be an RFC 3339 date-time, e.g. 2026-03-01T12:00:00Z")
    try:
        zone = match["zone"]
        tz = UTC
        if zone and zone not in ("Z", "z"):
            sign = 1 if zone[0] == "+" else -1
            hours, minutes = int(zone[1:3]), int(zone[4:6])
            if hours > 23 or minutes > 59:
                raise ValueError("offset out of range")
            tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
        year, month, day = (int(p) for p in match["date"].split("-"))
        hour, minute, second = int(match["h"]), int(match["m"]), min(int(match["s"]), 59)
        if second == 59 and int(match["s"]) == 60 and not (hour == 23 and minute == 59):
            raise ValueError("a leap second only ends a day")
        micro = int((match["frac"] or ".0")[1:7].ljust(6, "0"))
        if year == 0:  # RFC 3339 allows year 0000; Python does not: nothing is earlier
            return datetime.min.replace(tzinfo=UTC)
        parsed = datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
    except ValueError:
        raise _bad_param(name, "is not a valid date-time") from None
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        return (datetime.min if parsed.year == 1 else datetime.max).replace(tzinfo=UTC)


def _bad_param(name: str, problem: str) -> ApiError:
    return ApiError(400, "invalid_parameter", f"parameter {name} {problem}")


def _one_line(text: str) -> str:
    line = text.splitlines()[0] if text else ""
    return azure._clip(line, 500) if len(line) > 500 else line


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"code": code, "message": _one_line(message) or code}}
    return web.json_response(body, status=status, headers=headers)


# ---- the OpenAPI document --------------------------------------------------------------


def _escape_host(host: str) -> str:
    escaped = host.replace(".", r"\.")
    return rf"\[{escaped}\]" if ":" in host else escaped


def operation_url_pattern(endpoint: Endpoint) -> str:
    """Operation URLs the API accepts: on the configured management endpoint only."""
    default = 443 if endpoint.scheme == "https" else 80
    port = f"(?::{endpoint.port})?" if endpoint.port == default else f":{endpoint.port}"
    return f"^{endpoint.scheme}://{_escape_host(endpoint.host)}{port}{_OPERATION_PATH}$"


def openapi_document(
    endpoint: Endpoint, *, secured: bool, config: ApiConfig | None = None
) -> dict[str, Any]:
    """The OpenAPI 3.1 description of exactly this app (operation URLs name its endpoint)."""
    max_body = (config or ApiConfig()).max_body_bytes
    ref = _ref
    nullable_str = {"type": ["string", "null"]}
    nullable_time = {"type": ["string", "null"], "format": "date-time"}
    job_props: dict[str, Any] = {
        "job_id": {"type": "string", "pattern": "^[0-9a-f-]{36}$"},
        "vault_id": {"type": "string"},
        "status": {**nullable_str, "description": "Azure job status; null until first seen"},
        "job_type": nullable_str,
        "operation": nullable_str,
        "entity_friendly_name": nullable_str,
        "backup_management_type": nullable_str,
        "start_time": nullable_time,
        "end_time": nullable_time,
        "finished": {"type": "boolean"},
        "tracking": {"type": "string", "enum": ["active", "finished", "lost", "stopped"]},
        "source": {"type": "string"},
        "registered_at": {"type": "string", "format": "date-time"},
        "last_polled_at": nullable_time,
        "next_poll_at": nullable_time,
        "finished_at": nullable_time,
        "poll_count": {"type": "integer", "minimum": 0},
        "error_count": {"type": "integer", "minimum": 0},
        "last_error": nullable_str,
        "last_error_at": nullable_time,
        "stuck": {"type": "boolean"},
        "stuck_since": nullable_time,
    }
    op_url = {"type": "string", "pattern": operation_url_pattern(endpoint)}
    vault_id = {"type": "string", "pattern": VAULT_ID_PATTERN}
    guid = {"type": "string", "pattern": GUID_PATTERN}
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error"],
            "additionalProperties": False,
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "additionalProperties": False,
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                }
            },
        },
        "Job": {
            "type": "object",
            "required": list(job_props),
            "additionalProperties": False,
            "properties": job_props,
        },
        "JobPage": {
            "type": "object",
            "required": ["jobs", "next_cursor"],
            "additionalProperties": False,
            "properties": {
                "jobs": {"type": "array", "items": ref("Job")},
                "next_cursor": {
                    "type": ["string", "null"],
                    "description": "Pass as ?cursor= for the next page; null on the last page",
                },
            },
        },
        "History": {
            "type": "object",
            "required": ["job", "transitions", "snapshots"],
            "additionalProperties": False,
            "properties": {
                "job": ref("Job"),
                "transitions": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["from_status", "to_status", "observed_at"],
                        "additionalProperties": False,
                        "properties": {
                            "from_status": nullable_str,
                            "to_status": {"type": "string"},
                            "observed_at": {"type": "string", "format": "date-time"},
                        },
                    },
                },
                "snapshots": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["observed_at", "status", "properties"],
                        "additionalProperties": False,
                        "properties": {
                            "observed_at": {"type": "string", "format": "date-time"},
                            "status": {"type": "string"},
                            "properties": {"type": "object"},
                        },
                    },
                },
            },
        },
        "RegisterResults": {
            "type": "object",
            "required": ["results"],
            "additionalProperties": False,
            "properties": {
                "results": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["kind", "vault_id", "id", "created"],
                        "additionalProperties": False,
                        "properties": {
                            "kind": {"type": "string", "enum": ["job", "operation"]},
                            "vault_id": {"type": "string"},
                            "id": {"type": "string"},
                            "created": {"type": "boolean"},
                        },
                    },
                }
            },
        },
        "Cancel": {
            "type": "object",
            "required": ["job_id", "cancel"],
            "additionalProperties": False,
            "properties": {
                "job_id": {"type": "string"},
                "cancel": {"type": "string", "enum": ["completed", "accepted"]},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "last_tick_age_seconds"],
            "additionalProperties": False,
            "properties": {
                "status": {"type": "string", "enum": ["ok", "unhealthy"]},
                "last_tick_age_seconds": {"type": ["number", "null"]},
            },
        },
        "Ready": {
            "type": "object",
            "required": ["status", "checks", "failing"],
            "additionalProperties": False,
            "properties": {
                "status": {"type": "string", "enum": ["ready", "not_ready"]},
                "checks": {
                    "type": "object",
                    "required": ["database", "credential"],
                    "additionalProperties": False,
                    "properties": {
                        name: {
                            "type": "object",
                            "required": ["ok", "error"],
                            "additionalProperties": False,
                            "properties": {"ok": {"type": "boolean"}, "error": nullable_str},
                        }
                        for name in ("database", "credential")
                    },
                },
                "failing": {
                    "type": "array",
                    "items": {"type": "string", "enum": ["database", "credential"]},
                },
            },
        },
        "JobArmId": {
            "type": "string",
            "pattern": JOB_ARM_ID_PATTERN,
            "description": "A job ARM id: /subscriptions/…/vaults/{v}/backupJobs/{guid}",
        },
        "OperationUrl": {
            **op_url,
            "description": "An Azure-AsyncOperation or Location URL on the configured "
            "management endpoint (URLs on other hosts are refused: the daemon would send its "
            "token there)",
        },
        "JobIdWithVault": {
            "type": "object",
            "required": ["job_id", "vault_id"],
            "properties": {"job_id": guid, "vault_id": vault_id},
        },
        "JobResource": {
            "type": "object",
            "description": "A JobResource body (what `az backup protection backup-now` prints) "
            "or any object whose id is a job ARM id",
            "required": ["id"],
            "properties": {
                "id": ref("JobArmId"),
                "properties": {"description": "The job's properties (not read)"},
            },
        },
        "OperationStatus": {
            "type": "object",
            "description": "An operation-status body that names its job(s); the vault comes "
            "from its id",
            "required": ["status", "id", "properties"],
            "properties": {
                "status": {
                    "type": "string",
                    "minLength": 1,
                    "not": {"enum": sorted(azure.OPERATION_FAILED_STATUSES)},
                    "examples": ["Succeeded"],
                },
                "id": {"type": "string", "pattern": VAULT_CHILD_ID_PATTERN},
                "properties": {
                    "type": "object",
                    "properties": {
                        "objectType": {
                            "examples": [
                                "OperationStatusJobExtendedInfo",
                                "OperationStatusJobsExtendedInfo",
                            ]
                        },
                        "jobId": {"type": ["string", "null"], "pattern": GUID_PATTERN},
                        "jobIds": {"type": ["array", "null"], "items": guid},
                    },
                    "anyOf": [
                        {"required": ["jobId"], "properties": {"jobId": {"type": "string"}}},
                        {
                            "required": ["jobIds"],
                            "properties": {"jobIds": {"type": "array", "minItems": 1}},
                        },
                    ],
                },
            },
        },
        "AcceptedHeaders": {
            "type": "object",
            "description": "The headers of a trigger call's 202 answer",
            "required": ["headers"],
            "properties": {
                "headers": {
                    "type": "object",
                    "anyOf": [{"required": ["Azure-AsyncOperation"]}, {"required": ["Location"]}],
                    "properties": {
                        "Azure-AsyncOperation": ref("OperationUrl"),
                        "Location": ref("OperationUrl"),
                    },
                }
            },
        },
        "OperationUrlObject": {
            "type": "object",
            "required": ["operation_url"],
            "properties": {"operation_url": ref("OperationUrl")},
        },
        "RegistrationDocument": {
            "anyOf": [
                ref("JobArmId"),
                ref("OperationUrl"),
                ref("JobIdWithVault"),
                ref("JobResource"),
                ref("OperationStatus"),
                ref("AcceptedHeaders"),
                ref("OperationUrlObject"),
            ]
        },
        "Registration": {
            "anyOf": [
                ref("RegistrationDocument"),
                {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": registration.MAX_DOCUMENTS,
                    "items": ref("RegistrationDocument"),
                },
            ]
        },
    }
    error = _error_response
    unauthorized = (
        {
            "401": {
                "description": "Missing or wrong bearer token",
                "headers": {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
                "content": _json(ref("Error")),
            }
        }
        if secured
        else {}
    )
    unavailable = {
        "503": {
            "description": "The database (or Azure) is unavailable; retry later",
            "headers": {"Retry-After": {"required": True, "schema": {"type": "string"}}},
            "content": _json(ref("Error")),
        }
    }
    job_param = {
        "name": "job_id",
        "in": "path",
        "required": True,
        "schema": guid,
        "description": "The job GUID",
    }
    vault_param = {
        "name": "vault",
        "in": "query",
        "required": False,
        "schema": vault_id,
        "description": "The vault ARM id, when the GUID is tracked in several vaults",
    }
    security: list[dict[str, list[str]]] = [{"bearer": []}] if secured else []

    def v1(op: dict[str, Any], *codes: str) -> dict[str, Any]:
        responses = dict(op.pop("responses"))
        for code in codes:
            responses[code] = error(code)
        responses.update(unauthorized)
        responses.update(unavailable)
        return {**op, "security": security, "responses": responses}

    job_ops = {
        "get": v1(
            {
                "operationId": "showJob",
                "summary": "One job's current state",
                "parameters": [job_param, vault_param],
                "responses": {"200": {"description": "The job", "content": _json(ref("Job"))}},
            },
            "400",
            "404",
            "409",
        ),
        "delete": v1(
            {
                "operationId": "stopTracking",
                "summary": "Stop polling the job (its history is kept)",
                "parameters": [job_param, vault_param],
                "responses": {
                    "200": {"description": "The stopped job", "content": _json(ref("Job"))}
                },
            },
            "400",
            "404",
            "409",
        ),
    }
    paths: dict[str, Any] = {
        "/v1/jobs": {
            "post": v1(
                {
                    "operationId": "registerJobs",
                    "summary": "Start tracking jobs or operations (any registration form)",
                    "description": "One document or an array; every document must be valid "
                    "or nothing is stored. A job id without a vault_id, or an operation-status "
                    "body without a vault id, takes the vault from ?vault=.",
                    "parameters": [
                        {
                            **vault_param,
                            "description": "Vault ARM id for documents that do not name one",
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": ref("Registration")}},
                    },
                    "responses": {
                        "200": {
                            "description": "Everything was already tracked",
                            "content": _json(ref("RegisterResults")),
                        },
                        "201": {
                            "description": "At least one job or operation is newly tracked",
                            "content": _json(ref("RegisterResults")),
                        },
                        "413": {
                            "description": f"The body is larger than {max_body} bytes",
                            "content": _json(ref("Error")),
                        },
                    },
                },
                "400",
                "415",
            ),
            "get": v1(
                {
                    "operationId": "listJobs",
                    "summary": "Tracked jobs in registration order, a page at a time",
                    "parameters": [
                        {
                            "name": "status",
                            "in": "query",
                            "schema": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": MAX_STATUS_LENGTH,
                            },
                            "description": "An Azure status (case-insensitive) or a tracking "
                            "state: active, finished, lost, stopped",
                        },
                        vault_param | {"description": "Only jobs of this vault"},
                        {"name": "finished", "in": "query", "schema": {"type": "boolean"}},
                        {
                            "name": "stuck",
                            "in": "query",
                            "schema": {"type": "boolean"},
                            "description": "true: only jobs flagged stuck",
                        },
                        {
                            "name": "since",
                            "in": "query",
                            "schema": {"type": "string", "format": "date-time"},
                            "description": "Registered at or after this time",
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": MAX_LIMIT,
                                "default": DEFAULT_LIMIT,
                            },
                        },
                        {
                            "name": "cursor",
                            "in": "query",
                            "schema": {"type": "string", "pattern": CURSOR_PATTERN},
                            "description": "next_cursor of the previous page (opaque)",
                        },
                    ],
                    "responses": {
                        "200": {"description": "One page", "content": _json(ref("JobPage"))}
                    },
                },
                "400",
            ),
        },
        "/v1/jobs/{job_id}": job_ops,
        "/v1/jobs/{job_id}/history": {
            "get": v1(
                {
                    "operationId": "jobHistory",
                    "summary": "Transitions and distinct snapshots, oldest first",
                    "parameters": [job_param, vault_param],
                    "responses": {
                        "200": {"description": "The history", "content": _json(ref("History"))}
                    },
                },
                "400",
                "404",
                "409",
            )
        },
        "/v1/jobs/{job_id}/cancel": {
            "post": v1(
                {
                    "operationId": "cancelJob",
                    "summary": "Ask Azure to cancel the job",
                    "description": "Azure's 400 answers 400 and its other 4xx answer 409, "
                    "with Azure's error code; Azure unreachable or throttling answers 503.",
                    "parameters": [job_param, vault_param],
                    "responses": {
                        "202": {
                            "description": "Azure accepted (or completed) the cancellation",
                            "content": _json(ref("Cancel")),
                        },
                        "502": {
                            "description": "Azure gave an answer the daemon cannot use",
                            "content": _json(ref("Error")),
                        },
                    },
                },
                "400",
                "404",
                "409",
            )
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Liveness: the dispatcher ticked recently",
                "security": [],
                "responses": {
                    "200": {"description": "Alive", "content": _json(ref("Health"))},
                    "503": {"description": "No recent tick", "content": _json(ref("Health"))},
                },
            }
        },
        "/readyz": {
            "get": {
                "operationId": "ready",
                "summary": "Readiness: database at the schema head and a token obtainable",
                "security": [],
                "responses": {
                    "200": {"description": "Ready", "content": _json(ref("Ready"))},
                    "503": {"description": "Not ready", "content": _json(ref("Ready"))},
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "security": security,
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **unauthorized,
                    **unavailable,
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": {"description": "OpenAPI 3.1", "content": _json({"type": "object"})}
                },
            }
        },
    }
    _browser_rules(paths, host_checked=not secured and not (config and config.unix_socket))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "backupjobd",
            "version": API_VERSION,
            "description": "Tracks Azure Backup jobs until they finish. Errors are "
            '{"error": {"code", "message"}}.',
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": security,
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


_ERROR_DESCRIPTIONS = {
    "400": "Bad input or parameters; nothing was stored",
    "404": "The job is not tracked",
    "409": "Conflict: the GUID is in several vaults (give ?vault=), the job is not active, "
    "or Azure refused",
    "403": "A foreign Origin (cross-site request from a web page)",
    "415": "The body is not JSON (state-changing calls need Content-Type: application/json)",
    "421": "The Host is not a loopback name (nor in api.allowed_hosts); the API has no token",
}


def _browser_rules(paths: dict[str, Any], *, host_checked: bool) -> None:
    """The answers of `_browser_middleware`, on every operation they can come from; the
    state-changing calls without a body of their own take an (ignored) JSON body, since
    they need its content type."""
    for item in paths.values():
        for method, operation in item.items():
            responses = operation["responses"]
            if host_checked:
                responses["421"] = _error_response("421")
            if method.upper() in apiguard.STATE_CHANGING_METHODS:
                responses["403"] = _error_response("403")
                responses["415"] = _error_response("415")
                operation.setdefault(
                    "requestBody",
                    {
                        "required": True,
                        "description": "Ignored; the call needs Content-Type: application/json "
                        "(which a browser cannot send cross-site without a preflight)",
                        "content": {"application/json": {"schema": {}}},
                    },
                )


def _error_response(code: str) -> dict[str, Any]:
    return {"description": _ERROR_DESCRIPTIONS[code], "content": _json(_ref("Error"))}
