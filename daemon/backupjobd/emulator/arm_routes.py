"""The Azure-facing side: ARM's Backup jobs routes, checked and answered like ARM does.

One entry serves every path so routing can be case-insensitive like ARM; the order of its
checks (read budget, injected faults, auth, api-version, then the model or the replayed
recording) is the order in which Azure's gateway and resource provider answer.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from urllib.parse import quote

from aiohttp import web

from backupjobd.emulator.faults import READS_REMAINING_HEADER, serve_fault, throttled
from backupjobd.emulator.render import MANAGEMENT_TYPES, JSONDict, arm_error
from backupjobd.emulator.state import (
    STATE_KEY,
    VAULT_PATTERN,
    EmulatedJob,
    EmulatorState,
    JobSpec,
    ValidationError,
    vault_arm_id,
)

logger = logging.getLogger(__name__)

#: api-version written into URLs the emulator hands out when no request version is at hand.
DEFAULT_API_VERSION: Final = "2025-08-01"
API_VERSION_RE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")
ITEM_PATTERN: Final = (
    r"/backupfabrics/(?P<fabric>[^/]+)/protectioncontainers/(?P<container>[^/]+)"
    r"/protecteditems/(?P<item>[^/]+)"
)
_FILTER_CLAUSE_RE: Final = re.compile(r"^\s*(\w+)\s+eq\s+'([^']*)'\s*$", re.IGNORECASE)
_FILTER_SPLIT_RE: Final = re.compile(r"\s+and\s+", re.IGNORECASE)
_FILTER_TIME_FORMAT: Final = "%Y-%m-%d %I:%M:%S %p"


def base_url(request: web.Request) -> str:
    """URLs handed out must point back at whatever address the client used."""
    return f"{request.scheme}://{request.host}"


def query_param(request: web.Request, name: str) -> str | None:
    """ARM treats query parameter names case-insensitively (``$skipToken`` vs ``$skiptoken``)."""
    wanted = name.lower()
    for key, value in request.query.items():
        if key.lower() == wanted:
            return value
    return None


_Handler = Callable[[web.Request, EmulatorState, re.Match[str]], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    kind: str
    handler: _Handler


def _vault_from(match: re.Match[str]) -> str:
    return vault_arm_id(match["sub"], match["rg"], match["vault"])


def _not_found(kind: str, name: str, match: re.Match[str]) -> web.Response:
    return arm_error(
        404,
        "ResourceNotFound",
        f"The Resource 'Microsoft.RecoveryServices/vaults/{match['vault']}/{kind}/{name}' "
        f"under resource group '{match['rg']}' was not found.",
    )


def _api_version(request: web.Request) -> str:
    return query_param(request, "api-version") or DEFAULT_API_VERSION


async def _get_job(
    request: web.Request, state: EmulatorState, match: re.Match[str]
) -> web.StreamResponse:
    job_id = match["job"]
    job = state.find_job(_vault_from(match), job_id)
    if job is None:
        state.record_job_get(job_id)
        return _not_found("backupJobs", job_id, match)
    body = state.render_job(job)
    state.record_job_get(job.job_id, running="endTime" not in body["properties"])
    return web.json_response(body)


async def _cancel_job(
    request: web.Request, state: EmulatorState, match: re.Match[str]
) -> web.StreamResponse:
    job = state.find_job(_vault_from(match), match["job"])
    if job is None:
        return _not_found("backupJobs", match["job"], match)
    if not state.cancel_job(job):
        logger.debug("cancel of job %s ignored: already finished", job.job_id)
    op_id = str(uuid.uuid4())
    location = (
        f"{base_url(request)}{job.vault_id}/backupJobs/{job.job_id}/operationResults/{op_id}"
        f"?api-version={quote(_api_version(request))}"
    )
    return web.Response(status=202, headers={"Location": location, "Retry-After": "1"})


async def _cancel_result(
    request: web.Request, state: EmulatorState, match: re.Match[str]
) -> web.StreamResponse:
    if state.find_job(_vault_from(match), match["job"]) is None:
        return _not_found("backupJobs", match["job"], match)
    return web.Response(status=204)


async def _get_operation(
    request: web.Request, state: EmulatorState, match: re.Match[str]
) -> web.StreamResponse:
    op = state.find_operation(_vault_from(match), match["op"])
    if op is None:
        return _not_found("backupOperations", match["op"], match)
    return web.json_response(state.render_operation(op))


async def _operation_result(
    request: web.Request, state: EmulatorState, match: re.Match[str]
) -> web.StreamResponse:
    op = state.find_operation(_vault_from(match), match["op"])
    if op is None:
        return _not_found("operationResults", match["op"], match)
    if state.now() < op.done_at:
        return web.Response(
            status=202,
            headers={"Location": str(request.url), "Retry-After": "1"},
        )
    return web.Response(status=204)


def _job_type_for_item(item_name: str) -> str:
    prefix = item_name.split(";", 1)[0].lower()
    if prefix in {"sqldatabase", "saphanadatabase", "saphanadbinstance", "sapasedatabase"}:
        return "AzureWorkloadJob"
    if prefix == "azurefileshare":
        return "AzureStorageJob"
    return "AzureIaaSVMJob"


def item_urls(
    base: str, vault_id: str, container: str, item: str, op_id: str, api_version: str
) -> tuple[str, str]:
    """(Azure-AsyncOperation, Location) for an item-level operation."""
    item_path = (
        f"{base}{vault_id}/backupFabrics/Azure/protectionContainers/{container}"
        f"/protectedItems/{item}"
    )
    suffix = f"{op_id}?api-version={quote(api_version)}"
    return f"{item_path}/operationsStatus/{suffix}", f"{item_path}/operationResults/{suffix}"


async def _trigger_backup(
    request: web.Request, state: EmulatorState, match: re.Match[str]
) -> web.StreamResponse:
    container, item = match["container"], match["item"]
    vault_id = _vault_from(match)
    op = state.add_operation(
        vault_id=vault_id,
        delay_seconds=1.0,
        job_spec=JobSpec(
            duration_seconds=5.0,
            job_type=_job_type_for_item(item),
            entity_friendly_name=item.rsplit(";", 1)[-1],
        ),
        container_name=container,
        protected_item_name=item,
    )
    status_url, result_url = item_urls(
        base_url(request), vault_id, container, item, op.operation_id, _api_version(request)
    )
    logger.info("backup triggered for %s: operation %s", item, op.operation_id)
    return web.Response(
        status=202,
        headers={"Azure-AsyncOperation": status_url, "Location": result_url, "Retry-After": "1"},
    )


def _parse_filter_time(value: str) -> float:
    try:
        parsed = datetime.strptime(value, _FILTER_TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError as exc:
        raise ValidationError(
            f"time {value!r} is not in the format 'yyyy-MM-dd hh:mm:ss tt'"
        ) from exc
    return parsed.timestamp()


def _parse_filter(text: str) -> list[tuple[str, str]]:
    """Parse the OData-ish ``field eq 'value' and ...`` subset that the Backup RP accepts."""
    known = {"status", "operation", "backupmanagementtype", "jobid", "starttime", "endtime"}
    clauses: list[tuple[str, str]] = []
    if not text.strip():
        return clauses
    for part in _FILTER_SPLIT_RE.split(text.strip()):
        found = _FILTER_CLAUSE_RE.match(part)
        if found is None:
            raise ValidationError(f"cannot parse filter clause {part!r}")
        name, value = found[1].lower(), found[2]
        if name not in known:
            raise ValidationError(f"unsupported filter field {found[1]!r}")
        if name in {"starttime", "endtime"}:
            _parse_filter_time(value)
        clauses.append((name, value))
    return clauses


def _job_matches(state: EmulatorState, job: EmulatedJob, clauses: list[tuple[str, str]]) -> bool:
    for name, value in clauses:
        wanted = value.lower()
        if name == "status":
            ok = state.job_status(job).lower() == wanted
        elif name == "operation":
            ok = job.spec.operation.lower() == wanted
        elif name == "backupmanagementtype":
            ok = MANAGEMENT_TYPES.get(job.spec.job_type.lower(), "Invalid").lower() == wanted
        elif name == "jobid":
            ok = job.job_id.lower() == wanted
        elif name == "starttime":
            ok = state.wall(job.created_at) >= _parse_filter_time(value)
        else:  # endtime: upper bound of the window on the job's start
            ok = state.wall(job.created_at) <= _parse_filter_time(value)
        if not ok:
            return False
    return True


async def _list_jobs(
    request: web.Request, state: EmulatorState, match: re.Match[str]
) -> web.StreamResponse:
    filter_text = query_param(request, "$filter") or ""
    token = query_param(request, "$skiptoken")
    try:
        clauses = _parse_filter(filter_text)
    except ValidationError as exc:
        return arm_error(400, "BMSUserErrorInvalidFilter", str(exc))
    after = 0
    if token:
        if not token.isdigit():
            return arm_error(400, "BMSUserErrorInvalidSkipToken", f"bad $skiptoken {token!r}")
        after = int(token)
    # The skip token is the creation sequence of the last job served, so jobs appearing or
    # changing status between pages never cause duplicates.
    jobs = [
        j
        for j in state.jobs_in_vault(_vault_from(match))
        if j.seq > after and _job_matches(state, j, clauses)
    ]
    page = jobs[: state.page_size]
    body: JSONDict = {"value": [state.render_job(j, extended=False) for j in page]}
    if len(jobs) > len(page):
        params = [f"api-version={quote(_api_version(request), safe='')}"]
        if filter_text:
            params.append(f"$filter={quote(filter_text, safe='')}")
        params.append(f"$skiptoken={page[-1].seq}")
        body["nextLink"] = f"{base_url(request)}{request.path}?{'&'.join(params)}"
    return web.json_response(body)


async def _list_vaults(
    request: web.Request, state: EmulatorState, match: re.Match[str]
) -> web.StreamResponse:
    """`GET /subscriptions/{sub}/providers/Microsoft.RecoveryServices/vaults`, paged like
    ARM with a `nextLink` (its `$skiptoken` is the index of the next vault)."""
    token = query_param(request, "$skiptoken") or "0"
    if not token.isdigit():
        return arm_error(400, "InvalidSkipToken", f"bad $skiptoken {token!r}")
    start = int(token)
    vaults = state.vaults_in_subscription(match["sub"])
    page = vaults[start : start + state.page_size]
    body: JSONDict = {
        "value": [
            {
                "id": vault_id,
                "name": vault_id.rsplit("/", 1)[-1],
                "type": "Microsoft.RecoveryServices/vaults",
                "location": "westeurope",
                "sku": {"name": "Standard"},
                "properties": {"provisioningState": "Succeeded"},
            }
            for vault_id in page
        ]
    }
    if start + len(page) < len(vaults):
        version = quote(_api_version(request), safe="")
        body["nextLink"] = (
            f"{base_url(request)}{request.path}?api-version={version}"
            f"&$skiptoken={start + len(page)}"
        )
    return web.json_response(body)


_V = VAULT_PATTERN
_ROUTES: Final = (
    _Route(
        "GET",
        re.compile(
            r"^/subscriptions/(?P<sub>[^/]+)/providers/microsoft\.recoveryservices/vaults$", re.I
        ),
        "vault_list",
        _list_vaults,
    ),
    _Route("GET", re.compile(rf"^{_V}/backupjobs$", re.I), "job_list", _list_jobs),
    _Route("GET", re.compile(rf"^{_V}/backupjobs/(?P<job>[^/]+)$", re.I), "job_get", _get_job),
    _Route(
        "POST", re.compile(rf"^{_V}/backupjobs/(?P<job>[^/]+)/cancel$", re.I), "cancel", _cancel_job
    ),
    _Route(
        "GET",
        re.compile(rf"^{_V}/backupjobs/(?P<job>[^/]+)/operationresults/(?P<op>[^/]+)$", re.I),
        "cancel_result",
        _cancel_result,
    ),
    _Route(
        "GET",
        re.compile(rf"^{_V}/backupoperations/(?P<op>[^/]+)$", re.I),
        "operation_get",
        _get_operation,
    ),
    _Route(
        "GET",
        re.compile(rf"^{_V}{ITEM_PATTERN}/operationsstatus/(?P<op>[^/]+)$", re.I),
        "operation_get",
        _get_operation,
    ),
    _Route(
        "GET",
        re.compile(rf"^{_V}{ITEM_PATTERN}/operationresults/(?P<op>[^/]+)$", re.I),
        "operation_result",
        _operation_result,
    ),
    _Route("POST", re.compile(rf"^{_V}{ITEM_PATTERN}/backup$", re.I), "trigger", _trigger_backup),
)


def _check_auth(request: web.Request, state: EmulatorState) -> web.Response | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        reason = "The request is missing a bearer token in the Authorization header."
    elif state.required_token is not None and token != state.required_token:
        reason = "The access token is invalid."
    else:
        return None
    return arm_error(
        401,
        "AuthenticationFailed",
        f"Authentication failed. {reason}",
        **{"WWW-Authenticate": 'Bearer authorization_uri="https://login.microsoftonline.com/"'},
    )


def _check_api_version(request: web.Request) -> web.Response | None:
    version = query_param(request, "api-version")
    if version is None:
        return arm_error(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )
    if not API_VERSION_RE.match(version):
        return arm_error(
            400,
            "InvalidApiVersionParameter",
            f"The api-version '{version}' is invalid. The supported format is "
            "'yyyy-mm-dd' or 'yyyy-mm-dd-preview'.",
        )
    return None


async def _replay_answer(request: web.Request, state: EmulatorState) -> web.StreamResponse:
    assert state.replay is not None
    recorded = state.replay.next_answer(request.method, request.path)
    if recorded is None:
        return arm_error(
            404,
            "ResourceNotFound",
            f"{request.method} {request.path} is not in the replayed recordings.",
        )
    return state.replay.render(recorded, base_url(request))


async def arm_entry(request: web.Request) -> web.StreamResponse:
    """Single entry for every ARM path, so routing can be case-insensitive like ARM.

    Order: the read budget (ARM's gateway throttles first), then injected faults, then the
    answer (auth and api-version checks, then the model or the replayed recording).
    """
    state = request.app[STATE_KEY]
    budget = state.take_read(request.path) if request.method == "GET" else None
    if budget is not None and not budget[0]:
        state.record_request("throttled")
        logger.debug("read budget exhausted for %s; 429 for %s", request.path, budget[2])
        return throttled(budget[2])
    response = await _arm_answer(request, state)
    if budget is not None and isinstance(response, web.Response) and not response.prepared:
        response.headers[READS_REMAINING_HEADER] = str(budget[1])
    return response


async def _arm_answer(request: web.Request, state: EmulatorState) -> web.StreamResponse:
    path = request.path.rstrip("/") or "/"
    route: _Route | None = None
    match: re.Match[str] | None = None
    method_mismatch = False
    for candidate in _ROUTES:
        found = candidate.pattern.match(path)
        if found is None:
            continue
        if candidate.method != request.method:
            method_mismatch = True
            continue
        route, match = candidate, found
        break
    if state.replay is not None:
        state.record_request("replay")
    else:
        state.record_request(route.kind if route is not None else "unknown")

    async def answer() -> web.StreamResponse:
        denied = _check_auth(request, state) or _check_api_version(request)
        if denied is not None:
            return denied
        if state.replay is not None:
            return await _replay_answer(request, state)
        if route is None or match is None:
            if method_mismatch:
                return arm_error(
                    405, "MethodNotAllowed", f"The method {request.method} is not allowed."
                )
            return arm_error(
                404, "InvalidResourceType", f"No route for {request.method} {request.path}."
            )
        return await route.handler(request, state, match)

    fault = state.take_fault(request.path)
    if fault is not None:
        return await serve_fault(fault, request, answer)
    return await answer()
