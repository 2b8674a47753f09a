"""Pure parsing of Azure Backup identifiers and bodies: no I/O, no clock.

Azure is inconsistent on the wire (two duration formats, `actionsInfo` as ints or
strings, sentinel end times, ids in varying case), so everything the daemon reads
from Azure goes through here and comes out in one shape.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import orjson

from backupjobd.errors import InvalidInput


class VaultKind(StrEnum):
    """The two kinds of Azure Backup vault, named after their resource providers."""

    RECOVERY_SERVICES = "RecoveryServices"
    DATA_PROTECTION = "DataProtection"


class Phase(StrEnum):
    """What a job status means for tracking, whatever kind of vault said it."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    WARNINGS = "warnings"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"  # kept as Azure said it and polled on, like a running job


# The one mapping of job statuses to what tracking needs. Recovery Services vaults say
# InProgress/Completed/…; Backup vaults (Microsoft.DataProtection) say Started/Succeeded/…
# (their docs also list the Recovery Services words, and Paused). The spellings do not
# collide, so one table serves both kinds; lookups ignore case.
JOB_STATUS_PHASES: dict[str, Phase] = {
    "InProgress": Phase.RUNNING,
    "Cancelling": Phase.RUNNING,
    "Started": Phase.RUNNING,
    "Paused": Phase.RUNNING,
    "Accepted": Phase.RUNNING,
    "Completed": Phase.SUCCEEDED,
    "Succeeded": Phase.SUCCEEDED,
    "CompletedWithWarnings": Phase.WARNINGS,
    "Failed": Phase.FAILED,
    "Cancelled": Phase.CANCELLED,
    "Canceled": Phase.CANCELLED,
}
_PHASES_LOWER = {k.lower(): v for k, v in JOB_STATUS_PHASES.items()}


class JobKind(StrEnum):
    """How a job is read: a vault's `backupJobs/{id}` (either vault kind), or a Recovery
    Services cross-region restore's `POST locations/{region}/backupCrrJob`."""

    RECOVERY_SERVICES = "RecoveryServices"
    DATA_PROTECTION = "DataProtection"
    CROSS_REGION_RESTORE = "CrossRegionRestore"


def job_kind(vault_kind: VaultKind, region: str | None) -> JobKind:
    if vault_kind is VaultKind.DATA_PROTECTION:
        return JobKind.DATA_PROTECTION
    return JobKind.CROSS_REGION_RESTORE if region else JobKind.RECOVERY_SERVICES


def cancel_refusal(kind: JobKind) -> str | None:
    """Why Azure cannot cancel a job of this kind (None: it can)."""
    if kind is JobKind.CROSS_REGION_RESTORE:
        return "Azure does not support cancelling cross-region-restore (secondary region) jobs"
    if kind is JobKind.DATA_PROTECTION:
        return "Azure's stable Backup vault (Microsoft.DataProtection) API has no job cancel"
    return None


def job_phase(status: str | None) -> Phase:
    """The tracking meaning of a job status (UNKNOWN for None or a word we do not know)."""
    return _PHASES_LOWER.get(status.lower(), Phase.UNKNOWN) if status else Phase.UNKNOWN


def is_terminal_status(status: str | None) -> bool:
    return job_phase(status) not in (Phase.RUNNING, Phase.UNKNOWN)


TERMINAL_STATUSES = frozenset(s for s, p in JOB_STATUS_PHASES.items() if is_terminal_status(s))
RUNNING_STATUSES = frozenset({"InProgress", "Cancelling"})
KNOWN_STATUSES = frozenset(JOB_STATUS_PHASES) | {"Invalid"}

OPERATION_RUNNING = "InProgress"
OPERATION_SUCCEEDED = "Succeeded"
OPERATION_FAILED_STATUSES = frozenset({"Failed", "Canceled", "Cancelled", "Invalid"})

_GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
GUID_RE = re.compile(rf"^{_GUID}\Z", re.ASCII)
# Ids are ASCII: only ASCII blanks around one are forgiven (a no-break space is a look-alike
# that `str.strip()` would silently remove, turning "vault-x\xa0" into another name).
ASCII_SPACE = " \t\r\n"
# Azure allows Unicode letters in resource group names; everything else is ASCII (re.ASCII
# also keeps IGNORECASE from matching look-alikes such as the Kelvin sign for "k").
_RG = r"(?u:[-\w.()]){1,90}"
_VAULT = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,49}"
_VAULT_PREFIX = (
    rf"/subscriptions/(?P<sub>{_GUID})/resourceGroups/(?P<rg>{_RG})"
    rf"/providers/Microsoft\.RecoveryServices/vaults/(?P<vault>{_VAULT})"
)
_FLAGS = re.IGNORECASE | re.ASCII
_BACKUP_VAULT_PREFIX = (
    rf"/subscriptions/(?P<sub>{_GUID})/resourceGroups/(?P<rg>{_RG})"
    rf"/providers/Microsoft\.DataProtection/backupVaults/(?P<vault>{_VAULT})"
)
VAULT_ID_RE = re.compile(rf"^{_VAULT_PREFIX}/?\Z", _FLAGS)
VAULT_PREFIX_RE = re.compile(rf"^{_VAULT_PREFIX}(?=/|\Z)", _FLAGS)
JOB_ID_RE = re.compile(rf"^{_VAULT_PREFIX}/backupJobs/(?P<job>{_GUID})/?\Z", _FLAGS)
BACKUP_VAULT_ID_RE = re.compile(rf"^{_BACKUP_VAULT_PREFIX}/?\Z", _FLAGS)
BACKUP_VAULT_PREFIX_RE = re.compile(rf"^{_BACKUP_VAULT_PREFIX}(?=/|\Z)", _FLAGS)
BACKUP_VAULT_JOB_ID_RE = re.compile(
    rf"^{_BACKUP_VAULT_PREFIX}/backupJobs/(?P<job>{_GUID})/?\Z", _FLAGS
)
# Azure region names: lower-case letters and digits (eastus2euap, westeurope).
_REGION = r"[A-Za-z][A-Za-z0-9]{1,39}"
# A cross-region-restore job lives at a location of the subscription, not under a vault.
CRR_JOB_ID_RE = re.compile(
    rf"^/subscriptions/(?P<sub>{_GUID})/providers/Microsoft\.RecoveryServices"
    rf"/locations/(?P<region>{_REGION})/backupJobs/(?P<job>{_GUID})/?\Z",
    _FLAGS,
)
CRR_OPERATION_PATH_RE = re.compile(
    rf"^/subscriptions/(?P<sub>{_GUID})/providers/Microsoft\.RecoveryServices"
    rf"/locations/(?P<region>{_REGION})/(?:backupCrrOperationsStatus|backupCrrOperationResults)"
    r"/(?P<op>[^/?#]+)/?\Z",
    _FLAGS,
)
BACKUP_VAULT_OPERATION_PATH_RE = re.compile(
    rf"^{_BACKUP_VAULT_PREFIX}/operationStatus/(?P<op>[^/?#]+)/?\Z", _FLAGS
)
DATA_PROTECTION_LOCATION_OPERATION_RE = re.compile(
    rf"^/subscriptions/(?P<sub>{_GUID})/providers/Microsoft\.DataProtection"
    rf"/locations/(?P<region>{_REGION})/(?:operationStatus|operationResults)"
    r"/(?P<op>[^/?#]+)/?\Z",
    _FLAGS,
)
OPERATION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_=-]{0,199}\Z", re.ASCII)
_ITEM_SEGMENT = r"[^/?#]+"
OPERATION_PATH_RE = re.compile(
    rf"^{_VAULT_PREFIX}"
    rf"(?:/backupFabrics/{_ITEM_SEGMENT}/protectionContainers/{_ITEM_SEGMENT}"
    rf"/protectedItems/{_ITEM_SEGMENT}/(?:operationsStatus|operationResults)"
    r"|/backupOperations|/backupOperationResults"
    r"|/backupJobs/" + _GUID + r"/operationResults"
    r")/(?P<op>[^/?#]+)/?\Z",
    _FLAGS,
)

# Timestamps Azure uses to mean "not set" (operation endTime while running; PowerShell's EndTime).
_SENTINEL_YEARS = frozenset({1, 2001})
_ISO_DURATION_RE = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?"
    r"(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)
