"""The API's handlers: /v1/jobs (register, list, show, history, stop, cancel), the health,
readiness and metrics probes and the OpenAPI document.

Registration goes through the same parser and safety rules as `backupjobd register -`
(an operation URL on a foreign host is refused, so the API cannot be used to send our ARM
token elsewhere). Errors are raised as `ApiError`; the app's middleware answers them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from backupjobd.adapters.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from backupjobd.core import azure, registration
from backupjobd.core.decisions import Tracking
from backupjobd.core.leases import LEASE_SPAN as REPLICA_WINDOW
from backupjobd.core.model import JobRecord, OperationRecord
from backupjobd.core.views import REPLICA_VIEW, render
from backupjobd.errors import (
    BackupJobdError,
    InvalidInput,
    NotFound,
    PermanentError,
    TransientError,
)
from backupjobd.http import guard as apiguard
from backupjobd.http import keys
from backupjobd.http.params import (
    ApiError,
    bad_param,
    bool_param,
    cursor_param,
    datetime_param,
    job_id_param,
    limit_param,
    one_line,
    status_param,
    timeout_param,
    vault_param,
)
from backupjobd.store import Store

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_RETRY_AFTER_SECONDS", "READY_CHECK_TIMEOUT_SECONDS", "add_routes"]

READY_CHECK_TIMEOUT_SECONDS = 5.0
WAIT_POLL_SECONDS = 0.5
DEFAULT_RETRY_AFTER_SECONDS = 5


def add_routes(router: web.UrlDispatcher) -> None:
    """Every route the OpenAPI document describes (HEAD is not offered)."""
    router.add_post("/v1/jobs", _register)
    router.add_get("/v1/jobs", _list_jobs, allow_head=False)
    router.add_get("/v1/jobs/{job_id}", _show_job, allow_head=False)
    router.add_delete("/v1/jobs/{job_id}", _stop_job)
    router.add_get("/v1/jobs/{job_id}/history", _job_history, allow_head=False)
    router.add_get("/v1/jobs/{job_id}/wait", _wait_job, allow_head=False)
    router.add_post("/v1/jobs/{job_id}/cancel", _cancel_job)
    router.add_get("/v1/operations", _list_operations, allow_head=False)
    router.add_get("/v1/operations/{operation_id}", _show_operation, allow_head=False)
    router.add_get("/v1/operations/{operation_id}/wait", _wait_operation, allow_head=False)
    router.add_get("/v1/replicas", _replicas, allow_head=False)
    router.add_get("/healthz", _healthz, allow_head=False)
    router.add_get("/readyz", _readyz, allow_head=False)
    router.add_get("/metrics", _metrics, allow_head=False)
    router.add_get("/openapi.json", _openapi, allow_head=False)


# ---- /v1/jobs --------------------------------------------------------------------------


async def _register(request: web.Request) -> web.StreamResponse:
    """Same forms, validation and all-or-nothing semantics as `backupjobd register -`."""
    app = request.app
    if not apiguard.is_json_content_type(request.content_type):
        raise ApiError(
            415, "unsupported_media_type", "the body must be JSON (Content-Type: application/json)"
        )
    hint = vault_param(request)
    limit = app[keys.CONFIG].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "payload_too_large", f"request body is larger than {limit} bytes")
    try:
        async with asyncio.timeout(app[keys.CONFIG].body_timeout_seconds):
            raw = await request.read()
    except TimeoutError:
        raise ApiError(408, "request_timeout", "the request body did not arrive in time") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_input", "the body is not UTF-8") from None
    try:
        docs = registration.parse_json_documents(text)
        regs = registration.parse_documents(docs, app[keys.ENDPOINT], hint)
    except InvalidInput as exc:
        logger.info("API registration refused: %s", exc, extra={"action": "api_register_refused"})
        raise ApiError(400, "invalid_input", one_line(str(exc))) from None
    results = await app[keys.STORE].register(regs, app[keys.CLOCK]())
    created = sum(1 for r in results if r.created)
    logger.info(
        "API registered %d new of %d", created, len(results), extra={"action": "api_register"}
    )
    body = {"results": [r.to_json() for r in results]}
    return web.json_response(body, status=201 if created else 200)


async def _list_jobs(request: web.Request) -> web.StreamResponse:
    """Keyset paging on the registration order: a cursor is the last pk of a page."""
    status = status_param(request)
    vault = vault_param(request)
    finished = bool_param(request, "finished")
    stuck = bool_param(request, "stuck")
    since = datetime_param(request, "since")
    limit = limit_param(request)
    after_pk = cursor_param(request)
    jobs = await request.app[keys.STORE].list_jobs(
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
    return web.json_response({"jobs": await _views(request, page), "next_cursor": next_cursor})


async def _views(request: web.Request, jobs: Sequence[JobRecord]) -> list[dict[str, Any]]:
    """The jobs as JSON, with when each should end (the tracker's learned durations)."""
    annotated = await request.app[keys.DURATIONS].annotated(request.app[keys.STORE], jobs)
    return [job.to_json() for job in annotated]


async def _view(request: web.Request, job: JobRecord) -> dict[str, Any]:
    return (await _views(request, [job]))[0]


async def _show_job(request: web.Request) -> web.StreamResponse:
    return web.json_response(await _view(request, await _one_job(request)))


async def _job_history(request: web.Request) -> web.StreamResponse:
    """The same document as `backupjobd jobs history --json`."""
    job = await _one_job(request)
    transitions, snapshots = await request.app[keys.STORE].history(job.pk)
    return web.json_response(
        {
            "job": await _view(request, job),
            "transitions": [t.to_json() for t in transitions],
            "snapshots": [s.to_json() for s in snapshots],
        }
    )


async def _wait_job(request: web.Request) -> web.StreamResponse:
    """Hold the request until the job is no longer tracked actively (200) or `?timeout=`
    seconds pass (202, the job as it stands): a CI step next to a sidecar waits with one
    curl. The database is read every WAIT_POLL_SECONDS; the daemon's pollers do the rest."""
    timeout = timeout_param(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    job = await _one_job(request)
    store = request.app[keys.STORE]
    while job.tracking is Tracking.ACTIVE and loop.time() < deadline:
        await asyncio.sleep(min(WAIT_POLL_SECONDS, max(0.0, deadline - loop.time())))
        job = next((j for j in await store.find_jobs(job.job_id) if j.pk == job.pk), job)
    done = job.tracking is not Tracking.ACTIVE
    return web.json_response(await _view(request, job), status=200 if done else 202)


async def _stop_job(request: web.Request) -> web.StreamResponse:
    """Stop polling; transitions and snapshots stay."""
    store = request.app[keys.STORE]
    job = await _one_job(request)
    if not await store.stop_tracking(job, request.app[keys.CLOCK]()):
        raise ApiError(
            409, "not_active", f"job {job.job_id} is not tracked actively ({job.tracking.value})"
        )
    logger.info(
        "API stopped tracking job %s",
        job.job_id,
        extra={"action": "api_stop", "job_id": job.job_id, "vault_id": job.vault_id},
    )
    current = [j for j in await store.find_jobs(job.job_id) if j.pk == job.pk]
    return web.json_response(await _view(request, current[0] if current else job))


async def _cancel_job(request: web.Request) -> web.StreamResponse:
    """Ask Azure to cancel; the job's own polls then record Cancelling and Cancelled."""
    job = await _one_job(request)
    refusal = azure.cancel_refusal(job.kind)
    if refusal is not None:
        raise ApiError(409, "CancelNotSupported", refusal)
    vault = azure.vault_from_id(job.vault_id)
    try:
        outcome = await request.app[keys.ARM].cancel_job(
            vault, job.job_id, follow_seconds=request.app[keys.CANCEL_FOLLOW]
        )
    except NotFound as exc:
        raise ApiError(404, exc.code or "NotFound", one_line(str(exc))) from None
    except TransientError as exc:
        retry = DEFAULT_RETRY_AFTER_SECONDS
        if exc.retry_after is not None:
            retry = max(1, math.ceil(exc.retry_after))
        raise ApiError(
            503, "azure_unavailable", one_line(str(exc)), {"Retry-After": str(retry)}
        ) from None
    except PermanentError as exc:
        if exc.status is None or not 400 <= exc.status < 500:
            raise ApiError(502, "azure_error", one_line(str(exc))) from None
        status = 400 if exc.status == 400 else 409
        raise ApiError(status, exc.code or f"Azure{exc.status}", one_line(str(exc))) from None
    except BackupJobdError as exc:  # CredentialError and the like: the daemon's side
        raise ApiError(502, "azure_error", one_line(str(exc))) from None
    logger.info(
        "API asked Azure to cancel job %s: %s",
        job.job_id,
        outcome,
        extra={"action": "api_cancel", "job_id": job.job_id, "vault_id": job.vault_id},
    )
    return web.json_response({"job_id": job.job_id, "cancel": outcome}, status=202)


async def _one_job(request: web.Request) -> JobRecord:
    job_id = job_id_param(request)
    vault = vault_param(request)
    found = await request.app[keys.STORE].find_jobs(job_id)
    if vault is not None:
        found = [j for j in found if j.vault_id.lower().rstrip("/") == vault.key]
    if not found:
        raise ApiError(404, "not_found", f"job {job_id} is not tracked")
    if len(found) > 1:
        raise ApiError(
            409, "ambiguous", f"job {job_id} is tracked in {len(found)} vaults: give ?vault="
        )
    return found[0]


# ---- probes and documents --------------------------------------------------------------


async def _list_operations(request: web.Request) -> web.StreamResponse:
    """Registered operations (triggers), as `operations list --json`, under a key."""
    ops = await request.app[keys.STORE].list_operations()
    return web.json_response({"operations": [op.to_json() for op in ops]})


async def _show_operation(request: web.Request) -> web.StreamResponse:
    """One operation: its status, the jobs it started, or why Azure rejected it. A sidecar
    that registered a 202 finds its job here."""
    return web.json_response((await _one_operation(request)).to_json())


async def _one_operation(request: web.Request) -> OperationRecord:
    try:
        wanted = azure.validate_operation_id(request.match_info["operation_id"])
    except InvalidInput:
        raise bad_param("operation_id", "is not an operation id") from None
    found = await request.app[keys.STORE].list_operations(wanted)
    if not found:
        raise ApiError(404, "not_found", f"operation {one_line(wanted[:80])} is not tracked")
    if len(found) > 1:
        raise ApiError(409, "ambiguous", f"operation {wanted} is tracked in {len(found)} vaults")
    return found[0]


async def _wait_operation(request: web.Request) -> web.StreamResponse:
    """`wait OP_ID` over HTTP: hold the request until the operation has named its jobs and
    none of them is tracked actively any more, or Azure rejected the trigger (200), or
    `?timeout=` seconds pass (202, as things stand)."""
    timeout = timeout_param(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    operation = await _one_operation(request)
    store = request.app[keys.STORE]
    while True:
        jobs = await _jobs_of(store, operation)
        done = operation.tracking is not Tracking.ACTIVE and all(
            j.tracking is not Tracking.ACTIVE for j in jobs
        )
        if done or loop.time() >= deadline:
            break
        await asyncio.sleep(min(WAIT_POLL_SECONDS, max(0.0, deadline - loop.time())))
        current = await store.list_operations(operation.operation_id)
        operation = next((op for op in current if op.pk == operation.pk), operation)
    body = {"operation": operation.to_json(), "jobs": await _views(request, jobs)}
    return web.json_response(body, status=200 if done else 202)


async def _jobs_of(store: Store, operation: OperationRecord) -> list[JobRecord]:
    vault = operation.vault_id.lower()
    found = [await store.find_jobs(job_id) for job_id in operation.job_ids]
    return [j for jobs in found for j in jobs if j.vault_id.lower() == vault]


async def _replicas(request: web.Request) -> web.StreamResponse:
    """The same document as `backupjobd replicas --json`, under a key."""
    now = request.app[keys.CLOCK]()
    found = await request.app[keys.STORE].replicas(now - REPLICA_WINDOW, now)
    return web.json_response({"replicas": [render(REPLICA_VIEW, r) for r in found]})


async def _healthz(request: web.Request) -> web.StreamResponse:
    """Alive means the dispatcher ticked recently (a wedged loop must be restarted)."""
    age = request.app[keys.TICK_AGE]()
    if age is not None and not math.isfinite(age):
        age = None
    healthy = age is not None and age <= request.app[keys.CONFIG].healthy_tick_age_seconds
    body = {"status": "ok" if healthy else "unhealthy", "last_tick_age_seconds": age}
    return web.json_response(body, status=200 if healthy else 503)


async def _readyz(request: web.Request) -> web.StreamResponse:
    """Ready means the database answers at the schema head and a token can be obtained."""
    store, tokens = request.app[keys.STORE], request.app[keys.TOKENS]

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
            checks[name] = {"ok": False, "error": one_line(str(exc))}
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
    metrics = request.app[keys.METRICS]
    metrics.set_last_tick(request.app[keys.TICK_AGE](), time.time())
    metrics.set_job_counts(*await request.app[keys.STORE].job_status_counts())
    metrics.set_budget(request.app[keys.ARM].budget)
    metrics.set_write_budget(request.app[keys.ARM].write_budget)
    outbox = await request.app[keys.STORE].outbox_counts()
    metrics.set_outbox(outbox.get("pending", 0), outbox.get("dead", 0))
    return web.Response(body=metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})


async def _openapi(request: web.Request) -> web.StreamResponse:
    return web.Response(body=request.app[keys.DOCUMENT], content_type="application/json")
