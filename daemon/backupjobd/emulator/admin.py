"""The emulator's admin API (/admin/*): what tests, the demo and bench use to set the scene.

It has no authentication and runs in the event loop, so every input is bounded: one request
must not be able to wedge the emulator or exhaust its memory. A request outside a bound gets
a one-line 400 naming the field and changes nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import quote

from aiohttp import web

from backupjobd.emulator.arm_routes import (
    API_VERSION_RE,
    CRR_API_VERSION,
    DATA_PROTECTION_API_VERSION,
    DEFAULT_API_VERSION,
    backup_vault_operation_urls,
    base_url,
    crr_operation_urls,
    item_urls,
)
from backupjobd.emulator.faults import DEFAULT_RANDOM_FAULT_KINDS, FAULT_KINDS
from backupjobd.emulator.render import JSONDict
from backupjobd.emulator.state import (
    DEFAULT_VAULT_ID,
    STATE_KEY,
    EmulatorState,
    JobSpec,
    ValidationError,
    canonical_vault_id,
    is_backup_vault,
)

logger = logging.getLogger(__name__)

DEFAULT_CONTAINER_NAME: Final = "IaasVMContainer;iaasvmcontainerv2;rg-emulator;vm-emulator"
DEFAULT_PROTECTED_ITEM_NAME: Final = "VM;iaasvmcontainerv2;rg-emulator;vm-emulator"
NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# Bounds of admin input. They leave ample room for the tests, scripts/demo.py and bench/*.py
# (1,000 jobs per request, 100,000 in all).
#: Largest admin request body (aiohttp's default, stated so nobody raises it unknowingly).
MAX_BODY_BYTES: Final = 1024 * 1024
#: Most jobs or vaults one admin request may create.
MAX_ITEMS_PER_REQUEST: Final = 10_000
#: Most jobs held at once, counting those that pending operations will bring (~1 KB each).
MAX_JOBS: Final = 500_000
#: Most jobs one operation may announce (Azure's multi-item operations name a handful).
MAX_OPERATION_JOBS: Final = 1_000
MAX_OPERATIONS: Final = 100_000
MAX_VAULTS: Final = 100_000
#: Most entries in the fault queue, which every ARM request scans.
MAX_QUEUED_FAULTS: Final = 1_000
MAX_FAULT_COUNT: Final = 1_000_000
MAX_RANDOM_FAULT_KINDS: Final = 64
MAX_RETRY_AFTER: Final = 3_600
#: Longest duration, delay, not-found window or backdating: a year keeps timestamps sane.
MAX_SECONDS: Final = 366 * 86_400
MAX_PAGE_SIZE: Final = 10_000
MAX_READ_BURST: Final = 1_000_000
#: Slowest refill: keeps the computed Retry-After finite (at most 1,000 s).
MIN_READ_REFILL_PER_SECOND: Final = 0.001
MAX_READ_REFILL_PER_SECOND: Final = 1_000_000.0
MAX_SEED: Final = 2**63 - 1
#: Longest job id, status, operation, job type, entity, container or item name.
MAX_NAME_LENGTH: Final = 256
#: Longest vault ARM id or fault path filter.
MAX_ID_LENGTH: Final = 1_024


_JOB_FIELDS: Final = {
    "final_status",
    "duration_seconds",
    "not_found_seconds",
    "operation",
    "job_type",
    "entity_friendly_name",
}


def _number(
    body: Mapping[str, Any],
    key: str,
    default: float,
    minimum: float = 0.0,
    maximum: float = MAX_SECONDS,
) -> float:
    """A finite JSON number in [minimum, maximum]; NaN, infinities and booleans are refused."""
    value = body.get(key, default)
    # NaN fails every comparison and infinities the bounds; comparing before float() keeps a
    # huge integer from overflowing the conversion.
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not minimum <= value <= maximum
    ):
        raise ValidationError(f"{key} must be a number between {minimum:g} and {maximum:g}")
    return float(value)


def _integer(body: Mapping[str, Any], key: str, default: int, minimum: int, maximum: int) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ValidationError(f"{key} must be an integer between {minimum} and {maximum}")
    return value


def _string(
    body: Mapping[str, Any], key: str, default: str | None, max_length: int = MAX_NAME_LENGTH
) -> str | None:
    value = body.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{key} must be a non-empty string")
    if len(value) > max_length:
        raise ValidationError(f"{key} must be at most {max_length} characters")
    return value


def _require_object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ValidationError(f"{what} must be a JSON object")
    return value


def _items(raw: Any, what: str) -> list[Any]:
    """An admin body that is one object or an array of them, at most ``MAX_ITEMS_PER_REQUEST``."""
    items = raw if isinstance(raw, list) else [raw]
    if len(items) > MAX_ITEMS_PER_REQUEST:
        raise ValidationError(f"{what}: at most {MAX_ITEMS_PER_REQUEST} per request")
    return items


def _reject_unknown(body: Mapping[str, Any], allowed: set[str], what: str) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        # Names come from the client: show a few, shortened, so the error stays one short line.
        shown = ", ".join(repr(name[:64]) for name in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise ValidationError(f"unknown {what} field(s): {shown}{more}")


def _parse_job_spec(
    body: Mapping[str, Any], *, backup_vault: bool = False, crr: bool = False
) -> JobSpec:
    """A job's behaviour; a Backup vault's job ends `Succeeded` unless told otherwise, and
    a cross-region restore's operation is `CrossRegionRestore`."""
    done = "Succeeded" if backup_vault else "Completed"
    operation = "CrossRegionRestore" if crr else "Backup"
    return JobSpec(
        final_status=_string(body, "final_status", done) or done,
        duration_seconds=_number(body, "duration_seconds", 5.0),
        not_found_seconds=_number(body, "not_found_seconds", 0.0),
        operation=_string(body, "operation", operation) or operation,
        job_type=_string(body, "job_type", "AzureIaaSVMJob") or "AzureIaaSVMJob",
        entity_friendly_name=_string(body, "entity_friendly_name", None),
    )