_TIMESPAN_RE = re.compile(r"^(?:(?P<d>\d+)\.)?(?P<h>\d+):(?P<m>\d{2}):(?P<s>\d{2}(?:\.\d+)?)$")
# Fields Azure recomputes on every read (of the job and of each task); they do not make a
# snapshot distinct.
VOLATILE_PROPERTIES = frozenset({"duration"})


@dataclass(frozen=True, slots=True)
class VaultRef:
    """A vault of either kind; names keep Azure's case, `key` compares case-insensitively."""

    subscription_id: str
    resource_group: str
    name: str
    kind: VaultKind = VaultKind.RECOVERY_SERVICES

    @property
    def id(self) -> str:
        provider = (
            "Microsoft.DataProtection/backupVaults"
            if self.kind is VaultKind.DATA_PROTECTION
            else "Microsoft.RecoveryServices/vaults"
        )
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/{provider}/{self.name}"
        )

    @property
    def key(self) -> str:
        return self.id.lower()


@dataclass(frozen=True, slots=True)
class ErrorDetail:
    """One item of a job's `errorDetails`, the same shape for every job type: Azure's code
    (an int in most types, none in DPM/MAB ones), its message and its recommendations."""

    code: str | None
    message: str
    recommendations: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "recommendations": list(self.recommendations),
        }


def parse_error_details(props: dict[str, Any]) -> tuple[ErrorDetail, ...]:
    """`properties.errorDetails` as ErrorDetails; items that are not objects are skipped,
    and a message falls back to the title (then to the code) when Azure gives no string."""
    items = props.get("errorDetails")
    if not isinstance(items, list):
        return ()
    out = []
    for item in items:
        if not isinstance(item, dict):
            continue
        # Recovery Services: errorCode/errorString/errorTitle; Backup vaults: code/message.
        raw_code = item.get("errorCode", item.get("code"))
        code = None if raw_code is None or isinstance(raw_code, bool) else str(raw_code)
        message = (
            _opt_str(item.get("errorString"))
            or _opt_str(item.get("message"))
            or _opt_str(item.get("errorTitle"))
            or ""
        )
        recs = item.get("recommendations")
        recommendations = tuple(
            r.strip() for r in (recs if isinstance(recs, list) else []) if isinstance(r, str)
        )
        if code or message or recommendations:
            fallback = f"error {code}" if code else "see the recommendations"
            out.append(ErrorDetail(code, message or fallback, recommendations))
    return tuple(out)


def parse_progress(props: dict[str, Any]) -> float | None:
    """How far a job is, 0 to 100: `extendedInfo.progressPercentage` when Azure gives it,
    else the share of its task list that is done; None when neither says."""
    ext = props.get("extendedInfo")
    if not isinstance(ext, dict):
        return None
    value = ext.get("progressPercentage")
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 100:
        return float(value)
    tasks = [t for t in ext.get("tasksList") or ext.get("subTasks") or [] if isinstance(t, dict)]
    if not tasks:
        return None
    done = sum(
        1 for t in tasks if str(t.get("status", t.get("taskStatus", ""))).lower() in _TASK_DONE
    )
    return round(100.0 * done / len(tasks), 1)


_TASK_DONE = {"completed", "completedwithwarnings", "succeeded"}


@dataclass(frozen=True, slots=True)
class JobObservation:
    """One job as Azure reported it, normalised."""

    job_id: str
    vault: VaultRef | None
    status: str
    job_type: str | None
    operation: str | None
    entity_friendly_name: str | None
    backup_management_type: str | None
    start_time: datetime | None
    end_time: datetime | None
    duration: timedelta | None
    properties: dict[str, Any]
    error_details: tuple[ErrorDetail, ...] = ()
    progress: float | None = None
    #: The secondary region of a cross-region-restore job (its id is location-scoped).
    region: str | None = None

    @property
    def is_terminal(self) -> bool:
        return is_terminal_status(self.status)

    @property
    def phase(self) -> Phase:
        return job_phase(self.status)


@dataclass(frozen=True, slots=True)
class OperationObservation:
    """An OperationStatus body: its status and, once it succeeded, the jobs it started."""

    status: str
    job_ids: tuple[str, ...]
    error_code: str | None
    error_message: str | None


