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
from backupjobd.emulator.render import MANAGEMENT_TYPES, JSONDict, arm_error, render_job_info
from backupjobd.emulator.state import (
    BACKUP_VAULT_PATTERN,
    STATE_KEY,
    VAULT_PATTERN,
    EmulatedJob,
    EmulatedOperation,
    EmulatorState,
    JobSpec,
    ValidationError,
    canonical_vault_id,
    vault_arm_id,
)

logger = logging.getLogger(__name__)

#: api-version written into URLs the emulator hands out when no request version is at hand.
DEFAULT_API_VERSION: Final = "2025-08-01"
DATA_PROTECTION_API_VERSION: Final = "2025-07-01"
CRR_API_VERSION: Final = "2021-11-15"
WRITES_REMAINING_HEADER: Final = "x-ms-ratelimit-remaining-subscription-writes"
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
    if any(name == "starttime" for name, _ in clauses):
        state.record_window_list_page()
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
    return _vault_page(request, state, match, backup_vaults=False)


def _vault_page(
    request: web.Request, state: EmulatorState, match: re.Match[str], *, backup_vaults: bool
) -> web.Response:
    token = query_param(request, "$skiptoken") or "0"
    if not token.isdigit():
        return arm_error(400, "InvalidSkipToken", f"bad $skiptoken {token!r}")
    start = int(token)
    vaults = state.vaults_in_subscription(match["sub"], backup_vaults=backup_vaults)
    page = vaults[start : start + state.page_size]
    resource_type = (
        "Microsoft.DataProtection/backupVaults"
        if backup_vaults
        else "Microsoft.RecoveryServices/vaults"
    )
    body: JSONDict = {
        "value": [
            {
                "id": vault_id,
                "name": vault_id.rsplit("/", 1)[-1],
                "type": resource_type,
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


# ---------------------------------------------------------------- Backup vaults (DataProtection)


def _backup_vault_from(match: re.Match[str]) -> str:
    return vault_arm_id(match["sub"], match["rg"], match["vault"], backup_vault=True)


def _dpp_not_found(kind: str, name: str) -> web.Response:
    return arm_error(404, "ResourceNotFound", f"The {kind} '{name}' was not found.")


async def _get_backup_vault_job(
    request: web.Request, state: EmulatorState, match: re.Match[str]
) -> web.StreamResponse:
    job_id = match["job"]
    job = state.find_job(_backup_vault_from(match), job_id)
    if job is None:
        state.record_job_get(job_id)
        return _dpp_not_found("backup job", job_id)
    body = state.render_job(job)
    state.record_job_get(job.job_id, running="endTime" not in body["properties"])
    return web.json_response(body)


async def _list_backup_vault_jobs(
    request: web.Request, state: EmulatorState, match: re.Match[str]
) -> web.StreamResponse:
    """Every job of the Backup vault, paged with a `nextLink`: the API has no `$filter`."""
    if query_param(request, "$filter") is not None:
        return arm_error(400, "InvalidParameter", "Backup vault job lists do not support $filter.")
    token = query_param(request, "$skiptoken") or "0"
    if not token.isdigit():
        return arm_error(400, "InvalidSkipToken", f"bad $skipToken {token!r}")
    after = int(token)
    jobs = [j for j in state.jobs_in_vault(_backup_vault_from(match)) if j.seq > after]
    page = jobs[: state.page_size]
    body: JSONDict = {"value": [state.render_job(j, extended=False) for j in page]}
    if len(jobs) > len(page):
        version = quote(_api_version(request), safe="")
        body["nextLink"] = (
            f"{base_url(request)}{request.path}?api-version={version}&$skipToken={page[-1].seq}"
        )
    return web.json_response(body)


async def _get_backup_vault_operation(
    request: web.Request, state: EmulatorState, match: re.Match[str]
) -> web.StreamResponse:
    op = state.find_operation(_backup_vault_from(match), match["op"])
    if op is None:
        return _dpp_not_found("operation", match["op"])
    return web.json_response(state.render_operation(op))


def _located(match: re.Match[str], state: EmulatorState, *, crr: bool) -> EmulatedOperation | None:
    return state.find_located_operation(match["sub"], match["loc"], match["op"], crr=crr)


async def _get_located_operation_status(
    request: web.Request, state: EmulatorState, match: re.Match[str]
) -> web.StreamResponse:
    op = _located(match, state, crr=False)
    if op is None:
        return _dpp_not_found("operation", match["op"])
    return web.json_response(state.render_operation(op))


async def _get_located_operation_result(
    request: web.Request, state: EmulatorState, match: re.Match[str]
) -> web.StreamResponse:
    """202 (with the three headers) while the operation runs; then the 200
    `OperationJobExtendedInfo` naming its job (204 when it started none)."""
    op = _located(match, state, crr=False)
    if op is None:
        return _dpp_not_found("operation", match["op"])
    if state.now() < op.done_at:
        status_url, result_url = backup_vault_operation_urls(
            base_url(request), op, _api_version(request)
        )
        return web.Response(
            status=202,
            headers={
                "Azure-AsyncOperation": status_url,
                "Location": result_url,
                "Retry-After": "1",
            },
        )
    if op.result != "Succeeded" or not op.job_ids:
        return web.Response(status=204)
    return web.json_response(render_job_info(op))


def backup_vault_operation_urls(
    base: str, op: EmulatedOperation, api_version: str
) -> tuple[str, str]:
    """(Azure-AsyncOperation, Location) of a Backup vault operation: the vault's
    `operationStatus/{op}` and the location's `operationResults/{op}`."""
    sub = op.vault_id.split("/")[2]
    suffix = f"{op.operation_id}?api-version={quote(api_version)}"
    return (
        f"{base}{op.vault_id}/operationStatus/{suffix}",
        f"{base}/subscriptions/{sub}/providers/Microsoft.DataProtection/locations/"
        f"{op.region}/operationResults/{suffix}",
    )


async def _trigger_backup_vault_backup(
    request: web.Request, state: EmulatorState, match: re.Match[str]
) -> web.StreamResponse:
    """`POST backupInstances/{bi}/backup`: a 202 pointing at the operation, as Azure does."""
    instance = match["instance"]
    op = state.add_operation(
        vault_id=_backup_vault_from(match),
        delay_seconds=1.0,
        job_spec=JobSpec(
            final_status="Succeeded",
            duration_seconds=5.0,
            operation="Backup",
            entity_friendly_name=instance,
        ),
    )
    status_url, result_url = backup_vault_operation_urls(
        base_url(request), op, _api_version(request)
    )
    return web.Response(
        status=202,
        headers={"Azure-AsyncOperation": status_url, "Location": result_url, "Retry-After": "1"},
    )


async def _list_backup_vaults(
    request: web.Request, state: EmulatorState, match: re.Match[str]
) -> web.StreamResponse:
    return _vault_page(request, state, match, backup_vaults=True)


# ---------------------------------------------------------------- cross-region restore


def crr_operation_urls(base: str, op: EmulatedOperation, api_version: str) -> tuple[str, str]:
    """(Azure-AsyncOperation, Location) of a cross-region restore's trigger."""
    sub = op.vault_id.split("/")[2]
    where = f"{base}/subscriptions/{sub}/providers/Microsoft.RecoveryServices/locations/{op.region}"
    suffix = f"{op.operation_id}?api-version={quote(api_version)}"
    return (
        f"{where}/backupCrrOperationsStatus/{suffix}",
        f"{where}/backupCrrOperationResults/{suffix}",
    )


async def _get_crr_job(
    request: web.Request, state: EmulatorState, match: re.Match[str]
) -> web.StreamResponse:
    """`POST locations/{region}/backupCrrJob` with `{"resourceId": vault, "jobName": id}`."""
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("jobName"), str):
        return arm_error(400, "BadRequest", "The body must be a CrrJobRequest with a jobName.")
    try:
        canonical_vault_id(str(body.get("resourceId", "")))
    except ValidationError:
        return arm_error(400, "BadRequest", "CrrJobRequest.resourceId must be the vault's id.")
    job_id = body["jobName"]
    job = state.find_crr_job(match["sub"], match["loc"], job_id)
    if job is None:
        state.record_job_get(job_id)
        return arm_error(404, "ResourceNotFound", f"The job '{job_id}' was not found.")
    rendered = state.render_job(job)
    state.record_job_get(job.job_id, running="endTime" not in rendered["properties"])
    return web.json_response(rendered)


async def _get_crr_operation(
    request: web.Request, state: EmulatorState, match: re.Match[str]
) -> web.StreamResponse:
    op = _located(match, state, crr=True)
    if op is None:
        return arm_error(404, "ResourceNotFound", f"The operation '{match['op']}' was not found.")
    return web.json_response(state.render_operation(op))


async def _crr_operation_result(
    request: web.Request, state: EmulatorState, match: re.Match[str]
) -> web.StreamResponse:
    op = _located(match, state, crr=True)
    if op is None:
        return arm_error(404, "ResourceNotFound", f"The operation '{match['op']}' was not found.")
    if state.now() < op.done_at:
        return web.Response(status=202, headers={"Location": str(request.url), "Retry-After": "1"})
    return web.Response(status=204)


async def _trigger_crr(
    request: web.Request, state: EmulatorState, match: re.Match[str]
) -> web.StreamResponse:
    """`POST locations/{region}/backupCrossRegionRestore`: the emulator takes the source
    vault from `properties.crossRegionRestoreAccessDetails.vaultId` (default: the default
    vault of the subscription)."""
    try:
        body = await request.json()
    except ValueError:
        body = None
    details = (body or {}).get("properties", {}).get("crossRegionRestoreAccessDetails", {})
    vault_id = details.get("vaultId") if isinstance(details, dict) else None
    try:
        vault = canonical_vault_id(
            vault_id
            if isinstance(vault_id, str)
            else vault_arm_id(match["sub"], "rg-emulator", "vault-emulator")
        )
    except ValidationError as exc:
        return arm_error(400, "BadRequest", str(exc))
    op = state.add_operation(
        vault_id=vault,
        delay_seconds=1.0,
        region=match["loc"].lower(),
        job_spec=JobSpec(operation="CrossRegionRestore", duration_seconds=5.0),
    )
    status_url, result_url = crr_operation_urls(base_url(request), op, _api_version(request))
    return web.Response(
        status=202,
        headers={"Azure-AsyncOperation": status_url, "Location": result_url, "Retry-After": "1"},
    )


_V = VAULT_PATTERN
_BV = BACKUP_VAULT_PATTERN
_SUB = r"^/subscriptions/(?P<sub>[^/]+)/providers"
_RS_LOC = _SUB + r"/microsoft\.recoveryservices/locations/(?P<loc>[^/]+)"
_DP_LOC = _SUB + r"/microsoft\.dataprotection/locations/(?P<loc>[^/]+)"
_ROUTES: Final = (
    _Route(
        "GET",
        re.compile(_SUB + r"/microsoft\.dataprotection/backupvaults$", re.I),
        "backup_vault_list",
        _list_backup_vaults,
    ),
    _Route("GET", re.compile(rf"^{_BV}/backupjobs$", re.I), "job_list", _list_backup_vault_jobs),
    _Route(
        "GET",
        re.compile(rf"^{_BV}/backupjobs/(?P<job>[^/]+)$", re.I),
        "job_get",
        _get_backup_vault_job,
    ),
    _Route(
        "GET",
        re.compile(rf"^{_BV}/operationstatus/(?P<op>[^/]+)$", re.I),
        "operation_get",
        _get_backup_vault_operation,
    ),
    _Route(
        "POST",
        re.compile(rf"^{_BV}/backupinstances/(?P<instance>[^/]+)/backup$", re.I),
        "trigger",
        _trigger_backup_vault_backup,
    ),
    _Route(
        "GET",
        re.compile(_DP_LOC + r"/operationstatus/(?P<op>[^/]+)$", re.I),
        "operation_get",
        _get_located_operation_status,
    ),
    _Route(
        "GET",
        re.compile(_DP_LOC + r"/operationresults/(?P<op>[^/]+)$", re.I),
        "operation_result",
        _get_located_operation_result,
    ),
    _Route("POST", re.compile(_RS_LOC + r"/backupcrrjob$", re.I), "crr_job_get", _get_crr_job),
    _Route(
        "GET",
        re.compile(_RS_LOC + r"/backupcrroperationsstatus/(?P<op>[^/]+)$", re.I),
        "operation_get",
        _get_crr_operation,
    ),
    _Route(
        "GET",
        re.compile(_RS_LOC + r"/backupcrroperationresults/(?P<op>[^/]+)$", re.I),
        "operation_result",
        _crr_operation_result,
    ),
    _Route(
        "POST",
        re.compile(_RS_LOC + r"/backupcrossregionrestore$", re.I),
        "trigger",
        _trigger_crr,
    ),
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
    name = None
    if request.method == "POST" and request.path.lower().rstrip("/").endswith("/backupcrrjob"):
        try:
            body = await request.json()
        except ValueError:
            body = None
        name = body.get("jobName") if isinstance(body, dict) else None
        if not isinstance(name, str):
            return arm_error(400, "BadRequest", "The body must be a CrrJobRequest with a jobName.")
    recorded = state.replay.next_answer(request.method, request.path, name)
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
    # A cross-region restore's job read is a POST: Azure counts it as a write.
    writes = (
        state.take_write(request.path)
        if request.method == "POST" and request.path.lower().rstrip("/").endswith("/backupcrrjob")
        else None
    )
    if writes is not None and not writes[0]:
        state.record_request("throttled")
        return throttled(writes[2], kind="write", header=WRITES_REMAINING_HEADER)
    response = await _arm_answer(request, state)
    if budget is not None and isinstance(response, web.Response) and not response.prepared:
        response.headers[READS_REMAINING_HEADER] = str(budget[1])
    if writes is not None and isinstance(response, web.Response) and not response.prepared:
        response.headers[WRITES_REMAINING_HEADER] = str(writes[1])
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