def _parse_vault(body: Mapping[str, Any]) -> str:
    vault_id = _string(body, "vault_id", DEFAULT_VAULT_ID, MAX_ID_LENGTH) or DEFAULT_VAULT_ID
    return canonical_vault_id(vault_id)


def _parse_region(body: Mapping[str, Any], vault_id: str) -> str | None:
    """`region`: a cross-region restore's secondary region (Recovery Services vaults only)."""
    region = _string(body, "region", None, 40)
    if region is None:
        return None
    if is_backup_vault(vault_id):
        raise ValidationError(
            "region: cross-region-restore jobs belong to Recovery Services vaults"
        )
    if not re.fullmatch(r"[a-z][a-z0-9]{1,39}", region):
        raise ValidationError("region must be a lower-case Azure region name")
    return region


def _parse_arm_name(body: Mapping[str, Any], key: str, default: str | None) -> str | None:
    value = _string(body, key, default)
    if value is not None and ("/" in value or "?" in value or "#" in value):
        raise ValidationError(f"{key} must not contain '/', '?' or '#'")
    return value


def _check_room(state: EmulatorState, *, jobs: int = 0, vaults: Iterable[str] = ()) -> None:
    """Refuse what would take the emulator past ``MAX_JOBS`` or ``MAX_VAULTS``."""
    held, _, known, _ = state.sizes()
    if held + jobs > MAX_JOBS:
        raise ValidationError(
            f"jobs: {held} held, {jobs} more would pass the limit of {MAX_JOBS}"
            " (POST /admin/reset to start over)"
        )
    new = {v.lower() for v in vaults if not state.is_known_vault(v)}
    if known + len(new) > MAX_VAULTS:
        raise ValidationError(
            f"vault_id: {known} vaults known, {len(new)} more would pass the limit of"
            f" {MAX_VAULTS} (POST /admin/reset to start over)"
        )


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except web.HTTPRequestEntityTooLarge as exc:
        raise ValidationError(f"body must be at most {MAX_BODY_BYTES} bytes") from exc
    except RecursionError as exc:
        raise ValidationError("body is nested too deeply") from exc
    # ValueError covers JSONDecodeError and integers longer than Python converts.
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(f"body is not valid JSON: {exc}") from exc


def _admin_error(exc: ValidationError) -> web.Response:
    return web.json_response({"error": str(exc)}, status=400)