class BodyError(ValueError):
    """A body from Azure does not have the shape we need (treated as a garbled answer)."""


# The jobs list filter's odd time format (12-hour clock, AM/PM, no zone: UTC), as the
# Azure CLI builds it.
FILTER_TIME_FORMAT = "%Y-%m-%d %I:%M:%S %p"


def filter_time(value: datetime) -> str:
    """A timestamp as the jobs list `$filter` wants it (UTC, whole seconds)."""
    return value.astimezone(UTC).strftime(FILTER_TIME_FORMAT)


def window_filter(since: datetime, until: datetime) -> str:
    """`$filter` for the jobs that started in [since, until] (the only window Azure offers)."""
    return f"startTime eq '{filter_time(since)}' and endTime eq '{filter_time(until)}'"


def vault_from_id(value: str) -> VaultRef:
    """Parse a vault ARM id of either kind (the provider says which); raises InvalidInput
    with a one-line reason."""
    text = value.strip(ASCII_SPACE) if isinstance(value, str) else None
    match = VAULT_ID_RE.match(text) if text is not None else None
    if match is not None:
        return _vault_from_match(match)
    match = BACKUP_VAULT_ID_RE.match(text) if text is not None else None
    if match is not None:
        return _vault_from_match(match, VaultKind.DATA_PROTECTION)
    raise InvalidInput(f"not a Recovery Services vault id (nor a Backup vault id): {_clip(value)}")


def vault_kind_of(vault_id: str) -> VaultKind:
    """The kind of a stored vault id, from its provider segment."""
    return (
        VaultKind.DATA_PROTECTION
        if "/microsoft.dataprotection/" in vault_id.lower()
        else VaultKind.RECOVERY_SERVICES
    )


def vault_prefix(value: str) -> VaultRef | None:
    """The vault an ARM id (job, operation…) lives in, or None when it is not under a vault."""
    match = VAULT_PREFIX_RE.match(value)
    if match:
        return _vault_from_match(match)
    match = BACKUP_VAULT_PREFIX_RE.match(value)
    return _vault_from_match(match, VaultKind.DATA_PROTECTION) if match else None


def parse_job_arm_id(value: str) -> tuple[VaultRef, str]:
    """Split `/subscriptions/…/vaults/{v}/backupJobs/{guid}` (or a Backup vault's
    `…/backupVaults/{v}/backupJobs/{guid}`) into vault and job id."""
    text = value.strip(ASCII_SPACE)
    match = JOB_ID_RE.match(text)
    if match is not None:
        return _vault_from_match(match), match.group("job").lower()
    match = BACKUP_VAULT_JOB_ID_RE.match(text)
    if match is not None:
        return _vault_from_match(match, VaultKind.DATA_PROTECTION), match.group("job").lower()
    if CRR_JOB_ID_RE.match(text):
        raise InvalidInput(
            "a cross-region-restore job id names no vault: give --vault SOURCE_VAULT_ID"
        )
    raise InvalidInput(f"not a backup job ARM id: {_clip(value)}")


@dataclass(frozen=True, slots=True)
class CrrJobId:
    """A cross-region-restore job: `/subscriptions/{s}/providers/Microsoft.RecoveryServices/
    locations/{region}/backupJobs/{guid}`."""

    subscription_id: str
    region: str
    job_id: str


def parse_crr_job_id(value: str) -> CrrJobId | None:
    """The parts of a location-scoped (cross-region-restore) job id, None for other ids."""
    match = CRR_JOB_ID_RE.match(value.strip(ASCII_SPACE)) if isinstance(value, str) else None
    if match is None:
        return None
    return CrrJobId(
        match.group("sub").lower(), match.group("region").lower(), match.group("job").lower()
    )


def job_arm_id(vault_id: str, job_id: str, region: str | None = None) -> str:
    """A job's ARM id: under its vault, or location-scoped for a cross-region restore's."""
    if region is not None:
        sub = vault_id.split("/")[2]
        return (
            f"/subscriptions/{sub}/providers/Microsoft.RecoveryServices/locations/"
            f"{region}/backupJobs/{job_id}"
        )
    return f"{vault_id}/backupJobs/{job_id}"


def validate_region(value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(_REGION, value, re.ASCII):
        raise InvalidInput(f"not an Azure region name: {_clip(value)}")
    return value.lower()


def validate_job_id(value: object) -> str:
    if not isinstance(value, str) or not GUID_RE.match(value.strip(ASCII_SPACE)):
        raise InvalidInput(f"job id must be a GUID: {_clip(value)}")
    return value.strip(ASCII_SPACE).lower()


def validate_subscription_id(value: object) -> str:
    if not isinstance(value, str) or not GUID_RE.match(value.strip(ASCII_SPACE)):
        raise InvalidInput(f"subscription id must be a GUID: {_clip(value)}")
    return value.strip(ASCII_SPACE).lower()


def validate_operation_id(value: str) -> str:
    """GUID ids are compared case-insensitively (lower-cased); others (base64) kept exact."""
    if not OPERATION_ID_RE.match(value):
        raise InvalidInput(f"not a valid operation id: {_clip(value)}")
    return value.lower() if GUID_RE.match(value) else value


def parse_operation_path(path: str) -> tuple[VaultRef, str]:
    """Vault and operation id from an `Azure-AsyncOperation`/`Location` URL path."""
    match = OPERATION_PATH_RE.match(path)
    if match is None:
        raise InvalidInput(f"not a Recovery Services backup operation URL: {_clip(path)}")
    return _vault_from_match(match), validate_operation_id(match.group("op"))


@dataclass(frozen=True, slots=True)
class OperationTarget:
    """What an operation URL path says: its vault (None when the path names none: a
    location-scoped one), its id, and its region (a cross-region restore's secondary
    region, or the location of a Backup vault's `operationResults`)."""

    vault: VaultRef | None
    operation_id: str
    region: str | None = None
    crr: bool = False


def parse_operation_target(path: str) -> OperationTarget:
    """Any operation URL path the daemon follows: a Recovery Services vault's, a Backup
    vault's `operationStatus`, a Data Protection location's `operationStatus` or
    `operationResults`, or a cross-region restore's `backupCrrOperationsStatus`."""
    match = OPERATION_PATH_RE.match(path)
    if match is not None:
        return OperationTarget(_vault_from_match(match), validate_operation_id(match["op"]))
    match = BACKUP_VAULT_OPERATION_PATH_RE.match(path)
    if match is not None:
        vault = _vault_from_match(match, VaultKind.DATA_PROTECTION)
        return OperationTarget(vault, validate_operation_id(match["op"]))
    match = DATA_PROTECTION_LOCATION_OPERATION_RE.match(path)
    if match is not None:
        return OperationTarget(
            None, validate_operation_id(match["op"]), match["region"].lower(), crr=False
        )
    match = CRR_OPERATION_PATH_RE.match(path)
    if match is not None:
        return OperationTarget(
            None, validate_operation_id(match["op"]), match["region"].lower(), crr=True
        )
    raise InvalidInput(f"not an Azure Backup operation URL: {_clip(path)}")


def subscription_in_path(path: str) -> str | None:
    match = re.match(rf"^/subscriptions/({_GUID})/", path, re.IGNORECASE | re.ASCII)
    return match.group(1).lower() if match else None


def parse_time(value: object) -> datetime | None:
    """ISO-8601 with or without `Z`, up to 7 fractional digits; sentinels become None."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BodyError(f"timestamp is not a string: {_clip(value)}")
    return _parse_time_text(value)


@functools.lru_cache(maxsize=1 << 16)
def _parse_time_text(value: str) -> datetime | None:
    """Cached: every sweep lists a running job's same `startTime` again."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    main, _, zone = _split_zone(text)
    if "." in main:
        head, frac = main.split(".", 1)
        main = f"{head}.{frac[:6]}"
    try:
        parsed = datetime.fromisoformat(main + zone)
    except ValueError as exc:
        raise BodyError(f"bad timestamp: {_clip(value)}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        parsed = parsed.astimezone(UTC)
    except OverflowError:
        raise BodyError(f"timestamp out of range: {_clip(value)}") from None
    if parsed.year in _SENTINEL_YEARS and parsed.month == 1 and parsed.day == 1:
        return None
    return parsed


def parse_duration(value: object) -> timedelta | None:
    """Both `00:20:23.0896697` (.NET TimeSpan, optionally `d.`) and ISO `PT9.87S`."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BodyError(f"duration is not a string: {_clip(value)}")
    text = value.strip()
    span = _TIMESPAN_RE.match(text)
    if span:
        return timedelta(
            days=int(span.group("d") or 0),
            hours=int(span.group("h")),
            minutes=int(span.group("m")),
            seconds=float(span.group("s")),
        )
    iso = _ISO_DURATION_RE.match(text)
    if iso and text not in ("P", "PT"):
        return timedelta(
            days=float(iso.group("d") or 0),
            hours=float(iso.group("h") or 0),
            minutes=float(iso.group("m") or 0),
            seconds=float(iso.group("s") or 0),
        )
    raise BodyError(f"bad duration: {_clip(value)}")


def parse_job_resource(body: object) -> JobObservation:
    """A JobResource (single GET or a list item) into a JobObservation."""
    if not isinstance(body, dict):
        raise BodyError("job body is not a JSON object")
    props = body.get("properties")
    if not isinstance(props, dict):
        raise BodyError("job body has no properties object")
    status = props.get("status")
    if not isinstance(status, str) or not status.strip():
        raise BodyError("job body has no status")
    raw_id = body.get("id")
    vault: VaultRef | None = None
    job_id: str | None = None
    region: str | None = None
    if isinstance(raw_id, str):
        vault, job_id, region = _job_arm_id(raw_id)
    if job_id is None:
        name = body.get("name")
        if isinstance(name, str) and GUID_RE.match(name):
            job_id = name.lower()
    if job_id is None:
        raise BodyError("job body has neither a job ARM id nor a GUID name")
    return JobObservation(
        job_id=job_id,
        vault=vault,
        status=status.strip(),
        # A Backup vault job (AzureBackupJob) has no jobType/entityFriendlyName: its data
        # source type and name stand in for them.
        job_type=_opt_str(props.get("jobType")) or _opt_str(props.get("dataSourceType")),
        operation=_opt_str(props.get("operation")),
        entity_friendly_name=_opt_str(props.get("entityFriendlyName"))
        or _opt_str(props.get("backupInstanceFriendlyName"))
        or _opt_str(props.get("dataSourceName")),
        backup_management_type=_opt_str(props.get("backupManagementType")),
        start_time=parse_time(props.get("startTime")),
        end_time=parse_time(props.get("endTime")),
        duration=parse_duration(props.get("duration")),
        properties=props,
        error_details=parse_error_details(props),
        progress=parse_progress(props),
        region=region,
    )


@functools.lru_cache(maxsize=1 << 16)
def _job_arm_id(raw_id: str) -> tuple[VaultRef | None, str | None, str | None]:
    """(vault, job id, region) of any job ARM id. Cached: every sweep lists a running
    job's same ARM id again."""
    match = JOB_ID_RE.match(raw_id)
    if match is not None:
        return _vault_from_match(match), match.group("job").lower(), None
    match = BACKUP_VAULT_JOB_ID_RE.match(raw_id)
    if match is not None:
        vault = _vault_from_match(match, VaultKind.DATA_PROTECTION)
        return vault, match.group("job").lower(), None
    crr = parse_crr_job_id(raw_id)
    if crr is not None:
        return None, crr.job_id, crr.region
    return None, None, None


def parse_operation_status(body: object) -> OperationObservation:
    """An OperationStatus body (`backupOperations/{id}`, `operationsStatus/{id}`)."""
    if not isinstance(body, dict):
        raise BodyError("operation body is not a JSON object")
    status = body.get("status")
    if not isinstance(status, str) or not status:
        raise BodyError("operation body has no status")
    job_ids: list[str] = []
    props = body.get("properties")
    if isinstance(props, dict):
        single = props.get("jobId")
        if single is not None:
            job_ids.append(_body_guid(single))
        many = props.get("jobIds")
        if many is not None:
            if not isinstance(many, list):
                raise BodyError("jobIds is not a list")
            job_ids.extend(_body_guid(item) for item in many)
    error = body.get("error")
    code = message = None
    if isinstance(error, dict):
        code = _opt_str(error.get("code"))
        message = _opt_str(error.get("message"))
    return OperationObservation(
        status=status,
        job_ids=tuple(dict.fromkeys(job_ids)),
        error_code=code,
        error_message=message,
    )


def snapshot_hash(properties: dict[str, Any]) -> str:
    """Content hash of a job's properties, ignoring fields Azure recomputes on every read."""
    stable = {k: v for k, v in properties.items() if k not in VOLATILE_PROPERTIES}
    ext = stable.get("extendedInfo")
    if isinstance(ext, dict) and isinstance(ext.get("tasksList"), list):
        tasks = [
            {k: v for k, v in t.items() if k not in VOLATILE_PROPERTIES}
            if isinstance(t, dict)
            else t
            for t in ext["tasksList"]
        ]
        stable["extendedInfo"] = {**ext, "tasksList": tasks}
    # Sorted, compact, UTF-8 JSON (as json.dumps with sort_keys, compact separators and
    # ensure_ascii=False, but for the spelling of some floats), several times faster.
    return hashlib.sha256(orjson.dumps(stable, option=orjson.OPT_SORT_KEYS)).hexdigest()


def actions_info(properties: dict[str, Any]) -> list[str]:
    """`actionsInfo` as names whether Azure sent `[1]` or `["Cancellable"]`."""
    names = {0: "Invalid", 1: "Cancellable", 2: "Retriable"}
    raw = properties.get("actionsInfo") or []
    if not isinstance(raw, list):
        return []
    return [names.get(item, str(item)) if isinstance(item, int) else str(item) for item in raw]


def _vault_from_match(
    match: re.Match[str], kind: VaultKind = VaultKind.RECOVERY_SERVICES
) -> VaultRef:
    rg = match.group("rg")
    if ".." in rg or rg.endswith("."):
        raise InvalidInput(f"not a valid resource group name: {_clip(rg)}")
    name = match.group("vault")
    if ".." in name:
        raise InvalidInput(f"not a valid vault name: {_clip(name)}")
    return VaultRef(match.group("sub").lower(), rg, name, kind)


def _split_zone(text: str) -> tuple[str, str, str]:
    for sign in ("+", "-"):
        idx = text.rfind(sign)
        if idx > 10:
            return text[:idx], sign, text[idx:]
    return text, "", ""


def _body_guid(value: object) -> str:
    """A job id an operation names: a GUID, or (Backup vaults' `OperationJobExtendedInfo`,
    "Name or Arm Id of the job") a job ARM id ending in one."""
    if isinstance(value, str) and GUID_RE.match(value):
        return value.lower()
    if isinstance(value, str) and "/" in value:
        _, job_id, _ = _job_arm_id(value.strip(ASCII_SPACE))
        if job_id is not None:
            return job_id
    raise BodyError(f"operation names a job id that is not a GUID: {_clip(value)}")


def needs_operation_result(op: OperationObservation, result_region: str | None) -> bool:
    """Whether to read a Backup vault operation's `operationResults` next: its
    `operationStatus` succeeded without naming a job, and the trigger's `Location` said
    where its result is (`result_region`)."""
    return op.status == OPERATION_SUCCEEDED and not op.job_ids and result_region is not None


def parse_operation_job_info(body: object) -> tuple[str, VaultRef | None]:
    """An `OperationJobExtendedInfo` body (a Backup vault trigger's 200, or the 200 of its
    `operationResults`): the job id and, when `jobId` is a full ARM id, its vault."""
    if not isinstance(body, dict):
        raise BodyError("operation result is not a JSON object")
    props = body.get("properties") if isinstance(body.get("properties"), dict) else body
    assert isinstance(props, dict)
    raw = props.get("jobId")
    if not isinstance(raw, str) or not raw.strip(ASCII_SPACE):
        raise BodyError("operation result names no jobId")
    raw = raw.strip(ASCII_SPACE)
    if GUID_RE.match(raw):
        return raw.lower(), None
    vault, job_id, _ = _job_arm_id(raw)
    if job_id is None:
        raise BodyError(f"jobId is neither a GUID nor a job ARM id: {_clip(raw)}")
    return job_id, vault


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) and value != "" else None


def _clip(value: object, limit: int = 80) -> str:
    """A printable, bounded rendering of user input for one-line error messages."""
    text = value if isinstance(value, str) else repr(value)
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