async def _admin_add_jobs(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    try:
        items = _items(await _json_body(request), "jobs")
        parsed: list[tuple[str, str | None, JobSpec, float, str | None]] = []
        for item in items:
            body = _require_object(item, "job")
            _reject_unknown(
                body, _JOB_FIELDS | {"vault_id", "job_id", "started_seconds_ago", "region"}, "job"
            )
            job_id = _string(body, "job_id", None)
            if job_id is not None and not NAME_RE.match(job_id):
                raise ValidationError(f"job_id {job_id!r} is not a valid job name")
            ago = _number(body, "started_seconds_ago", 0.0)
            vault_id = _parse_vault(body)
            region = _parse_region(body, vault_id)
            spec = _parse_job_spec(
                body, backup_vault=is_backup_vault(vault_id), crr=region is not None
            )
            parsed.append((vault_id, job_id, spec, ago, region))
        _check_room(state, jobs=len(parsed), vaults=[vault_id for vault_id, *_ in parsed])
        seen: set[tuple[str, str]] = set()
        for vault_id, job_id, *_ in parsed:
            if job_id is None:
                continue
            key = (vault_id.lower(), job_id.lower())
            if key in seen or state.find_job_any_vault(job_id, vault_id) is not None:
                raise ValidationError(f"job {job_id} already exists in {vault_id}")
            seen.add(key)
    except ValidationError as exc:
        return _admin_error(exc)
    # `started_seconds_ago` backdates the start: a job longer ago than its duration arrives
    # already finished (as MAB/agent jobs often do by the time anyone lists them).
    now = state.now()
    created = [
        state.add_job(spec, vault_id=v, job_id=j, created_at=now - ago, region=region)
        for v, j, spec, ago, region in parsed
    ]
    logger.debug("admin created %d job(s)", len(created))
    return web.json_response(
        {
            "jobs": [
                {
                    "job_id": job.job_id,
                    "vault_id": job.vault_id,
                    "id": job.arm_id,
                    "region": job.region,
                }
                for job in created
            ]
        },
        status=201,
    )


async def _admin_add_operation(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    allowed = {
        "vault_id",
        "delay_seconds",
        "result",
        "job_count",
        "item_level",
        "jobs",
        "container_name",
        "protected_item_name",
        "api_version",
        "region",
    }
    try:
        body = _require_object(await _json_body(request), "operation")
        _reject_unknown(body, allowed, "operation")
        vault_id = _parse_vault(body)
        result = body.get("result", "Succeeded")
        if result not in {"Succeeded", "Failed"}:
            raise ValidationError("result must be 'Succeeded' or 'Failed'")
        item_level = body.get("item_level", False)
        if not isinstance(item_level, bool):
            raise ValidationError("item_level must be a boolean")
        jobs_body = _require_object(body.get("jobs", {}), "jobs")
        _reject_unknown(jobs_body, _JOB_FIELDS, "jobs")
        backup_vault = is_backup_vault(vault_id)
        region = _parse_region(body, vault_id)
        default_version = (
            DATA_PROTECTION_API_VERSION
            if backup_vault
            else CRR_API_VERSION
            if region is not None
            else DEFAULT_API_VERSION
        )
        api_version = _string(body, "api_version", default_version) or default_version
        if not API_VERSION_RE.match(api_version):
            raise ValidationError("api_version must look like yyyy-mm-dd[-preview]")
        container = _parse_arm_name(body, "container_name", DEFAULT_CONTAINER_NAME)
        item = _parse_arm_name(body, "protected_item_name", DEFAULT_PROTECTED_ITEM_NAME)
        delay = _number(body, "delay_seconds", 1.0)
        job_count = _integer(body, "job_count", 1, 1, MAX_OPERATION_JOBS)
        if (backup_vault or region is not None) and job_count != 1:
            raise ValidationError(
                "job_count: Backup vault and cross-region operations name one job"
            )
        job_spec = _parse_job_spec(jobs_body, backup_vault=backup_vault, crr=region is not None)
        if state.sizes()[1] >= MAX_OPERATIONS:
            raise ValidationError(
                f"operations: at most {MAX_OPERATIONS} (POST /admin/reset to start over)"
            )
        _check_room(state, jobs=job_count if result == "Succeeded" else 0)
        op = state.add_operation(
            vault_id=vault_id,
            delay_seconds=delay,
            result=result,
            job_count=job_count,
            job_spec=job_spec,
            container_name=container if item_level else None,
            protected_item_name=item if item_level else None,
            region=region,
        )
    except ValidationError as exc:
        return _admin_error(exc)
    base = base_url(request)
    if backup_vault:
        status_url, result_url = backup_vault_operation_urls(base, op, api_version)
    elif op.crr:
        status_url, result_url = crr_operation_urls(base, op, api_version)
    elif item_level and container is not None and item is not None:
        status_url, result_url = item_urls(
            base, vault_id, container, item, op.operation_id, api_version
        )
    else:
        suffix = f"{op.operation_id}?api-version={quote(api_version)}"
        status_url = f"{base}{vault_id}/backupOperations/{suffix}"
        result_url = f"{base}{vault_id}/backupOperationResults/{suffix}"
    return web.json_response(
        {
            "operation_id": op.operation_id,
            "azure_async_operation": status_url,
            "location": result_url,
            "job_ids": list(op.job_ids),
            "region": op.region,
        },
        status=201,
    )


async def _admin_add_fault(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    try:
        body = _require_object(await _json_body(request), "fault")
        if body.get("kind") == "random":
            return _set_random_faults(state, body)
        _reject_unknown(body, {"kind", "count", "retry_after", "path_contains"}, "fault")
        kind = body.get("kind")
        if isinstance(kind, int) and not isinstance(kind, bool):
            kind = str(kind)
        if not isinstance(kind, str) or kind not in FAULT_KINDS:
            raise ValidationError(f"kind must be one of {sorted(FAULT_KINDS)}")
        count = _integer(body, "count", 1, 1, MAX_FAULT_COUNT)
        retry_after = _integer(body, "retry_after", 1, 0, MAX_RETRY_AFTER)
        path_contains = _string(body, "path_contains", None, MAX_ID_LENGTH)
        if state.sizes()[3] >= MAX_QUEUED_FAULTS:
            raise ValidationError(
                f"faults: at most {MAX_QUEUED_FAULTS} queued (POST /admin/reset to start over)"
            )
        fault = state.add_fault(
            kind, count=count, retry_after=retry_after, path_contains=path_contains
        )
    except ValidationError as exc:
        return _admin_error(exc)
    return web.json_response(
        {
            "kind": fault.kind,
            "count": fault.remaining,
            "retry_after": fault.retry_after,
            "path_contains": fault.path_contains,
        },
        status=201,
    )


def _set_random_faults(state: EmulatorState, body: Mapping[str, Any]) -> web.Response:
    _reject_unknown(body, {"kind", "rate", "kinds", "retry_after", "seed"}, "fault")
    if "rate" not in body:
        raise ValidationError("rate must be a number between 0 and 1")
    rate = _number(body, "rate", 0.0, 0.0, 1.0)
    kinds = body.get("kinds", list(DEFAULT_RANDOM_FAULT_KINDS))
    if not isinstance(kinds, list) or len(kinds) > MAX_RANDOM_FAULT_KINDS:
        raise ValidationError(
            f"kinds must be a list of at most {MAX_RANDOM_FAULT_KINDS} fault kinds"
        )
    kinds = [str(k) if isinstance(k, int) and not isinstance(k, bool) else k for k in kinds]
    if not all(isinstance(k, str) for k in kinds):
        raise ValidationError("kinds must be a list of fault kinds")
    seed = body.get("seed")
    if seed is not None:
        seed = _integer(body, "seed", 0, 0, MAX_SEED)
    faults = state.set_random_faults(
        rate, kinds, retry_after=_integer(body, "retry_after", 1, 0, MAX_RETRY_AFTER), seed=seed
    )
    logger.info("random faults %s", f"at rate {rate}" if faults else "off")
    return web.json_response(
        {
            "kind": "random",
            "rate": faults.rate if faults else 0.0,
            "kinds": list(faults.kinds) if faults else [],
            "retry_after": faults.retry_after if faults else None,
            "seed": faults.seed if faults else None,
        },
        status=201,
    )


def _config_view(state: EmulatorState) -> JSONDict:
    return {
        "read_burst": state.read_budget.burst if state.read_budget else None,
        "read_refill_per_second": state.read_refill_per_second,
        "read_others_per_second": state.read_others_per_second,
        "page_size": state.page_size,
        "write_burst": state.write_budget.burst if state.write_budget else None,
        "write_refill_per_second": (
            state.write_budget.refill_per_second if state.write_budget else None
        ),
    }


async def _admin_get_config(request: web.Request) -> web.StreamResponse:
    return web.json_response(_config_view(request.app[STATE_KEY]))


async def _admin_set_config(request: web.Request) -> web.StreamResponse:
    """Runtime settings; fields left out keep their value, ``read_burst: null`` disables."""
    state = request.app[STATE_KEY]
    try:
        body = _require_object(await _json_body(request), "config")
        known = {
            "read_burst",
            "read_refill_per_second",
            "read_others_per_second",
            "page_size",
            "write_burst",
            "write_refill_per_second",
        }
        _reject_unknown(body, known, "config")
        refill = state.read_refill_per_second
        if "read_refill_per_second" in body:
            refill = _number(
                body,
                "read_refill_per_second",
                refill,
                MIN_READ_REFILL_PER_SECOND,
                MAX_READ_REFILL_PER_SECOND,
            )
        others = _number(
            body,
            "read_others_per_second",
            state.read_others_per_second,
            0.0,
            MAX_READ_REFILL_PER_SECOND,
        )
        burst = state.read_budget.burst if state.read_budget else None
        if "read_burst" in body:
            burst = (
                None
                if body["read_burst"] is None
                else _integer(body, "read_burst", 1, 1, MAX_READ_BURST)
            )
        page_size = _integer(body, "page_size", state.page_size, 1, MAX_PAGE_SIZE)
        writes = state.write_budget
        write_burst = writes.burst if writes else None
        if "write_burst" in body:
            write_burst = (
                None
                if body["write_burst"] is None
                else _integer(body, "write_burst", 1, 1, MAX_READ_BURST)
            )
        write_refill = _number(
            body,
            "write_refill_per_second",
            writes.refill_per_second if writes else 10.0,
            MIN_READ_REFILL_PER_SECOND,
            MAX_READ_REFILL_PER_SECOND,
        )
    except ValidationError as exc:
        return _admin_error(exc)
    if "write_burst" in body or "write_refill_per_second" in body:
        state.configure_writes(write_burst, write_refill)
    state.configure_reads(burst, refill, others)
    state.page_size = page_size
    logger.info("emulator config: %s", _config_view(state))
    return web.json_response(_config_view(state))


async def _admin_replay(request: web.Request) -> web.StreamResponse:
    replay = request.app[STATE_KEY].replay
    if replay is None:
        return web.json_response({"error": "not in replay mode"}, status=404)
    return web.json_response({**replay.summary(), "resources": replay.progress()})


async def _admin_add_vaults(request: web.Request) -> web.StreamResponse:
    """`{"vault_id": …}` or an array of them: vaults without jobs, for subscription lists."""
    state = request.app[STATE_KEY]
    try:
        ids = []
        for item in _items(await _json_body(request), "vaults"):
            body = _require_object(item, "vault")
            _reject_unknown(body, {"vault_id"}, "vault")
            ids.append(_parse_vault(body))
        _check_room(state, vaults=ids)
    except ValidationError as exc:
        return _admin_error(exc)
    return web.json_response({"vaults": [state.add_vault(v) for v in ids]}, status=201)


async def _admin_stats(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[STATE_KEY].stats())


async def _admin_reset(request: web.Request) -> web.StreamResponse:
    request.app[STATE_KEY].reset()
    logger.info("emulator state reset")
    return web.json_response({"reset": True})


async def _admin_get_job(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    job = state.find_job_any_vault(request.match_info["job_id"], request.query.get("vault_id"))
    if job is None:
        return web.json_response({"error": "no such job"}, status=404)
    return web.json_response(
        {
            "job_id": job.job_id,
            "vault_id": job.vault_id,
            "final_status": job.spec.final_status,
            "status": state.job_status(job),
        }
    )


def add_admin_routes(app: web.Application) -> None:
    """Mount /admin/*; they must come before the catch-all ARM route."""
    app.router.add_post("/admin/jobs", _admin_add_jobs)
    app.router.add_get("/admin/jobs/{job_id}", _admin_get_job)
    app.router.add_post("/admin/operations", _admin_add_operation)
    app.router.add_post("/admin/faults", _admin_add_fault)
    app.router.add_post("/admin/vaults", _admin_add_vaults)
    app.router.add_get("/admin/stats", _admin_stats)
    app.router.add_get("/admin/config", _admin_get_config)
    app.router.add_post("/admin/config", _admin_set_config)
    app.router.add_get("/admin/replay", _admin_replay)
    app.router.add_post("/admin/reset", _admin_reset)
